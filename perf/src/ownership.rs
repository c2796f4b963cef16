//! `ownership`: what it costs to get a packet to the state of its flow when RSS spreads a
//! flow's two directions over two workers, for the mechanisms DESIGN.md names.
//!
//! Two pinned threads stand for two workers. Each has an RX stream of 64-byte UDP frames
//! (requests client -> VIP and replies endpoint -> client of `flows` flows), each frame on the
//! queue a hash independent of its flow picked, as RSS does. The work per packet that all
//! mechanisms share is a flow-table lookup and a counter update; what differs is how the
//! packet and the state meet:
//!
//! - `local`: no cross-traffic at all (each worker receives only its own flows): the floor.
//! - `handoff` (what oxlb does): the owner is computed from the packet (`Ownership::owner`); a
//!   frame for the other worker is copied into its SPSC ring (`handoff::mesh`) and copied out
//!   again by the owner (as into a UMEM frame), which looks it up in its private table.
//! - `sharded`: one table shared by both workers, 64 shards each behind a mutex; every
//!   frame is looked up where it arrived, so a flow's entry moves between the two cores'
//!   caches as its directions alternate.
//!
//! SNAT ports chosen so that replies hash to the owner's queue (the third mechanism) needs
//! the NIC's RSS function and key, which a veth does not have, and cannot help DNAT, whose
//! replies carry the client's own port; it is not measured here.

use oxlb_dataplane::handoff;
use oxlb_dataplane::owner::Ownership;
use oxlb_dataplane::select::Algorithm;
use oxlb_dataplane::snapshot::{
    Endpoint, NatMode, PortRange, Proto, Service, ServiceKey, Snapshot,
};
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use crate::summary::Summary;

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
const VIP_PORT: u16 = 2020;
const BACKEND: Ipv4Addr = Ipv4Addr::new(198, 18, 31, 1);
const BACKEND_PORT: u16 = 8080;
const FRAME: usize = 64;
const SHARDS: usize = 64;
/// Packets each worker takes from its RX stream per round.
const ROUND: usize = 64;
const WORKERS: usize = 2;

/// Frames the hand-off mechanism dropped for a full ring (reported: they are not counted as
/// done, but they cost the sender its work).
static HANDOFF_DROPS: AtomicU64 = AtomicU64::new(0);

type Key = (u32, u32, u16, u16);
type Table = hashbrown::HashMap<Key, [u64; 2]>;

fn udp_frame(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> [u8; FRAME] {
    let mut f = [0u8; FRAME];
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f[14] = 0x45;
    f[16..18].copy_from_slice(&((FRAME - 14) as u16).to_be_bytes());
    f[22] = 64;
    f[23] = 17;
    f[26..30].copy_from_slice(&src.octets());
    f[30..34].copy_from_slice(&dst.octets());
    f[34..36].copy_from_slice(&sport.to_be_bytes());
    f[36..38].copy_from_slice(&dport.to_be_bytes());
    f[38..40].copy_from_slice(&((FRAME - 34) as u16).to_be_bytes());
    f
}

fn key_of(f: &[u8]) -> Key {
    let word = |at: usize| u32::from_be_bytes([f[at], f[at + 1], f[at + 2], f[at + 3]]);
    let half = |at: usize| u16::from_be_bytes([f[at], f[at + 1]]);
    (word(26), word(30), half(34), half(36))
}

fn snapshot() -> Snapshot {
    let key = ServiceKey {
        vip: IpAddr::from(VIP),
        port: VIP_PORT,
        proto: Proto::Udp,
    };
    let svc = Service::new(
        key,
        "bench".into(),
        NatMode::Dnat,
        Algorithm::RoundRobin,
        vec![Endpoint {
            addr: IpAddr::from(BACKEND),
            port: BACKEND_PORT,
            weight: 1,
        }],
        Duration::from_secs(1800),
    )
    .expect("a valid service");
    let mut snap = Snapshot::default();
    snap.services.insert(key, svc);
    snap.vips.insert(IpAddr::from(VIP));
    snap
}

/// Both directions of `flows` flows, each frame put on a worker's RX stream by a hash
/// independent of the flow (RSS), and the flows' owners.
struct Traffic {
    rx: Vec<Vec<[u8; FRAME]>>,
    ownership: Ownership,
    snap: Snapshot,
}

fn traffic(flows: usize) -> Traffic {
    let ownership = Ownership::new(WORKERS, PortRange::default(), 0x5eed);
    let snap = snapshot();
    let rss = RandomState::new();
    let mut rx = vec![Vec::new(); WORKERS];
    for i in 0..flows {
        let client =
            Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + (i / 50_000) as u32 + 2);
        let port = 10_000 + (i % 50_000) as u16;
        for f in [
            udp_frame(client, port, VIP, VIP_PORT),
            udp_frame(BACKEND, BACKEND_PORT, client, port),
        ] {
            rx[rss.hash_one(f) as usize % WORKERS].push(f);
        }
    }
    Traffic {
        rx,
        ownership,
        snap,
    }
}

