//! A worker thread: owns its sockets, its engine (connection table, rotation) and its counters;
//! reads the shared snapshot once per batch and its commands from its own SPSC ring.

use crate::conntrack::FlowInfo;
use crate::engine::{Engine, Verdict};
use crate::fragments::{self, Piece, Recent};
use crate::handoff::{Inbox, Outbox};
use crate::kernel_tx::KernelTx;
use crate::owner::Ownership;
use crate::snapshot::{ServiceKey, Snapshot};
use crate::stats::{DropReason, WorkerStats};
use crate::wire::{ethernet, ipv4, ipv6};
use crate::xsk::{Disposition, WorkerSockets, RING_SIZE};
use arc_swap::ArcSwap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Commands from the control plane to a worker.
#[derive(Debug, Clone)]
pub enum Command {
    /// A service was deleted: end its flows now instead of letting them time out.
    ForgetService(ServiceKey),
    /// Send a copy of the live flows (at most [`MAX_DUMPED_FLOWS`]) on this channel. The worker
    /// only ever `try_send`s, so an asker that gave up or a full channel never holds it up.
    DumpFlows(SyncSender<FlowDump>),
}

/// Flows one worker copies per dump: bounds the time the worker spends away from its rings
/// (a copy of about 100 bytes each) and the memory of one answer.
pub const MAX_DUMPED_FLOWS: usize = 65_536;

/// One worker's answer to [`Command::DumpFlows`].
#[derive(Debug, Clone)]
pub struct FlowDump {
    pub worker: usize,
    pub flows: Vec<FlowInfo>,
    /// The worker had more live flows than [`MAX_DUMPED_FLOWS`].
    pub truncated: bool,
}

/// Conntrack slots a worker inspects for expiry per loop iteration.
const SWEEP_BUDGET: usize = 64;
/// Frames that may wait for a full TX ring (one ring's worth) before the oldest are dropped
/// and counted; more would only hold frames the fill rings need.
const MAX_PENDING_TX: usize = RING_SIZE as usize;
/// How often the kernel's per-socket drop counters are read (a syscall per socket).
const SOCKET_STATS_EVERY: Duration = Duration::from_secs(1);
const IDLE_WAIT: Duration = Duration::from_millis(10);
/// Pause before kicking again a TX ring the kernel has not emptied.
const UNSENT_RETRY: Duration = Duration::from_micros(20);
/// Quick retries in a row before a ring that keeps frames unsent waits like an idle one.
const MAX_UNSENT_ROUNDS: u32 = 500;
/// Frames from other workers processed per loop iteration, about one RX batch per socket: the
/// worker's own sockets are not starved by a busy neighbour, nor the neighbour by them.
const HANDOFF_BUDGET: usize = 128;
/// How long a stopping worker keeps pushing out frames already decided for transmission
/// before its sockets close; a ring the kernel does not drain in that time is abandoned (and
/// the frames counted as tx_ring_full) so that a stop never hangs on a stuck interface.
pub(crate) const TX_DRAIN: Duration = Duration::from_millis(200);
/// Pause between drain rounds: the kernel sends on a kick, there is nothing to spin for.
const TX_DRAIN_PAUSE: Duration = Duration::from_millis(1);

pub(crate) struct Worker {
    pub sockets: WorkerSockets,
    pub engine: Engine,
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub commands: rtrb::Consumer<Command>,
    pub stats: Arc<WorkerStats>,
    pub stop: Arc<AtomicBool>,
    pub kernel: KernelTx,
    /// This worker's index, named in its answers.
    pub index: usize,
    pub ownership: Ownership,
    pub outbox: Outbox,
    pub inbox: Inbox,
    /// Where this worker passed recent first fragments: their later fragments follow them.
    pub fragment_routes: Recent<usize>,
}

