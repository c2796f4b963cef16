//! Frames passed from the worker that received them to the worker that owns their flow.
//!
//! Every ordered pair of workers has its own SPSC byte ring (rtrb), so passing a frame takes
//! no lock: the sender stages each frame as a record (an 8-byte header, then the bytes) and
//! pushes a whole batch with one commit; the owner reads everything committed with one read,
//! copies each frame into a frame of its own UMEM and processes it as if it had received it.
//! Per batch rather than per frame, the ring's indices cross between the cores once. Copy-mode AF_XDP copies every frame anyway; this adds one copy for the share
//! of packets that RSS put on a queue other than their owner's.
//!
//! A worker with nothing to do sleeps in poll(2). Its inbox has a datagram socket in that
//! poll set, and a sender writes one byte to it only when the owner said it is going to sleep
//! (a flag checked after each flush), so a busy owner costs its senders no system call.

use std::io::ErrorKind;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;

/// Record header: frame length (u16), two spare bytes, ingress ifindex (u32), little-endian.
const HEADER: usize = 8;
/// Bytes of all rings into one worker together. A worker that the scheduler takes off its
/// core for a few milliseconds must not cost its neighbours their frames: 8 MiB hold about
/// 5 500 full-size frames, some 10 ms of a 10 Gbit/s share.
const INBOUND_BYTES: usize = 8 << 20;

/// Bytes of each ring when there are `workers` workers: the inbound budget split over the
/// senders, within 256 KiB..4 MiB.
pub fn ring_bytes(workers: usize) -> usize {
    (INBOUND_BYTES / workers.saturating_sub(1).max(1)).clamp(256 << 10, 4 << 20)
}

/// How a sleeping worker is woken.
struct Doorbell {
    sleeping: AtomicBool,
    ring: UnixDatagram,
    listen: UnixDatagram,
}

/// One worker's sending side: a ring to every other worker.
pub struct Outbox {
    to: Vec<Option<rtrb::Producer<u8>>>,
    doorbells: Vec<Arc<Doorbell>>,
    /// Records collected per worker during one batch and pushed by `flush` in one ring
    /// commit: one cache-line exchange with the owner per batch instead of per frame.
    staged: Vec<Vec<u8>>,
    staged_records: Vec<usize>,
}

/// What one [`Outbox::flush`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flushed {
    /// Frames now in their owner's ring.
    pub passed: usize,
    /// Frames that found the owner's ring full.
    pub dropped: usize,
}

/// One worker's receiving side: a ring from every other worker.
pub struct Inbox {
    from: Vec<rtrb::Consumer<u8>>,
    doorbell: Arc<Doorbell>,
}

/// The rings between `workers` workers: element `i` is worker `i`'s outbox and inbox.
pub fn mesh(workers: usize, ring_bytes: usize) -> std::io::Result<Vec<(Outbox, Inbox)>> {
    let mut doorbells = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (ring, listen) = UnixDatagram::pair()?;
        ring.set_nonblocking(true)?;
        listen.set_nonblocking(true)?;
        doorbells.push(Arc::new(Doorbell {
            sleeping: AtomicBool::new(false),
            ring,
            listen,
        }));
    }
    let mut outboxes: Vec<Outbox> = (0..workers)
        .map(|_| Outbox {
            to: (0..workers).map(|_| None).collect(),
            doorbells: doorbells.clone(),
            staged: vec![Vec::new(); workers],
            staged_records: vec![0; workers],
        })
        .collect();
    let mut inboxes: Vec<Inbox> = doorbells
        .iter()
        .map(|d| Inbox {
            from: Vec::new(),
            doorbell: d.clone(),
        })
        .collect();
    for (from, outbox) in outboxes.iter_mut().enumerate() {
        for (to, inbox) in inboxes.iter_mut().enumerate() {
            if from != to {
                let (p, c) = rtrb::RingBuffer::new(ring_bytes);
                outbox.to[to] = Some(p);
                inbox.from.push(c);
            }
        }
    }
    Ok(outboxes.into_iter().zip(inboxes).collect())
}

