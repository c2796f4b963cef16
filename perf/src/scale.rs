//! `scale`: how the engine's cost per packet and its memory grow with the number of tracked
//! flows and with the number of services, in memory, one core (as `engine`).
//!
//! Packets visit every flow once per pass in a fixed random order, so a large table costs the
//! cache and TLB misses it would cost with real traffic; the per-packet descriptors are read
//! sequentially (the prefetcher hides them), so what misses is the engine's own state.
//!
//! Memory is measured twice: as the structures report it (`Conntrack::allocated_bytes`, the
//! selectors' table and endpoint arrays) and as the growth of the process's resident set. The
//! resident set is measured in a fresh child process (`scale --memory ...`, run by the parent),
//! because in the parent the allocator's free lists, left over from earlier sizes, would absorb
//! part of the growth.

use oxlb_dataplane::checksum;
use oxlb_dataplane::conntrack::FlowState;
use oxlb_dataplane::engine::{Engine, Verdict};
use oxlb_dataplane::select::{Algorithm, EndpointKey, ServiceSelector};
use oxlb_dataplane::snapshot::{Endpoint, NatMode, NextHop, Proto, Service, ServiceKey, Snapshot};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::summary::Summary;

const FLOW_SIZES: [usize; 3] = [1_000, 100_000, 1_000_000];
const SERVICE_SIZES: [usize; 3] = [10, 1_000, 10_000];
/// Established flows spread over the services in the service dimension: enough that 10 000
/// services each have a few, few enough that the table itself stays a constant cost.
const SERVICE_FLOWS: usize = 100_000;
/// SYNs of one new-flow run, into a table of that capacity (as `engine`'s new-flow case).
const NEW_FLOWS: usize = 1_000_000;
/// Endpoints per service, taken from a pool of `BACKENDS` addresses shared by all services:
/// the next-hop map stays the same size whatever the number of services.
const ENDPOINTS: usize = 3;
const BACKENDS: u32 = 64;
const BATCH: usize = 64;
const RUN: Duration = Duration::from_secs(1);
/// Ethernet + IPv4 + TCP without options or payload: the whole frame.
const HEADERS: usize = 14 + 20 + 20;
const CLIENT_IF: u32 = 2;
const BACKEND_IF: u32 = 3;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// The bytes in which one flow's frames differ from another's with the same flags: IPv4
/// checksum, addresses and ports (frame bytes 24..38), and the TCP checksum (50..52). Sixteen
/// bytes, so a million flows' worth streams through the cache without evicting the table.
#[derive(Clone, Copy)]
struct Packet {
    ip: [u8; 14],
    tcp_check: [u8; 2],
}

/// A complete frame with correct checksums (set-up only: the hot path stamps `Packet`s).
fn frame(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> [u8; HEADERS] {
    let mut f = [0u8; HEADERS];
    f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = checksum::ipv4_header(&ip[..20]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let tcp = &mut ip[20..];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[12] = 0x50;
    tcp[13] = flags;
    let pseudo = checksum::pseudo_header_v4(src, dst, 6, 20);
    let c = checksum::l4_full(tcp, 16, pseudo);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    f
}

fn packet(f: &[u8; HEADERS]) -> Packet {
    let mut p = Packet {
        ip: [0; 14],
        tcp_check: [0; 2],
    };
    p.ip.copy_from_slice(&f[24..38]);
    p.tcp_check.copy_from_slice(&f[50..52]);
    p
}

/// Restores a frame the engine rewrote to `p`'s packet: `template` carries what all packets
/// share (MACs, lengths, flags).
fn stamp(f: &mut [u8; HEADERS], template: &[u8; HEADERS], p: &Packet) {
    f.copy_from_slice(template);
    f[24..38].copy_from_slice(&p.ip);
    f[50..52].copy_from_slice(&p.tcp_check);
}

/// Client `i`'s address and port: distinct for every `i` below 2^24 * 50 000.
fn client(i: usize) -> (Ipv4Addr, u16) {
    let addr = u32::from(Ipv4Addr::new(10, 0, 0, 0)) + (i / 50_000) as u32;
    (Ipv4Addr::from(addr), 1024 + (i % 50_000) as u16)
}

fn service_key(i: usize) -> ServiceKey {
    ServiceKey {
        vip: IpAddr::from(Ipv4Addr::from(
            u32::from(Ipv4Addr::new(198, 19, 0, 0)) + (i / 100) as u32,
        )),
        port: 2000 + (i % 100) as u16,
        proto: Proto::Tcp,
    }
}

fn backend(b: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 32, 0)) + 1 + b)
}

