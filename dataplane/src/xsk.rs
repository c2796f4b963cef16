//! The AF_XDP socket layer: one UMEM per worker, shared by that worker's sockets on every
//! interface, and the frame bookkeeping between fill, RX, TX and completion rings.
//!
//! This is the only module of the crate with `unsafe`: xsk-rs marks ring and frame access
//! unsafe because a frame handed to the kernel must not be touched until it comes back. The
//! invariant kept here: every frame descriptor is in exactly one place at a time, either the
//! `free` pool, a fill ring, an RX batch being processed, or a TX ring awaiting completion.
//! Sharing one UMEM lets a frame received on one interface leave by another without a copy.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io::{self, Write};
use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};
use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig,
};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem};

/// Frames per worker UMEM (4 KiB each: 32 MiB per worker): enough to keep both rings of two
/// sockets full while a ring's worth of frames is in TX flight.
pub const FRAME_COUNT: u32 = 8192;
const FRAME_SIZE: u32 = 4096;
/// Entries of every ring (RX, TX, fill, completion).
pub const RING_SIZE: u32 = 2048;
/// sendto() calls per port and flush. In copy mode one call transmits at most a small batch
/// (32 frames on Linux 6.x), so a single kick per loop would cap TX below RX.
const MAX_KICKS: usize = 16;
/// How long to keep retrying a bind that fails with EBUSY: a queue released by a previous
/// process stays busy for about two seconds.
const BIND_RETRY_FOR: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum XskError {
    #[error("could not create the AF_XDP packet buffer (UMEM): {0}; AF_XDP needs root or CAP_NET_RAW+CAP_BPF and enough locked memory (ulimit -l)")]
    Umem(String),
    #[error("could not bind an AF_XDP socket to {iface} queue {queue}: {reason}")]
    Bind {
        iface: String,
        queue: u32,
        reason: String,
    },
    #[error("interface name {0:?} contains a NUL byte")]
    BadName(String),
}

/// Packets the kernel dropped at an AF_XDP socket before a worker could see them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SocketStats {
    /// Dropped for other reasons (e.g. a frame too large for the UMEM chunk).
    pub rx_dropped: u64,
    /// The RX ring was full: the worker fell behind.
    pub rx_ring_full: u64,
    /// No frame in the fill ring to receive into.
    pub fill_ring_empty: u64,
    pub invalid_descs: u64,
}

/// What the caller decided for a received frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Send the first `len` bytes of the frame's buffer out of socket number `n` of this
    /// worker (same queue, other or same interface): the received length, or another when
    /// the frame was rewritten shorter or longer.
    Transmit(usize, usize),
    /// Done with it (dropped, or copied elsewhere): the frame goes back to the pool.
    Recycle,
}

/// Mode a socket ended up bound in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindMode {
    ZeroCopy,
    Copy,
}

struct Port {
    ifindex: u32,
    tx: TxQueue,
    rx: RxQueue,
    fill: FillQueue,
    comp: CompQueue,
    /// Frames waiting to be produced on this port's TX ring.
    pending_tx: Vec<FrameDesc>,
    fd: RawFd,
}

/// One worker's sockets: one per interface, all on the same queue index and UMEM.
pub struct WorkerSockets {
    umem: Umem,
    ports: Vec<Port>,
    free: Vec<FrameDesc>,
    rx_batch: Vec<FrameDesc>,
    comp_batch: Vec<FrameDesc>,
    pub modes: Vec<BindMode>,
}

/// An interface to open a socket on.
#[derive(Debug, Clone)]
pub struct PortSpec {
    pub name: String,
    pub ifindex: u32,
}

