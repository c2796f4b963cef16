//! AF_XDP workers: packet parsing, connection tracking, endpoint selection and NAT.
//!
//! `Dataplane` starts one worker thread per RX queue, each pinned to a core and owning one
//! AF_XDP socket per interface on that queue. The control plane talks to it in two ways only:
//! it publishes immutable `Snapshot`s (rules and next hops) and it sends `Command`s over each
//! worker's own SPSC ring. Workers never block on anything the control plane holds.
#![deny(unsafe_code)]

pub mod accounting;
pub mod checksum;
pub mod conntrack;
pub mod engine;
pub mod fragments;
pub mod handoff;
pub mod icmp6_error;
pub mod icmp_error;
mod kernel_tx;
pub mod nat;
pub mod nat64;
pub mod owner;
pub mod ports;
pub mod sctp_multihome;
pub mod select;
pub mod snapshot;
pub mod stats;
pub mod tcp_reset;
pub mod wire;
mod worker;
pub mod xsk;

pub use worker::{Command, FlowDump, MAX_DUMPED_FLOWS};

use arc_swap::ArcSwap;
use snapshot::Snapshot;
use stats::{Counters, WorkerStats};
use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use xsk::{PortSpec, WorkerSockets, XskError};

/// Default capacity of each worker's connection table.
pub const DEFAULT_CONNTRACK_CAPACITY: usize = 262_144;
const COMMAND_RING: usize = 1024;
/// Snapshots kept alive after being replaced, so that the last reference a worker drops is
/// never the one that frees a snapshot (freeing stays on the control plane's thread).
const RETIRED_SNAPSHOTS: usize = 4;

#[derive(Debug, Clone)]
pub struct InterfaceConfig {
    pub name: String,
    pub ifindex: u32,
    /// Number of RX queues; worker `q` binds to this interface if `q < queues`.
    pub queues: u32,
}

#[derive(Debug, Clone)]
pub struct DataplaneConfig {
    pub interfaces: Vec<InterfaceConfig>,
    pub conntrack_capacity: usize,
    /// Flows of IPv6 and NAT64 services per worker (a second table, 48 bytes wider per flow).
    pub conntrack_capacity_v6: usize,
    /// Source ports of one-arm and full-NAT flows.
    pub snat_ports: snapshot::PortRange,
}

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(transparent)]
    Socket(#[from] XskError),
    #[error(
        "could not open the raw socket used for unresolved next hops: {0}; it needs CAP_NET_RAW"
    )]
    RawSocket(std::io::Error),
    #[error("could not register the AF_XDP socket of interface index {ifindex} queue {queue} with the XDP program: {reason}")]
    Register {
        ifindex: u32,
        queue: u32,
        reason: String,
    },
    #[error("no interface to serve: give at least one --iface")]
    NoInterface,
    #[error("could not create the sockets that wake workers for handed-over frames: {0}")]
    Handoff(std::io::Error),
    #[error("could not start worker thread: {0}")]
    Thread(std::io::Error),
    #[error("worker {0}'s command ring is full; the worker may be stuck")]
    CommandRingFull(usize),
    #[error("worker {worker} did not report its flows within {waited:?}; it may be stuck")]
    NoAnswer { worker: usize, waited: Duration },
}

struct WorkerHandle {
    thread: Option<JoinHandle<()>>,
    commands: Mutex<rtrb::Producer<Command>>,
    stats: Arc<WorkerStats>,
}

pub struct Dataplane {
    workers: Vec<WorkerHandle>,
    conntrack_capacity: usize,
    selections: Arc<engine::SharedSelections>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    retired: Mutex<VecDeque<Arc<Snapshot>>>,
    stop: Arc<AtomicBool>,
}