/// A snapshot of `count` DNAT services, each with `ENDPOINTS` endpoints. Selectors are built
/// on both cores (a Maglev table of 65 537 slots takes milliseconds); set-up, not measured.
fn snapshot(count: usize, algorithm: Algorithm) -> Snapshot {
    let build = |range: std::ops::Range<usize>| -> Vec<Service> {
        range
            .map(|i| {
                let endpoints = (0..ENDPOINTS)
                    .map(|k| Endpoint {
                        addr: IpAddr::from(backend((i * ENDPOINTS + k) as u32 % BACKENDS)),
                        port: 8080,
                        weight: 1,
                    })
                    .collect();
                Service::new(
                    service_key(i),
                    format!("svc-{i}"),
                    NatMode::Dnat,
                    algorithm,
                    endpoints,
                    Duration::from_secs(1800),
                )
                .expect("a valid service")
            })
            .collect()
    };
    let half = count / 2;
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| build(0..half));
        let b = build(half..count);
        (a.join().expect("selector build"), b)
    });
    let mut snap = Snapshot::default();
    for b in 0..BACKENDS {
        snap.next_hops.insert(
            IpAddr::from(backend(b)),
            NextHop {
                ifindex: BACKEND_IF,
                src_mac: [2, 0, 0, 0, 1, 0xfe],
                dst_mac: [2, 0, 0, 0, 1, 1],
            },
        );
    }
    for svc in a.into_iter().chain(b) {
        snap.vips.insert(svc.key.vip);
        snap.services.insert(svc.key, svc);
    }
    snap
}

/// SplitMix64: a fixed, seeded sequence, so every run and size sees the same order.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

/// The service flow `i` belongs to: random, so consecutive packets touch unrelated services.
fn services_of(flows: usize, services: usize) -> Vec<usize> {
    let mut rng = Rng(0x5ca1e);
    (0..flows).map(|_| rng.below(services)).collect()
}

/// Opens `service_of.len()` flows with full handshakes (SYN, the endpoint's SYN-ACK, ACK), so
/// each is established as real traffic leaves it; returns each flow's ACK in a random order.
fn establish(engine: &mut Engine, snap: &Snapshot, service_of: &[usize]) -> Vec<Packet> {
    let mut acks = Vec::with_capacity(service_of.len());
    for (i, &s) in service_of.iter().enumerate() {
        let (caddr, cport) = client(i);
        let key = service_key(s);
        let mut syn = frame(caddr, cport, v4(key.vip), key.port, TCP_SYN);
        let v = engine.process(&mut syn, CLIENT_IF, snap, 1);
        assert!(matches!(v, Verdict::Transmit { .. }), "SYN {i}: {v:?}");
        // The engine rewrote the SYN's destination to the endpoint it chose.
        let ep = Ipv4Addr::new(syn[30], syn[31], syn[32], syn[33]);
        let ep_port = u16::from_be_bytes([syn[36], syn[37]]);
        let mut syn_ack = frame(ep, ep_port, caddr, cport, TCP_SYN | TCP_ACK);
        let v = engine.process(&mut syn_ack, BACKEND_IF, snap, 1);
        assert!(matches!(v, Verdict::Transmit { .. }), "SYN-ACK {i}: {v:?}");
        let ack = frame(caddr, cport, v4(key.vip), key.port, TCP_ACK);
        let mut f = ack;
        let v = engine.process(&mut f, CLIENT_IF, snap, 1);
        assert!(matches!(v, Verdict::Transmit { .. }), "ACK {i}: {v:?}");
        acks.push(packet(&ack));
    }
    assert!(
        engine
            .conntrack()
            .iter()
            .all(|f| f.state() == FlowState::Established),
        "every flow completed its handshake"
    );
    Rng(0xf10e5).shuffle(&mut acks);
    acks
}