impl Worker {
    pub fn run(mut self) {
        let start = Instant::now();
        let egress: Vec<(u32, usize)> = self
            .sockets
            .fds()
            .iter()
            .enumerate()
            .map(|(i, (ifindex, _))| (*ifindex, i))
            .collect();
        let mut socket_stats_at = start;
        let mut unsent_rounds = 0u32;
        while !self.stop.load(Ordering::Relaxed) {
            let snap = self.snapshot.load();
            let now = start.elapsed().as_millis() as u64;
            while let Ok(cmd) = self.commands.pop() {
                match cmd {
                    Command::ForgetService(k) => self.engine.forget_service(&k, &snap),
                    Command::DumpFlows(answer) => {
                        let (flows, truncated) = self.engine.flows(now, MAX_DUMPED_FLOWS);
                        // Fails only if the asker stopped waiting: nothing left to do then.
                        let _ = answer.try_send(FlowDump {
                            worker: self.index,
                            flows,
                            truncated,
                        });
                    }
                }
            }
            let mut received = 0;
            for i in 0..self.sockets.port_count() {
                let engine = &mut self.engine;
                let (kernel, egress, ownership) = (&self.kernel, &egress, &self.ownership);
                let (outbox, index) = (&mut self.outbox, self.index);
                let routes = &mut self.fragment_routes;
                let batch = self.sockets.receive(i, |ingress, buf, len| {
                    match owner_of(ownership, routes, &buf[..len], &snap, now) {
                        Some(owner) if owner != index => {
                            // Only an impossible owner or length fails here; ring room is
                            // known, and counted, at the flush below.
                            if !outbox.send(owner, ingress, &buf[..len]) {
                                engine.counters.drop(DropReason::Malformed);
                            }
                            Disposition::Recycle
                        }
                        _ => decide(engine, kernel, egress, &snap, now, ingress, buf, len),
                    }
                });
                self.engine.counters.rx_batches.record(batch);
                received += batch;
            }
            let flushed = self.outbox.flush();
            self.engine.counters.handed_off += flushed.passed as u64;
            self.engine.counters.drops[DropReason::HandoffRingFull as usize] +=
                flushed.dropped as u64;
            let engine = &mut self.engine;
            let (kernel, egress, sockets) = (&self.kernel, &egress, &mut self.sockets);
            let handed_in = self.inbox.drain(HANDOFF_BUDGET, |ingress, a, b| {
                let injected = sockets.inject([a, b], ingress, |ingress, buf, len| {
                    decide(engine, kernel, egress, &snap, now, ingress, buf, len)
                });
                if !injected {
                    engine.counters.drop(DropReason::NoFreeFrame);
                }
            });
            received += handed_in;
            self.engine.sweep(now, SWEEP_BUDGET, &snap);
            drop(snap);
            let pending = self.sockets.flush();
            if pending > MAX_PENDING_TX {
                let shed = self.sockets.shed_pending(MAX_PENDING_TX);
                self.engine.counters.drops[DropReason::TxRingFull as usize] += shed as u64;
            }
            self.sockets.reap();
            self.sockets.top_up();
            if socket_stats_at.elapsed() >= SOCKET_STATS_EVERY {
                socket_stats_at = Instant::now();
                self.engine.counters.sockets = self.sockets.socket_stats();
                self.stats
                    .publish_endpoints(self.engine.endpoint_counters());
            }
            self.stats.publish(&self.engine.counters);
            let unsent = if received == 0 && pending == 0 {
                self.sockets.unsent()
            } else {
                0
            };
            // A ring that does not drain at all (a stuck interface) gets the idle wait again
            // after a while, rather than a wake-up every few microseconds.
            unsent_rounds = if unsent > 0 { unsent_rounds + 1 } else { 0 };
            if unsent > 0 && unsent_rounds <= MAX_UNSENT_ROUNDS {
                // Frames the last kicks left in a TX ring: kick again shortly rather than
                // after a whole idle wait (which showed as a 10 ms latency tail).
                std::thread::sleep(UNSENT_RETRY);
            } else if received == 0 && pending == 0 && self.inbox.prepare_to_sleep() {
                if let Err(e) = self.sockets.wait(self.inbox.doorbell_fd(), IDLE_WAIT) {
                    log::error!("worker poll failed: {e}; retrying");
                    std::thread::sleep(IDLE_WAIT);
                }
                self.inbox.woke();
            }
        }
        self.drain_tx();
    }