impl Dataplane {
    /// Opens every socket, lets `register` put each into the XDP program's socket map, then
    /// starts the workers. Fails as a whole: no worker runs unless every socket is bound.
    pub fn start(
        cfg: DataplaneConfig,
        mut register: impl FnMut(u32, u32, RawFd) -> Result<(), String>,
    ) -> Result<Dataplane, DataplaneError> {
        let queues = cfg.interfaces.iter().map(|i| i.queues).max().unwrap_or(0);
        if queues == 0 {
            return Err(DataplaneError::NoInterface);
        }
        let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut prepared = Vec::new();
        for q in 0..queues {
            let ports: Vec<PortSpec> = cfg
                .interfaces
                .iter()
                .filter(|i| q < i.queues)
                .map(|i| PortSpec {
                    name: i.name.clone(),
                    ifindex: i.ifindex,
                })
                .collect();
            let sockets = WorkerSockets::open(&ports, q)?;
            for (ifindex, fd) in sockets.fds() {
                register(ifindex, q, fd).map_err(|reason| DataplaneError::Register {
                    ifindex,
                    queue: q,
                    reason,
                })?;
            }
            log::info!(
                "queue {q}: AF_XDP sockets on {} bound in {:?} mode",
                ports
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                sockets.modes
            );
            prepared.push(sockets);
        }
        let cores = core_affinity::get_core_ids().unwrap_or_else(|| {
            log::warn!("cannot list the CPU cores: workers run unpinned");
            Vec::new()
        });
        let mut workers = Vec::new();
        let worker_count = prepared.len() as u16;
        // Each flow has one owning worker; a frame RSS puts on another queue is passed to it.
        let ownership = owner::Ownership::new(
            prepared.len(),
            cfg.snat_ports,
            std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), 0u64),
        );
        let mesh = handoff::mesh(prepared.len(), handoff::ring_bytes(prepared.len()))
            .map_err(DataplaneError::Handoff)?;
        if prepared.len() > 1 {
            log::info!(
                "{} workers: frames that arrive on a queue other than their flow's owner's are \
                 passed to the owner",
                prepared.len()
            );
        }
        let selections = Arc::new(engine::SharedSelections::default());
        for ((q, sockets), (outbox, inbox)) in prepared.into_iter().enumerate().zip(mesh) {
            let (tx, rx) = rtrb::RingBuffer::new(COMMAND_RING);
            let stats = Arc::new(WorkerStats::default());
            let worker = worker::Worker {
                sockets,
                engine: engine::Engine::with_shared_selection(
                    engine::EngineConfig {
                        conntrack_capacity: cfg.conntrack_capacity,
                        conntrack_capacity_v6: cfg.conntrack_capacity_v6,
                        worker: q as u16,
                        workers: worker_count,
                        snat_ports: cfg.snat_ports,
                    },
                    selections.clone(),
                ),
                snapshot: snapshot.clone(),
                commands: rx,
                stats: stats.clone(),
                stop: stop.clone(),
                kernel: kernel_tx::KernelTx::new().map_err(DataplaneError::RawSocket)?,
                index: q,
                ownership,
                outbox,
                inbox,
                fragment_routes: fragments::Recent::default(),
            };
            let core = (!cores.is_empty()).then(|| cores[q % cores.len()]);
            let thread = std::thread::Builder::new()
                .name(format!("oxlb-worker-{q}"))
                .spawn(move || {
                    if let Some(core) = core {
                        if !core_affinity::set_for_current(core) {
                            log::warn!("worker {q}: could not pin to core {}", core.id);
                        }
                    }
                    worker.run()
                })
                .map_err(DataplaneError::Thread)?;
            workers.push(WorkerHandle {
                thread: Some(thread),
                commands: Mutex::new(tx),
                stats,
            });
        }
        Ok(Dataplane {
            workers,
            conntrack_capacity: cfg.conntrack_capacity,
            selections,
            snapshot,
            retired: Mutex::new(VecDeque::new()),
            stop,
        })
    }

    /// Makes `snap` the snapshot every worker reads from its next batch on.
    pub fn publish(&self, mut snap: Snapshot) {
        let old = self.snapshot.load_full();
        snap.generation = old.generation + 1;
        self.snapshot.store(Arc::new(snap));
        let mut retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        retired.push_back(old);
        while retired.len() > RETIRED_SNAPSHOTS {
            retired.pop_front();
        }
    }

    pub fn current(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Sends `cmd` to every worker.
    pub fn command(&self, cmd: Command) -> Result<(), DataplaneError> {
        if let Command::ForgetService(key) = &cmd {
            self.selections.forget(key);
        }
        for (i, w) in self.workers.iter().enumerate() {
            let mut ring = w.commands.lock().unwrap_or_else(|e| e.into_inner());
            ring.push(cmd.clone())
                .map_err(|_| DataplaneError::CommandRingFull(i))?;
        }
        Ok(())
    }

    /// Asks every worker for a copy of its flows; the answers are collected with
    /// [`FlowRequest::wait`], which needs no access to the `Dataplane` (so a caller can let go
    /// of a lock around it while waiting).
    pub fn request_flows(&self) -> Result<FlowRequest, DataplaneError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(self.workers.len());
        self.command(Command::DumpFlows(tx))?;
        Ok(FlowRequest {
            answers: rx,
            workers: self.workers.len(),
        })
    }

    /// Every worker's live flows (each capped at [`MAX_DUMPED_FLOWS`]), waiting at most
    /// `timeout` for all of them.
    pub fn dump_flows(&self, timeout: Duration) -> Result<Vec<FlowDump>, DataplaneError> {
        self.request_flows()?.wait(timeout)
    }

    /// Each worker's counters as last published.
    pub fn stats(&self) -> Vec<Counters> {
        self.workers.iter().map(|w| w.stats.read()).collect()
    }

    /// Traffic per service and endpoint, summed over the workers (as published about once a
    /// second), in key order.
    pub fn endpoint_stats(
        &self,
    ) -> Vec<(
        snapshot::ServiceKey,
        accounting::EndpointId,
        accounting::EndpointCounters,
    )> {
        let mut sum: std::collections::BTreeMap<_, accounting::EndpointCounters> =
            Default::default();
        for w in &self.workers {
            for (s, e, c) in w.stats.read_endpoints() {
                sum.entry((s, e)).or_default().add(&c);
            }
        }
        sum.into_iter().map(|((s, e), c)| (s, e, c)).collect()
    }

    /// Flows each worker's connection table holds at most.
    pub fn conntrack_capacity(&self) -> usize {
        self.conntrack_capacity
    }

    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// Stops the workers and waits for them: each finishes its batch, pushes out its pending
    /// transmissions (bounded, see `worker::TX_DRAIN`) and ends; its sockets close with it.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let started = Instant::now();
        self.stop.store(true, Ordering::Relaxed);
        let mut stopped = 0;
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                if t.join().is_err() {
                    log::error!("a worker thread panicked");
                }
                stopped += 1;
            }
        }
        if stopped > 0 {
            log::info!(
                "{stopped} worker(s) drained and stopped in {:?}",
                started.elapsed()
            );
        }
    }
}

/// Flow dumps asked of every worker, not yet collected.
pub struct FlowRequest {
    answers: Receiver<FlowDump>,
    workers: usize,
}

impl FlowRequest {
    /// Collects one answer per worker, in worker order; an error names a worker that did not
    /// answer within `timeout` (counted from this call).
    pub fn wait(self, timeout: Duration) -> Result<Vec<FlowDump>, DataplaneError> {
        let deadline = Instant::now() + timeout;
        let mut got: Vec<Option<FlowDump>> = vec![None; self.workers];
        for _ in 0..self.workers {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.answers.recv_timeout(left) {
                Ok(d) => {
                    if let Some(slot) = got.get_mut(d.worker) {
                        *slot = Some(d);
                    }
                }
                // Disconnected: a worker dropped the request unanswered (it stopped).
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        let missing = got.iter().position(Option::is_none);
        if let Some(worker) = missing {
            return Err(DataplaneError::NoAnswer {
                worker,
                waited: timeout,
            });
        }
        Ok(got.into_iter().flatten().collect())
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        self.shutdown();
    }
}