impl WorkerSockets {
    /// Creates the UMEM and binds one socket per interface on `queue`, zero-copy if the driver
    /// allows it, copy mode otherwise. libxdp is told not to load its own XDP program: ours owns
    /// the XSKMAP, and libxdp's would also swallow ARP.
    pub fn open(ports: &[PortSpec], queue: u32) -> Result<WorkerSockets, XskError> {
        let umem_cfg = UmemConfig::builder()
            .frame_size(FrameSize::new(FRAME_SIZE).expect("power of two >= 2048"))
            .fill_queue_size(QueueSize::new(RING_SIZE).expect("power of two"))
            .comp_queue_size(QueueSize::new(RING_SIZE).expect("power of two"))
            .build()
            .map_err(|e| XskError::Umem(e.to_string()))?;
        let (umem, frames) = Umem::new(
            umem_cfg,
            NonZeroU32::new(FRAME_COUNT).expect("non-zero"),
            false,
        )
        .map_err(|e| XskError::Umem(e.to_string()))?;

        let mut out = WorkerSockets {
            umem,
            ports: Vec::new(),
            free: frames,
            rx_batch: vec![FrameDesc::default(); 64],
            comp_batch: vec![FrameDesc::default(); 256],
            modes: Vec::new(),
        };
        for spec in ports {
            let (port, mode) = out.bind(spec, queue)?;
            out.ports.push(port);
            out.modes.push(mode);
        }
        // Give each fill ring half its size; the rest of the pool stays for refills.
        let per_port = (RING_SIZE / 2) as usize;
        for i in 0..out.ports.len() {
            out.refill(i, per_port);
        }
        Ok(out)
    }

    /// Binds one socket. The first socket of the UMEM tries zero-copy, then copy mode; later
    /// ones share the UMEM and the kernel gives them the first socket's mode (bind flags are
    /// not even passed on for a shared UMEM), so they are bound once and reported as such.
    fn bind(&self, spec: &PortSpec, queue: u32) -> Result<(Port, BindMode), XskError> {
        let name =
            CString::new(spec.name.clone()).map_err(|_| XskError::BadName(spec.name.clone()))?;
        let iface = Interface::new(name);
        let attempts: Vec<(BindMode, BindFlags)> = match self.modes.first() {
            None => vec![
                (BindMode::ZeroCopy, BindFlags::XDP_ZEROCOPY),
                (BindMode::Copy, BindFlags::XDP_COPY),
            ],
            Some(&BindMode::ZeroCopy) => vec![(BindMode::ZeroCopy, BindFlags::XDP_ZEROCOPY)],
            Some(&BindMode::Copy) => vec![(BindMode::Copy, BindFlags::XDP_COPY)],
        };
        let deadline = Instant::now() + BIND_RETRY_FOR;
        let mut last_err = String::new();
        for (mode, flags) in attempts {
            let cfg = SocketConfig::builder()
                .rx_queue_size(QueueSize::new(RING_SIZE).expect("power of two"))
                .tx_queue_size(QueueSize::new(RING_SIZE).expect("power of two"))
                .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
                .bind_flags(flags | BindFlags::XDP_USE_NEED_WAKEUP)
                .build();
            loop {
                // SAFETY: each (interface, queue) pair is bound once per UMEM here, and the
                // inhibit-program-load flag is set, as `Socket::new` requires for sharing.
                match unsafe { Socket::new(cfg, &self.umem, &iface, queue) } {
                    Ok((tx, rx, Some((fill, comp)))) => {
                        let fd = rx.fd().as_raw_fd();
                        let port = Port {
                            ifindex: spec.ifindex,
                            tx,
                            rx,
                            fill,
                            comp,
                            pending_tx: Vec::with_capacity(RING_SIZE as usize),
                            fd,
                        };
                        return Ok((port, mode));
                    }
                    Ok((_, _, None)) => {
                        return Err(XskError::Bind {
                            iface: spec.name.clone(),
                            queue,
                            reason: "the interface was listed twice".into(),
                        })
                    }
                    Err(e) => {
                        last_err = e.to_string();
                        let busy = last_err.contains("busy") || last_err.contains("EBUSY");
                        if busy && Instant::now() < deadline {
                            std::thread::sleep(Duration::from_millis(200));
                            continue;
                        }
                        break;
                    }
                }
            }
        }
        Err(XskError::Bind {
            iface: spec.name.clone(),
            queue,
            reason: last_err,
        })
    }

    /// (ifindex, fd) of every socket, for the XSKMAP.
    pub fn fds(&self) -> Vec<(u32, RawFd)> {
        self.ports.iter().map(|p| (p.ifindex, p.fd)).collect()
    }

    /// The socket number for an egress interface, if this worker has one there.
    pub fn port_of(&self, ifindex: u32) -> Option<usize> {
        self.ports.iter().position(|p| p.ifindex == ifindex)
    }