impl Outbox {
    /// Stages `frame`, received on `ingress`, for `worker` until the next `flush`. False if
    /// `worker` is this one or unknown, or the frame is too long to describe.
    pub fn send(&mut self, worker: usize, ingress: u32, frame: &[u8]) -> bool {
        if !matches!(self.to.get(worker), Some(Some(_))) {
            return false;
        }
        let Ok(len) = u16::try_from(frame.len()) else {
            return false;
        };
        let staged = &mut self.staged[worker];
        staged.extend_from_slice(&len.to_le_bytes());
        staged.extend_from_slice(&[0, 0]);
        staged.extend_from_slice(&ingress.to_le_bytes());
        staged.extend_from_slice(frame);
        self.staged_records[worker] += 1;
        true
    }

    /// Pushes every staged record into its owner's ring (as many whole records as fit; the
    /// rest are dropped) and wakes owners that are asleep or about to sleep.
    pub fn flush(&mut self) -> Flushed {
        let mut done = Flushed::default();
        let mut rung = false;
        for worker in 0..self.to.len() {
            let records = std::mem::take(&mut self.staged_records[worker]);
            let (Some(ring), staged) = (&mut self.to[worker], &mut self.staged[worker]) else {
                continue;
            };
            if records == 0 {
                continue;
            }
            let (fit, fit_bytes) = whole_records_within(staged, ring.slots());
            if fit > 0 {
                let mut chunk = ring
                    .write_chunk(fit_bytes)
                    .expect("no more than the free slots just counted");
                let (a, b) = chunk.as_mut_slices();
                a.copy_from_slice(&staged[..a.len()]);
                b.copy_from_slice(&staged[a.len()..fit_bytes]);
                // One commit per batch: the owner never sees half a record.
                chunk.commit_all();
                rung = true;
            }
            staged.clear();
            done.passed += fit;
            done.dropped += records - fit;
        }
        if rung {
            self.ring_sleepers();
        }
        done
    }

    fn ring_sleepers(&mut self) {
        // Pairs with the fence in `Inbox::prepare_to_sleep`: either the owner sees our
        // records when it checks its rings, or we see its flag here.
        fence(Ordering::SeqCst);
        for (worker, doorbell) in self.doorbells.iter().enumerate() {
            if self.to[worker].is_some() && doorbell.sleeping.swap(false, Ordering::SeqCst) {
                // A full socket buffer means a wake-up is already pending: nothing lost.
                let _ = doorbell.ring.send(&[1]);
            }
        }
    }
}

/// How many whole records from the start of `staged` fit in `room` bytes, and their bytes.
fn whole_records_within(staged: &[u8], room: usize) -> (usize, usize) {
    let (mut records, mut at) = (0, 0);
    while at + HEADER <= staged.len() {
        let end = at + HEADER + usize::from(u16::from_le_bytes([staged[at], staged[at + 1]]));
        if end > room {
            break;
        }
        records += 1;
        at = end;
    }
    (records, at)
}

impl Inbox {
    /// Hands up to `budget` waiting frames to `take` as (ingress ifindex, the frame's bytes in
    /// one or two pieces). Returns how many were taken.
    pub fn drain(&mut self, budget: usize, mut take: impl FnMut(u32, &[u8], &[u8])) -> usize {
        let mut n = 0;
        for ring in &mut self.from {
            if n == budget {
                break;
            }
            // Everything committed so far, in one read: records are only ever whole.
            let Ok(chunk) = ring.read_chunk(ring.slots()) else {
                continue;
            };
            let (a, b) = chunk.as_slices();
            let total = a.len() + b.len();
            let mut at = 0;
            while n < budget && at + HEADER <= total {
                let mut header = [0u8; HEADER];
                let (h1, h2) = pieces(a, b, at, HEADER);
                header[..h1.len()].copy_from_slice(h1);
                header[h1.len()..].copy_from_slice(h2);
                let len = usize::from(u16::from_le_bytes([header[0], header[1]]));
                let ingress = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
                let (f1, f2) = pieces(a, b, at + HEADER, len);
                take(ingress, f1, f2);
                at += HEADER + len;
                n += 1;
            }
            chunk.commit(at);
        }
        n
    }