fn table_for(flows: &[[u8; FRAME]]) -> Table {
    flows.iter().map(|f| (key_of(f), [0, 0])).collect()
}

fn touch(entry: &mut [u64; 2]) {
    entry[0] += 1;
    entry[1] += FRAME as u64;
}

/// Runs `work` on every worker thread, pinned, for `secs`; returns packets per second.
fn on_workers<S: Send + 'static>(
    states: Vec<S>,
    secs: f64,
    work: impl Fn(usize, &mut S, &mut u64) + Send + Sync + 'static,
) -> f64 {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let work = Arc::new(work);
    let start = Arc::new(Barrier::new(states.len()));
    let threads: Vec<_> = states
        .into_iter()
        .enumerate()
        .map(|(w, mut state)| {
            let (work, start) = (work.clone(), start.clone());
            let core = cores.get(w % cores.len().max(1)).copied();
            std::thread::spawn(move || {
                if let Some(core) = core {
                    core_affinity::set_for_current(core);
                }
                start.wait();
                let t = Instant::now();
                let mut done = 0u64;
                while t.elapsed().as_secs_f64() < secs {
                    work(w, &mut state, &mut done);
                }
                (done, t.elapsed().as_secs_f64())
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| {
            let (done, took) = t.join().expect("bench thread");
            done as f64 / took
        })
        .sum()
}

fn local(t: &Traffic, secs: f64) -> f64 {
    // Every worker gets only the frames it owns: what perfect steering would give.
    let mut own = vec![Vec::new(); WORKERS];
    for f in t.rx.iter().flatten() {
        own[t.ownership.owner(f, &t.snap).unwrap_or(0)].push(*f);
    }
    let states: Vec<(Vec<[u8; FRAME]>, Table, usize)> = own
        .into_iter()
        .map(|frames| {
            let table = table_for(&frames);
            (frames, table, 0)
        })
        .collect();
    on_workers(states, secs, |_, (frames, table, at), done| {
        for _ in 0..ROUND {
            let f = &frames[*at];
            *at = (*at + 1) % frames.len();
            if let Some(e) = table.get_mut(&key_of(f)) {
                touch(e);
            }
            *done += 1;
        }
    })
}

struct HandoffWorker {
    frames: Vec<[u8; FRAME]>,
    at: usize,
    table: Table,
    outbox: handoff::Outbox,
    inbox: handoff::Inbox,
    ownership: Ownership,
    snap: Arc<Snapshot>,
    /// Stands for the UMEM frame the owner copies a handed-over frame into.
    umem: Box<[u8; 2048]>,
}

fn handoff(t: &Traffic, secs: f64) -> f64 {
    let snap = Arc::new(t.snap.clone());
    let mesh = handoff::mesh(WORKERS, handoff::ring_bytes(WORKERS)).expect("handoff rings");
    // Each worker's table holds the flows it owns, whichever queue their frames arrive on.
    let mut owned = vec![Vec::new(); WORKERS];
    for f in t.rx.iter().flatten() {
        owned[t.ownership.owner(f, &t.snap).unwrap_or(0)].push(*f);
    }
    let states: Vec<HandoffWorker> = mesh
        .into_iter()
        .enumerate()
        .map(|(w, (outbox, inbox))| HandoffWorker {
            frames: t.rx[w].clone(),
            at: 0,
            table: table_for(&owned[w]),
            outbox,
            inbox,
            ownership: t.ownership,
            snap: snap.clone(),
            umem: Box::new([0; 2048]),
        })
        .collect();
    on_workers(states, secs, |w, s, done| {
        for _ in 0..ROUND {
            let f = &s.frames[s.at];
            s.at = (s.at + 1) % s.frames.len();
            match s.ownership.owner(f, &s.snap) {
                Some(o) if o != w => {
                    // A full ring drops the frame (counted in oxlb); here it is just not done.
                    s.outbox.send(o, 1, f);
                }
                _ => {
                    if let Some(e) = s.table.get_mut(&key_of(f)) {
                        touch(e);
                    }
                    *done += 1;
                }
            }
        }
        let flushed = s.outbox.flush();
        HANDOFF_DROPS.fetch_add(flushed.dropped as u64, Ordering::Relaxed);
        let (table, umem) = (&mut s.table, &mut s.umem);
        s.inbox.drain(2 * ROUND, |_, a, b| {
            umem[..a.len()].copy_from_slice(a);
            umem[a.len()..a.len() + b.len()].copy_from_slice(b);
            if let Some(e) = table.get_mut(&key_of(&umem[..a.len() + b.len()])) {
                touch(e);
            }
            *done += 1;
        });
    })
}

fn sharded(t: &Traffic, secs: f64) -> f64 {
    let hasher = RandomState::new();
    let shards: Arc<Vec<Mutex<Table>>> =
        Arc::new((0..SHARDS).map(|_| Mutex::new(Table::default())).collect());
    for f in t.rx.iter().flatten() {
        let k = key_of(f);
        let shard = hasher.hash_one(k) as usize % SHARDS;
        shards[shard].lock().expect("shard").insert(k, [0, 0]);
    }
    let states: Vec<(Vec<[u8; FRAME]>, usize)> = t.rx.iter().map(|r| (r.clone(), 0)).collect();
    on_workers(states, secs, move |_, (frames, at), done| {
        for _ in 0..ROUND {
            let f = &frames[*at];
            *at = (*at + 1) % frames.len();
            let k = key_of(f);
            let mut shard = shards[hasher.hash_one(k) as usize % SHARDS]
                .lock()
                .expect("shard");
            if let Some(e) = shard.get_mut(&k) {
                touch(e);
            }
            *done += 1;
        }
    })
}

/// Runs each mechanism `runs` times, interleaved, and prints medians and ratios.
pub fn run(runs: usize, flows: usize, secs: f64) {
    let t = traffic(flows);
    let foreign =
        t.rx.iter()
            .enumerate()
            .map(|(w, frames)| {
                frames
                    .iter()
                    .filter(|f| t.ownership.owner(&f[..], &t.snap) != Some(w))
                    .count()
            })
            .sum::<usize>() as f64
            / (2 * flows) as f64;
    println!(
        "ownership: {WORKERS} workers, {flows} flows (both directions), {:.0} % of frames arrive \
         at the worker that does not own them; {runs} runs of {secs} s, interleaved",
        foreign * 100.0
    );
    type Mechanism = fn(&Traffic, f64) -> f64;
    let mechanisms: [(&str, Mechanism); 3] = [
        ("local (no cross-traffic)", local),
        ("handoff (oxlb)", handoff),
        ("sharded table, 64 mutexes", sharded),
    ];
    let mut results = vec![Vec::new(); mechanisms.len()];
    for _ in 0..runs {
        for (i, (_, m)) in mechanisms.iter().enumerate() {
            results[i].push(m(&t, secs) / 1e6);
        }
    }
    let medians: Vec<Summary> = results
        .iter()
        .map(|r| Summary::of(r).expect("at least one run"))
        .collect();
    println!(
        "{:<28} {:>10} {:>18} {:>10}",
        "mechanism", "Mpps", "min-max", "vs local"
    );
    for ((name, _), s) in mechanisms.iter().zip(&medians) {
        println!(
            "{name:<28} {:>10.2} {:>8.2}-{:<9.2} {:>9.2}x",
            s.median,
            s.min,
            s.max,
            s.median / medians[0].median
        );
    }
    println!(
        "handoff vs sharded: {:.2}x; hand-off frames dropped for a full ring over all runs: {}",
        medians[1].median / medians[2].median,
        HANDOFF_DROPS.load(Ordering::Relaxed)
    );
}