    pub fn port_count(&self) -> usize {
        self.ports.len()
    }

    /// Receives up to one batch from socket `i` and hands each frame to `decide` with its
    /// ingress ifindex, as the frame's whole data buffer and the received length (the frame
    /// is the buffer's first `len` bytes; the rest is room to grow). Returns how many frames
    /// were received.
    pub fn receive(
        &mut self,
        i: usize,
        mut decide: impl FnMut(u32, &mut [u8], usize) -> Disposition,
    ) -> usize {
        let ingress = self.ports[i].ifindex;
        // SAFETY: the descriptors written into `rx_batch` come from this socket's RX ring and
        // thus from this worker's UMEM; until we pass them on below, only we access them.
        let n = unsafe { self.ports[i].rx.consume(&mut self.rx_batch) };
        for k in 0..n {
            let mut desc = self.rx_batch[k];
            // SAFETY: `desc` was just received: the kernel is done with the frame and no other
            // descriptor refers to it (see the module invariant).
            let mut data = unsafe { self.umem.data_mut(&mut desc) };
            let len = whole_buffer(&mut data);
            let disposition = decide(ingress, data.contents_mut(), len);
            self.dispose(desc, disposition);
        }
        if n > 0 {
            self.refill(i, n);
        }
        n
    }

    /// Copies a frame given as `parts` (received by another worker) into a frame of this
    /// worker's pool and hands it to `decide` as if it had arrived on `ingress`. False if the
    /// pool is empty or the parts do not fit a frame (the caller counts the drop).
    pub fn inject(
        &mut self,
        parts: [&[u8]; 2],
        ingress: u32,
        decide: impl FnOnce(u32, &mut [u8], usize) -> Disposition,
    ) -> bool {
        if parts[0].len() + parts[1].len() > FRAME_SIZE as usize {
            return false;
        }
        let Some(mut desc) = self.free.pop() else {
            return false;
        };
        // SAFETY: a frame from the pool is referenced by no ring and no other descriptor.
        let mut data = unsafe { self.umem.data_mut(&mut desc) };
        let mut cursor = data.cursor();
        cursor.set_pos(0);
        let written = parts.iter().all(|p| cursor.write_all(p).is_ok());
        if !written {
            self.free.push(desc);
            return false;
        }
        let len = whole_buffer(&mut data);
        let disposition = decide(ingress, data.contents_mut(), len);
        self.dispose(desc, disposition);
        true
    }

    /// Queues a decided frame for TX at its decided length, or returns it to the pool.
    fn dispose(&mut self, mut desc: FrameDesc, disposition: Disposition) {
        match disposition {
            Disposition::Transmit(out, len) if out < self.ports.len() => {
                // SAFETY: the frame was received or filled by this worker and is referenced
                // by no ring; the view ends before the descriptor is queued.
                let mut data = unsafe { self.umem.data_mut(&mut desc) };
                // Capped at the buffer by the cursor.
                data.cursor().set_pos(len);
                self.ports[out].pending_tx.push(desc)
            }
            _ => self.free.push(desc),
        }
    }

    /// Produces pending frames on every TX ring and kicks the kernel (copy mode transmits only
    /// on a syscall) until the ring is empty or the kick budget is spent. Frames that do not
    /// fit stay pending for the next call. Returns how many frames are still pending.
    pub fn flush(&mut self) -> usize {
        let mut left = 0;
        for p in &mut self.ports {
            if !p.pending_tx.is_empty() {
                // libxdp reserves all or nothing: ask only for what fits, or a backlog larger
                // than the free slots would never be produced at all.
                let room =
                    (p.tx.nb_free(p.pending_tx.len() as u32) as usize).min(p.pending_tx.len());
                if room > 0 {
                    // SAFETY: pending frames belong to this UMEM and are referenced nowhere
                    // else; once produced they are the kernel's until completed.
                    let sent = unsafe { p.tx.produce(&p.pending_tx[..room]) };
                    p.pending_tx.drain(..sent);
                }
            }
            for _ in 0..MAX_KICKS {
                if p.tx.nb_free_exact() == RING_SIZE {
                    break;
                }
                // Transient errors (EAGAIN, ENOBUFS, EBUSY) are swallowed by xsk-rs; anything
                // else leaves frames in the ring for the next flush to kick again.
                if p.tx.wakeup().is_err() {
                    break;
                }
            }
            left += p.pending_tx.len();
        }
        left
    }