/// Packets per second over `packets` (cycled) for about `dur`.
fn established_pps(engine: &mut Engine, snap: &Snapshot, packets: &[Packet], dur: Duration) -> f64 {
    let template = frame(Ipv4Addr::UNSPECIFIED, 0, Ipv4Addr::UNSPECIFIED, 0, TCP_ACK);
    let mut frames = [[0u8; HEADERS]; BATCH];
    let mut next = 0;
    let mut count = 0u64;
    let start = Instant::now();
    while start.elapsed() < dur {
        for _ in 0..64 {
            for f in frames.iter_mut() {
                stamp(f, &template, &packets[next]);
                black_box(engine.process(f, CLIENT_IF, snap, 2));
                next += 1;
                if next == packets.len() {
                    next = 0;
                }
            }
            count += BATCH as u64;
        }
    }
    let rate = count as f64 / start.elapsed().as_secs_f64();
    assert_eq!(
        engine.counters.dropped_total(),
        0,
        "benchmark packets must not drop"
    );
    rate
}

/// New flows per second: every SYN in `syns` into a fresh table of that capacity.
fn new_flow_rate(snap: &Snapshot, syns: &[Packet]) -> f64 {
    let mut engine = Engine::new(syns.len());
    let template = frame(Ipv4Addr::UNSPECIFIED, 0, Ipv4Addr::UNSPECIFIED, 0, TCP_SYN);
    let mut f = [0u8; HEADERS];
    let start = Instant::now();
    for p in syns {
        stamp(&mut f, &template, p);
        black_box(engine.process(&mut f, CLIENT_IF, snap, 1));
    }
    let rate = syns.len() as f64 / start.elapsed().as_secs_f64();
    assert_eq!(
        engine.counters.flows_created,
        syns.len() as u64,
        "every SYN opened a flow"
    );
    rate
}

fn syns(service_of: &[usize]) -> Vec<Packet> {
    service_of
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            let (caddr, cport) = client(i);
            let key = service_key(s);
            packet(&frame(caddr, cport, v4(key.vip), key.port, TCP_SYN))
        })
        .collect()
}

/// Bytes a selector holds: the struct and its boxed arrays (endpoint identities, weights, the
/// sorted identity index, the Maglev table). `ServiceSelector` has no `allocated_bytes`, so this
/// follows its field list; the resident-set figure next to it is the check.
fn selector_bytes(sel: &ServiceSelector) -> usize {
    std::mem::size_of::<ServiceSelector>()
        + sel.len()
            * (std::mem::size_of::<EndpointKey>()
                + std::mem::size_of::<u32>()
                + std::mem::size_of::<(EndpointKey, u16)>())
        + std::mem::size_of_val(sel.table())
}

fn vm_rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kb * 1024
}

/// Child process: the resident-set growth of `flows` established flows in a table sized for
/// them (engine, slab, index and all).
fn memory_of_flows(flows: usize) -> usize {
    let snap = snapshot(1, Algorithm::RoundRobin);
    let before = vm_rss();
    let mut engine = Engine::new(flows);
    // Handshakes one flow at a time (as `establish`, without keeping the packets).
    for i in 0..flows {
        let (caddr, cport) = client(i);
        let key = service_key(0);
        let mut syn = frame(caddr, cport, v4(key.vip), key.port, TCP_SYN);
        engine.process(&mut syn, CLIENT_IF, &snap, 1);
        let ep = Ipv4Addr::new(syn[30], syn[31], syn[32], syn[33]);
        let ep_port = u16::from_be_bytes([syn[36], syn[37]]);
        engine.process(
            &mut frame(ep, ep_port, caddr, cport, TCP_SYN | TCP_ACK),
            BACKEND_IF,
            &snap,
            1,
        );
        engine.process(
            &mut frame(caddr, cport, v4(key.vip), key.port, TCP_ACK),
            CLIENT_IF,
            &snap,
            1,
        );
    }
    assert_eq!(engine.conntrack().len(), flows, "every flow was opened");
    let grown = vm_rss().saturating_sub(before);
    black_box(&engine);
    grown
}

