//! `engine`: the packet engine's own cost in memory (parse, conntrack lookup, rewrite,
//! checksums) for established flows, one core, batches of 64 frames.

use oxlb_dataplane::checksum;
use oxlb_dataplane::engine::{Engine, Verdict};
use oxlb_dataplane::select::Algorithm;
use oxlb_dataplane::snapshot::{Endpoint, NatMode, NextHop, Proto, Service, ServiceKey, Snapshot};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use crate::summary::Summary;

const BATCH: usize = 64;
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
/// Bytes of every frame restored from its template before each pass: Ethernet + IPv4 + TCP
/// headers, i.e. what the engine rewrites. Payloads are never copied.
const HEADERS: usize = 14 + 20 + 20;

fn snapshot() -> Snapshot {
    let mut s = Snapshot::default();
    let key = ServiceKey {
        vip: IpAddr::from(VIP),
        port: 2020,
        proto: Proto::Tcp,
    };
    let endpoints: Vec<Endpoint> = (1..=3)
        .map(|n| Endpoint {
            addr: IpAddr::from(Ipv4Addr::new(198, 18, 31, n)),
            port: 8080,
            weight: 1,
        })
        .collect();
    for e in &endpoints {
        s.next_hops.insert(
            e.addr,
            NextHop {
                ifindex: 3,
                src_mac: [2, 0, 0, 0, 1, 0xfe],
                dst_mac: [2, 0, 0, 0, 1, 1],
            },
        );
    }
    s.services.insert(
        key,
        Service::new(
            key,
            "bench".into(),
            NatMode::Dnat,
            Algorithm::RoundRobin,
            endpoints,
            Duration::from_secs(1800),
        )
        .expect("a valid service"),
    );
    s
}

/// A client-to-VIP TCP frame with `payload` bytes; `partial` leaves the checksum as an
/// offloading sender does (pseudo-header only), otherwise it is complete.
fn frame(client_port: u16, flags: u8, payload: usize, partial: bool) -> Vec<u8> {
    let ip_len = 20 + 20 + payload;
    let mut f = vec![0u8; 14 + ip_len];
    f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&[198, 18, 0, 2]);
    ip[16..20].copy_from_slice(&VIP.octets());
    let c = checksum::ipv4_header(&ip[..20]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let tcp = &mut ip[20..];
    tcp[0..2].copy_from_slice(&client_port.to_be_bytes());
    tcp[2..4].copy_from_slice(&2020u16.to_be_bytes());
    tcp[12] = 0x50;
    tcp[13] = flags;
    for (i, b) in tcp[20..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let pseudo = checksum::pseudo_header_v4(Ipv4Addr::new(198, 18, 0, 2), VIP, 6, 20 + payload);
    let c = if partial {
        checksum::fold(pseudo)
    } else {
        checksum::l4_full(tcp, 16, pseudo)
    };
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    f
}

struct Case {
    name: &'static str,
    payload: usize,
    partial: bool,
}

/// Packets per second of one run of about `dur`.
fn run_case(case: &Case, flows: usize, dur: Duration) -> f64 {
    let snap = snapshot();
    let mut engine = Engine::new(flows * 2);
    // Open the flows with SYNs so every measured packet is established traffic.
    for i in 0..flows {
        let mut syn = frame(10_000 + i as u16, 0x02, 0, false);
        assert!(matches!(
            engine.process(&mut syn, 2, &snap, 1),
            Verdict::Transmit { .. }
        ));
    }
    let templates: Vec<Vec<u8>> = (0..flows)
        .map(|i| frame(10_000 + i as u16, 0x10, case.payload, case.partial))
        .collect();
    let mut frames = templates.clone();
    let mut packets = 0u64;
    let mut next = 0usize;
    let start = Instant::now();
    while start.elapsed() < dur {
        for _ in 0..64 {
            for _ in 0..BATCH {
                let (t, f) = (&templates[next], &mut frames[next]);
                f[..HEADERS].copy_from_slice(&t[..HEADERS]);
                let v = engine.process(f, 2, &snap, 2);
                std::hint::black_box(v);
                next = (next + 1) % flows;
            }
            packets += BATCH as u64;
        }
    }
    assert_eq!(
        engine.counters.dropped_total(),
        0,
        "benchmark packets must not drop"
    );
    packets as f64 / start.elapsed().as_secs_f64()
}

/// Runs every case `runs` times for 1 s over `flows` established flows and prints the table.
pub fn run(runs: usize, flows: usize) {
    let cases = [
        Case {
            name: "tcp ack, no payload, complete checksum (incremental update)",
            payload: 0,
            partial: false,
        },
        Case {
            name: "tcp 1400 B payload, complete checksum (incremental update)",
            payload: 1400,
            partial: false,
        },
        Case {
            name: "tcp 1400 B payload, partial checksum (full recompute)",
            payload: 1400,
            partial: true,
        },
    ];
    println!("engine benchmark: one core, batches of {BATCH}, {flows} established flows, {runs} runs of 1 s each");
    println!(
        "{:<64} {:>10} {:>10} {:>10} {:>9}",
        "case", "min Mpps", "median", "max", "ns/pkt"
    );
    for case in &cases {
        let v: Vec<f64> = (0..runs)
            .map(|_| run_case(case, flows, Duration::from_secs(1)))
            .collect();
        let s = Summary::of(&v).expect("runs >= 1");
        println!(
            "{:<64} {:>10.2} {:>10.2} {:>10.2} {:>9.1}",
            case.name,
            s.min / 1e6,
            s.median / 1e6,
            s.max / 1e6,
            1e9 / s.median
        );
    }
    let new_flows = 1_000_000;
    let mut rates = Vec::new();
    let mut bytes_per_flow = 0.0;
    for _ in 0..runs {
        let (rate, bytes) = new_flow_rate(new_flows);
        rates.push(rate);
        bytes_per_flow = bytes;
    }
    let s = Summary::of(&rates).expect("runs >= 1");
    println!(
        "{:<64} {:>10.2} {:>10.2} {:>10.2} {:>9.1}",
        "new flows: SYN -> conntrack insert + round robin + DNAT (Mflows/s)",
        s.min / 1e6,
        s.median / 1e6,
        s.max / 1e6,
        1e9 / s.median
    );
    println!(
        "connection table memory: {bytes_per_flow:.0} bytes per flow (slab + index, allocated for {new_flows} flows)"
    );
}

/// Opens `flows` new flows (distinct client address/port pairs) in a table of that capacity;
/// returns flows per second and the table's allocated bytes per flow.
fn new_flow_rate(flows: usize) -> (f64, f64) {
    let snap = snapshot();
    let mut engine = Engine::new(flows);
    let template = frame(0, 0x02, 0, false);
    let mut f = template.clone();
    let start = Instant::now();
    for i in 0..flows {
        f[..HEADERS].copy_from_slice(&template[..HEADERS]);
        // Distinct tuples: 60 000 ports per client address, then the next address.
        f[14 + 14] = (i / 60_000) as u8;
        f[34..36].copy_from_slice(&(1024 + (i % 60_000) as u16).to_be_bytes());
        let v = engine.process(&mut f, 2, &snap, 1);
        std::hint::black_box(v);
    }
    let rate = flows as f64 / start.elapsed().as_secs_f64();
    assert_eq!(
        engine.counters.flows_created, flows as u64,
        "every SYN opened a flow"
    );
    let bytes = engine.conntrack().allocated_bytes() as f64 / flows as f64;
    (rate, bytes)
}