    /// Frames produced on the TX rings that the kernel has not taken yet. In copy mode the
    /// kernel sends only during a kick, and a kick may leave frames behind (a busy device):
    /// they would wait for the next kick, which an idle worker makes only when it wakes.
    pub fn unsent(&mut self) -> usize {
        self.ports
            .iter_mut()
            .map(|p| (RING_SIZE - p.tx.nb_free_exact().min(RING_SIZE)) as usize)
            .sum()
    }

    /// Drops frames pending TX beyond `max` per port (a stuck ring); returns how many.
    pub fn shed_pending(&mut self, max: usize) -> usize {
        let mut shed = 0;
        for p in &mut self.ports {
            if p.pending_tx.len() > max {
                let extra = p.pending_tx.len() - max;
                self.free.extend(p.pending_tx.drain(..extra));
                shed += extra;
            }
        }
        shed
    }

    /// Takes finished TX frames back into the pool.
    pub fn reap(&mut self) {
        for p in &mut self.ports {
            loop {
                // SAFETY: completed descriptors are frames of this UMEM the kernel has released.
                let n = unsafe { p.comp.consume(&mut self.comp_batch) };
                self.free.extend_from_slice(&self.comp_batch[..n]);
                if n < self.comp_batch.len() {
                    break;
                }
            }
        }
    }

    fn refill(&mut self, i: usize, want: usize) {
        let p = &mut self.ports[i];
        // All or nothing, as for TX: never ask for more than the ring can take.
        let n = want
            .min(self.free.len())
            .min(p.fill.nb_free(want as u32) as usize);
        if n == 0 {
            return;
        }
        let start = self.free.len() - n;
        // SAFETY: frames from the pool are owned by nobody else; once produced they belong to
        // the kernel until they come back through RX.
        let produced = unsafe { p.fill.produce(&self.free[start..]) };
        self.free.drain(start..start + produced);
        if p.fill.needs_wakeup() {
            let _ = p.fill.wakeup(p.rx.fd_mut(), 0);
        }
    }

    /// Refills every fill ring from the pool as far as it has room: a fill ring that runs empty
    /// makes the kernel drop received packets (counted as fill_ring_empty).
    pub fn top_up(&mut self) {
        for i in 0..self.ports.len() {
            let room = self.ports[i].fill.nb_free(RING_SIZE) as usize;
            if room > 0 {
                self.refill(i, room);
            }
        }
    }

    /// Waits until some socket (or `also`) has something to read, at most `timeout`.
    pub fn wait(&self, also: RawFd, timeout: Duration) -> io::Result<()> {
        let mut fds: Vec<libc::pollfd> = self
            .ports
            .iter()
            .map(|p| p.fd)
            .chain([also])
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a valid, exclusively borrowed array of `fds.len()` pollfd structs.
        let r = unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                timeout.as_millis() as libc::c_int,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        Ok(())
    }

    /// The kernel's drop counters of every socket of this worker, summed.
    pub fn socket_stats(&self) -> SocketStats {
        let mut sum = SocketStats::default();
        for p in &self.ports {
            if let Ok(s) = p.rx.fd().xdp_statistics() {
                sum.rx_dropped += s.rx_dropped();
                sum.rx_ring_full += s.rx_ring_full();
                sum.fill_ring_empty += s.rx_fill_ring_empty_descs();
                sum.invalid_descs += s.rx_invalid_descs() + s.tx_invalid_descs();
            }
        }
        sum
    }

    /// Frames in the pool (for tests and stats).
    pub fn free_frames(&self) -> usize {
        self.free.len()
    }
}

/// Extends the frame's data segment to its whole buffer, so a rewrite may make the frame
/// longer; returns the length it had (the frame's own bytes).
fn whole_buffer(data: &mut xsk_rs::umem::frame::DataMut<'_>) -> usize {
    let mut cursor = data.cursor();
    let len = cursor.pos();
    let room = cursor.buf_len();
    cursor.set_pos(room);
    len
}