/// Child process: resident-set growth of a snapshot of `services` services, and of the
/// worker's own per-service selection state once each service has had a flow.
fn memory_of_services(services: usize, algorithm: Algorithm) -> (usize, usize) {
    // The first build starts a thread and the allocator's arena for it: fixed costs that would
    // otherwise be charged to the services of a small snapshot.
    black_box(snapshot(2, Algorithm::RoundRobin));
    let before = vm_rss();
    let snap = snapshot(services, algorithm);
    let with_snapshot = vm_rss();
    let mut engine = Engine::new(services);
    let with_engine = vm_rss();
    let template = frame(Ipv4Addr::UNSPECIFIED, 0, Ipv4Addr::UNSPECIFIED, 0, TCP_SYN);
    let mut f = [0u8; HEADERS];
    for p in syns(&(0..services).collect::<Vec<_>>()) {
        stamp(&mut f, &template, &p);
        engine.process(&mut f, CLIENT_IF, &snap, 1);
    }
    assert_eq!(engine.counters.flows_created, services as u64);
    let worker = vm_rss().saturating_sub(with_engine);
    black_box((&snap, &engine));
    (with_snapshot.saturating_sub(before), worker)
}

/// Runs this program as a child (`scale --memory what...`) and returns its stdout's numbers.
fn in_child(what: &[String]) -> Vec<usize> {
    // The running image, not its path: a rebuild during a run replaces the file on disk.
    let out = Command::new("/proc/self/exe")
        .arg("scale")
        .arg("--memory")
        .args(what)
        .output()
        .expect("run the memory child");
    assert!(
        out.status.success(),
        "memory child {what:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|n| n.parse().expect("a byte count"))
        .collect()
}

fn algorithm_arg(name: &str) -> Algorithm {
    match name {
        "rr" => Algorithm::RoundRobin,
        "hash" => Algorithm::Hash,
        _ => panic!("unknown algorithm {name}"),
    }
}

/// `scale [runs]`, or the parent's memory children: `scale --memory flows N` and
/// `scale --memory services N rr|hash`.
pub fn main(args: &[String]) {
    if args.first().map(String::as_str) == Some("--memory") {
        let n = |i: usize| -> usize { args.get(i).and_then(|s| s.parse().ok()).expect("a count") };
        match args.get(1).map(String::as_str) {
            Some("flows") => println!("{}", memory_of_flows(n(2))),
            Some("services") => {
                let (snap, worker) =
                    memory_of_services(n(2), algorithm_arg(args.get(3).map_or("", |s| s)));
                println!("{snap} {worker}");
            }
            _ => panic!("scale --memory flows N | services N rr|hash"),
        }
        return;
    }
    let runs: usize = args
        .first()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
        .max(1);
    let started = Instant::now();
    flows(runs);
    services(runs);
    eprintln!("scale: done in {:.0} s", started.elapsed().as_secs_f64());
}

fn mpps(s: &Summary) -> String {
    format!(
        "{:.2} / **{:.2}** / {:.2}",
        s.min / 1e6,
        s.median / 1e6,
        s.max / 1e6
    )
}

fn thousands(n: usize) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{} M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{} k", n / 1_000),
        n => n.to_string(),
    }
}