    /// Sends what is pending TX, kicking the kernel, for at most [`TX_DRAIN`]: packets of live
    /// connections already rewritten for their endpoint leave instead of dying with the socket.
    fn drain_tx(&mut self) {
        let deadline = Instant::now() + TX_DRAIN;
        let mut settled = 0;
        // `flush` kicks until the TX ring is empty or its kick budget is spent; with nothing
        // pending a second round only kicks, for frames still in the ring after the first.
        while settled < 2 {
            let pending = self.sockets.flush();
            self.sockets.reap();
            settled = if pending == 0 { settled + 1 } else { 0 };
            if settled < 2 {
                if Instant::now() >= deadline {
                    let shed = self.sockets.shed_pending(0);
                    self.engine.counters.drops[DropReason::TxRingFull as usize] += shed as u64;
                    log::warn!(
                        "worker {}: {shed} frame(s) still pending TX after {TX_DRAIN:?}; dropped at stop",
                        self.index
                    );
                    break;
                }
                std::thread::sleep(TX_DRAIN_PAUSE);
            }
        }
        self.stats.publish(&self.engine.counters);
    }
}

/// The worker that owns `frame`'s flow (see `Ownership::owner`). A first fragment passed to
/// another worker is remembered in `routes`, so that the later fragments of its datagram
/// (which carry no ports) are passed the same way, behind it on the same ring.
fn owner_of(
    ownership: &Ownership,
    routes: &mut Recent<usize>,
    frame: &[u8],
    snap: &Snapshot,
    now: u64,
) -> Option<usize> {
    if ownership.workers() == 1 {
        return None;
    }
    match ownership.owner(frame, snap) {
        Some(owner) => {
            if let Some((key, Piece::First)) = fragments::fragment_of(frame) {
                routes.insert(key, owner, now);
            }
            Some(owner)
        }
        None => match fragments::fragment_of(frame) {
            Some((key, Piece::Later)) => routes.get(&key, now),
            _ => None,
        },
    }
}

/// What to do with a frame this worker owns (`buf[..len]`, with room after it): run the
/// engine, then send it out of the egress interface's socket, to the kernel, or back to the
/// pool.
#[allow(clippy::too_many_arguments)]
fn decide(
    engine: &mut Engine,
    kernel: &KernelTx,
    egress: &[(u32, usize)],
    snap: &Snapshot,
    now: u64,
    ingress: u32,
    buf: &mut [u8],
    len: usize,
) -> Disposition {
    let (ifindex, len) = match engine.process_with_room(buf, len, ingress, snap, now) {
        Verdict::Transmit { ifindex } => (ifindex, len),
        Verdict::TransmitFirst { ifindex, len } => (ifindex, len),
        Verdict::Kernel => {
            hand_to_kernel(kernel, buf, engine);
            return Disposition::Recycle;
        }
        Verdict::Drop(_) => return Disposition::Recycle,
    };
    match egress.iter().find(|(ix, _)| *ix == ifindex) {
        Some((_, port)) => {
            engine.counters.tx_packets += 1;
            Disposition::Transmit(*port, len)
        }
        // An interface with fewer queues than others has no socket for this worker's queue:
        // the kernel sends the (already rewritten) packet instead.
        None => {
            hand_to_kernel(kernel, buf, engine);
            Disposition::Recycle
        }
    }
}

/// Sends the IP packet of `frame` (its length read from its own header) through the kernel.
fn hand_to_kernel(kernel: &KernelTx, frame: &[u8], engine: &mut Engine) {
    let ip_buf = &frame[ethernet::HEADER_LEN..];
    let packet = match ip_buf.first().map(|b| b >> 4) {
        Some(4) => ipv4::Packet::new_checked(ip_buf)
            .ok()
            .map(|ip| (ip.total_len(), IpAddr::V4(ip.dst()))),
        Some(6) => ipv6::Packet::new_checked(ip_buf)
            .ok()
            .map(|ip| (ip.total_len(), IpAddr::V6(ip.dst()))),
        _ => None,
    };
    let sent = packet.map(|(len, dst)| kernel.send(&ip_buf[..len], dst));
    match sent {
        Some(Ok(())) => engine.counters.kernel_packets += 1,
        _ => engine.counters.drop(DropReason::KernelTxFailed),
    }
}
