//! Any bytes through the whole packet path, in every mode: no panic, no out-of-bounds access,
//! and a forwarded packet that arrived with valid checksums leaves with valid ones.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oxlb_dataplane::engine::{Engine, Verdict};
use oxlb_dataplane::select::Algorithm;
use oxlb_dataplane::snapshot::{Endpoint, NatMode, NextHop, Proto, Service, ServiceKey, Snapshot};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;
use std::time::Duration;

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
/// IPv6 VIPs: one with IPv6 endpoints (NAT66), one with the IPv4 endpoints (NAT64).
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 1);
const VIP64: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 2);

fn snapshot(mode: NatMode, alg: Algorithm) -> Snapshot {
    let mut s = Snapshot::default();
    let v4 = |n: u8| IpAddr::V4(Ipv4Addr::new(198, 18, 31, n));
    let v6 = |n: u8| IpAddr::V6(Ipv6Addr::new(0xfd00, 0x31, 0, 0, 0, 0, 0, u16::from(n)));
    // NAT64 needs source translation: its service is full NAT whatever `mode` is.
    let vips = [(IpAddr::V4(VIP), mode, false), (VIP6.into(), mode, true), (VIP64.into(), NatMode::FullNat, false)];
    for (vip, mode, six) in vips {
        for proto in [Proto::Tcp, Proto::Udp, Proto::Sctp] {
            let key = ServiceKey { vip, port: 2020, proto };
            let port = if mode == NatMode::Dsr { 2020 } else { 8080 };
            let eps = (1..=3)
                .map(|n| Endpoint { addr: if six { v6(n) } else { v4(n) }, port, weight: n })
                .collect();
            let svc = Service::new(key, String::new(), mode, alg, eps, Duration::from_secs(60))
                .expect("valid service");
            s.services.insert(key, svc);
        }
        s.vips.insert(vip);
    }
    for n in 1..=3 {
        for (a, own) in [(v4(n), v4(254)), (v6(n), v6(254))] {
            s.next_hops.insert(a, NextHop { ifindex: 3, src_mac: [2; 6], dst_mac: [4; 6] });
            s.sources.insert(a, own);
            s.own_addrs.insert(own);
        }
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
        // Room after the frame, as an AF_XDP buffer has: NAT64 replies grow by 20 bytes.
        let mut frame = tail[..len].to_vec();
        frame.resize(len + 64, 0);
        rest = &tail[len..];
        now += 1000;
        let before = engine.counters.dropped_total();
        match engine.process_with_room(&mut frame, len, 2, snap, now) {
            Verdict::Drop(_) => assert_eq!(engine.counters.dropped_total(), before + 1),
            Verdict::Transmit { .. } | Verdict::Kernel => assert!(len >= 14 + 20 + 8),
            Verdict::TransmitFirst { len: out, .. } => {
                assert!(out >= 14 + 20 + 8 && out <= len + 20)
            }
        }
        engine.sweep(now, 16, snap);
    }
});