fn flows(runs: usize) {
    let snap = snapshot(1, Algorithm::RoundRobin);
    let mut setups = Vec::new();
    for &n in &FLOW_SIZES {
        let t = Instant::now();
        let mut engine = Engine::new(n);
        let acks = establish(&mut engine, &snap, &vec![0; n]);
        eprintln!(
            "scale: {n} flows established in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        setups.push((engine, acks));
    }
    // Interleaved (every size once per round) so that noise on the shared machine hits all
    // sizes alike.
    let mut rates = vec![Vec::new(); FLOW_SIZES.len()];
    for _ in 0..runs {
        for ((engine, acks), r) in setups.iter_mut().zip(&mut rates) {
            r.push(established_pps(engine, &snap, acks, RUN));
        }
    }
    println!();
    println!(
        "Tracked flows: established TCP (DNAT, round robin), one core, {runs} runs of {} s, \
         interleaved; packets visit all flows in a random order.",
        RUN.as_secs()
    );
    println!();
    println!(
        "| tracked flows | Mpps, min / **median** / max | ns/packet | pps vs 1 k | \
         table bytes/flow | RSS growth | RSS bytes/flow |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|");
    let base = Summary::of(&rates[0]).expect("runs >= 1").median;
    for ((&n, (engine, _)), r) in FLOW_SIZES.iter().zip(&setups).zip(&rates) {
        let s = Summary::of(r).expect("runs >= 1");
        let table = engine.conntrack().allocated_bytes() as f64 / n as f64;
        let rss = in_child(&["flows".into(), n.to_string()])[0];
        println!(
            "| {} | {} | {:.1} | {:.2}x | {:.0} | {:.1} MiB | {:.0} |",
            thousands(n),
            mpps(&s),
            1e9 / s.median,
            s.median / base,
            table,
            rss as f64 / (1 << 20) as f64,
            rss as f64 / n as f64
        );
    }
}

fn services(runs: usize) {
    struct Size {
        rr: Snapshot,
        hash: Snapshot,
        engine: Engine,
        acks: Vec<Packet>,
        syns: Vec<Packet>,
    }
    let mut sizes = Vec::new();
    for &n in &SERVICE_SIZES {
        let t = Instant::now();
        let rr = snapshot(n, Algorithm::RoundRobin);
        let hash = snapshot(n, Algorithm::Hash);
        let mut engine = Engine::new(SERVICE_FLOWS);
        let acks = establish(&mut engine, &rr, &services_of(SERVICE_FLOWS, n));
        let syns = syns(&services_of(NEW_FLOWS, n));
        eprintln!(
            "scale: {n} services set up in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        sizes.push(Size {
            rr,
            hash,
            engine,
            acks,
            syns,
        });
    }
    let mut est = vec![Vec::new(); sizes.len()];
    let mut new_rr = vec![Vec::new(); sizes.len()];
    let mut new_hash = vec![Vec::new(); sizes.len()];
    for _ in 0..runs {
        for (i, s) in sizes.iter_mut().enumerate() {
            est[i].push(established_pps(&mut s.engine, &s.rr, &s.acks, RUN));
            new_rr[i].push(new_flow_rate(&s.rr, &s.syns));
            new_hash[i].push(new_flow_rate(&s.hash, &s.syns));
        }
    }
    println!();
    println!(
        "Services: {SERVICE_FLOWS} established flows and {NEW_FLOWS} new flows (SYN: conntrack \
         insert, selection, DNAT) spread at random over the services, {ENDPOINTS} endpoints each, \
         one core, {runs} runs, interleaved. Memory per service: selector as its arrays add up \
         (computed) and the resident-set growth of building the snapshot (measured); worker: \
         its selection state per service (measured)."
    );
    println!();
    println!(
        "| services | established Mpps, min / **median** / max | vs 10 | new flows RR, Mflows/s | \
         vs 10 | new flows hash, Mflows/s | vs 10 | selector B/service RR / hash | \
         snapshot RSS B/service RR / hash | worker B/service |"
    );
    println!("|---:|---|---:|---|---:|---|---:|---:|---:|---:|");
    let median = |v: &[f64]| Summary::of(v).expect("runs >= 1");
    let (b_est, b_rr, b_hash) = (
        median(&est[0]).median,
        median(&new_rr[0]).median,
        median(&new_hash[0]).median,
    );
    for (i, (&n, s)) in SERVICE_SIZES.iter().zip(&sizes).enumerate() {
        let per_service = |snap: &Snapshot| {
            snap.services
                .values()
                .map(|svc| selector_bytes(&svc.selector))
                .sum::<usize>()
                / n
        };
        let rr_rss = in_child(&["services".into(), n.to_string(), "rr".into()]);
        let hash_rss = in_child(&["services".into(), n.to_string(), "hash".into()]);
        let (e, r, h) = (median(&est[i]), median(&new_rr[i]), median(&new_hash[i]));
        println!(
            "| {} | {} | {:.2}x | {} | {:.2}x | {} | {:.2}x | {} / {} | {} / {} | {} |",
            thousands(n),
            mpps(&e),
            e.median / b_est,
            mpps(&r),
            r.median / b_rr,
            mpps(&h),
            h.median / b_hash,
            per_service(&s.rr),
            per_service(&s.hash),
            rr_rss[0] / n,
            hash_rss[0] / n,
            rr_rss[1] / n,
        );
    }
}

/// A service address of this benchmark, all of which are IPv4.
fn v4(ip: IpAddr) -> Ipv4Addr {
    match ip {
        IpAddr::V4(a) => a,
        IpAddr::V6(a) => panic!("the scale benchmark builds IPv4 services only, not {a}"),
    }
}