    /// Says this worker is going to sleep; false (and not sleeping) if frames are already
    /// waiting, in which case it must not sleep.
    pub fn prepare_to_sleep(&self) -> bool {
        self.doorbell.sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if self.from.iter().any(|r| !r.is_empty()) {
            self.doorbell.sleeping.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Back from sleep: clears the flag and empties the doorbell.
    pub fn woke(&self) {
        self.doorbell.sleeping.store(false, Ordering::SeqCst);
        let mut buf = [0u8; 16];
        loop {
            match self.doorbell.listen.recv(&mut buf) {
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
    }

    /// The descriptor that becomes readable when a sender rings.
    pub fn doorbell_fd(&self) -> RawFd {
        self.doorbell.listen.as_raw_fd()
    }
}

/// The bytes `at..at + len` of the concatenation of `a` and `b`, as a piece of each.
fn pieces<'a>(a: &'a [u8], b: &'a [u8], at: usize, len: usize) -> (&'a [u8], &'a [u8]) {
    let end = at + len;
    if end <= a.len() {
        (&a[at..end], &[])
    } else if at >= a.len() {
        (&[], &b[at - a.len()..end - a.len()])
    } else {
        (&a[at..], &b[..end - a.len()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(inbox: &mut Inbox, budget: usize) -> Vec<(u32, Vec<u8>)> {
        let mut got = Vec::new();
        inbox.drain(budget, |ingress, a, b| {
            got.push((ingress, [a, b].concat()));
        });
        got
    }

    #[test]
    fn frames_arrive_whole_and_in_order_across_the_ring_end() {
        let mut mesh = mesh(2, 300).unwrap();
        let (mut out0, _) = mesh.remove(0);
        let (_, mut in1) = mesh.remove(0);
        // Frames of varying length wrap around the 300-byte ring many times.
        for round in 0..50u8 {
            let frames: Vec<Vec<u8>> = (0..3)
                .map(|i| vec![round.wrapping_add(i); 30 + usize::from(round % 7) * 9])
                .collect();
            for (i, f) in frames.iter().enumerate() {
                assert!(out0.send(1, 10 + i as u32, f));
            }
            assert_eq!(
                out0.flush(),
                Flushed {
                    passed: 3,
                    dropped: 0
                }
            );
            let got = collect(&mut in1, 64);
            let want: Vec<(u32, Vec<u8>)> = frames
                .into_iter()
                .enumerate()
                .map(|(i, f)| (10 + i as u32, f))
                .collect();
            assert_eq!(got, want, "round {round}");
        }
    }

    #[test]
    fn a_full_ring_refuses_the_frame_instead_of_overwriting() {
        let mut mesh = mesh(2, 128).unwrap();
        let (_, mut in0) = mesh.remove(0);
        let (mut out1, _) = mesh.remove(0);
        let frame = [7u8; 50];
        for _ in 0..3 {
            assert!(out1.send(0, 1, &frame));
        }
        // Two 58-byte records fit in 128 bytes, the third is dropped whole.
        assert_eq!(
            out1.flush(),
            Flushed {
                passed: 2,
                dropped: 1
            }
        );
        assert_eq!(collect(&mut in0, 10).len(), 2);
        assert!(out1.send(0, 1, &frame));
        assert_eq!(out1.flush().passed, 1);
        assert_eq!(collect(&mut in0, 10).len(), 1);
    }

    #[test]
    fn nothing_is_sent_to_oneself_or_to_an_unknown_worker() {
        let mut mesh = mesh(2, 1024).unwrap();
        let (mut out0, mut in0) = mesh.remove(0);
        assert!(!out0.send(0, 1, &[1, 2, 3]));
        assert!(!out0.send(5, 1, &[1, 2, 3]));
        assert_eq!(out0.flush(), Flushed::default());
        assert!(collect(&mut in0, 10).is_empty());
    }

    #[test]
    fn a_sleeping_owner_is_woken_by_a_sender_and_a_busy_one_is_not_rung() {
        let mut mesh = mesh(2, 1024).unwrap();
        let (mut out0, _) = mesh.remove(0);
        let (_, mut in1) = mesh.remove(0);
        let rung = |inbox: &Inbox| inbox.doorbell.listen.recv(&mut [0u8; 4]).is_ok();
        // Busy owner: no flag, no ring.
        assert!(out0.send(1, 1, &[1]));
        out0.flush();
        assert!(!rung(&in1));
        // Frames waiting: the owner must not sleep.
        assert!(!in1.prepare_to_sleep());
        assert_eq!(collect(&mut in1, 10).len(), 1);
        // Asleep: the next send rings once.
        assert!(in1.prepare_to_sleep());
        assert!(out0.send(1, 1, &[2]));
        assert!(out0.send(1, 1, &[3]));
        out0.flush();
        assert!(rung(&in1));
        assert!(
            !rung(&in1),
            "two frames in one batch to a sleeper ring once"
        );
        in1.woke();
        assert_eq!(collect(&mut in1, 10).len(), 2);
    }
}
