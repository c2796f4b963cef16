//! Multi-homed SCTP through a service with secondary addresses (loxilb's `secondaryIPs`),
//! packet in + rules -> packet out + verdict, byte-exact against frames scapy built.
//!
//! The scenario (fixtures/sctp_multihome.txt): client 198.18.0.2 and 198.18.0.3, port 40000;
//! VIP 198.18.100.1:2020 with secondaries 198.18.101.1 and 198.18.102.1; endpoints
//! 198.18.31.1:8080 and 198.18.31.2:8080, round robin, dnat.

use oxlb_dataplane::engine::{Engine, Verdict};
use oxlb_dataplane::owner::Ownership;
use oxlb_dataplane::select::Algorithm;
use oxlb_dataplane::snapshot::{
    Endpoint, NatMode, NextHop, PortRange, Proto, Service, ServiceKey, Snapshot,
};
use oxlb_dataplane::stats::DropReason;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

mod common;

const LB0_IF: u32 = 2;
const LB1_IF: u32 = 3;
const LB1_MAC: [u8; 6] = [2, 0, 0, 0, 1, 0xfe];
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
const SEC1: Ipv4Addr = Ipv4Addr::new(198, 18, 101, 1);
const SEC2: Ipv4Addr = Ipv4Addr::new(198, 18, 102, 1);
/// Room after a frame in its buffer, as a UMEM frame has.
const ROOM: usize = 256;

fn frame(name: &str) -> Vec<u8> {
    common::fixture(include_str!("fixtures/sctp_multihome.txt"), name)
}

fn backend(n: u8) -> IpAddr {
    Ipv4Addr::new(198, 18, 31, n).into()
}

fn key(vip: Ipv4Addr, port: u16) -> ServiceKey {
    ServiceKey {
        vip: vip.into(),
        port,
        proto: Proto::Sctp,
    }
}

struct Fixture {
    snap: Snapshot,
    engine: Engine,
}

impl Fixture {
    /// The service on the VIP with `secondaries`, each a key of the snapshot as the compiler
    /// makes them, and next hops to both endpoints.
    fn new(secondaries: &[Ipv4Addr]) -> Self {
        let secondaries: Vec<IpAddr> = secondaries.iter().map(|&a| a.into()).collect();
        Fixture::with(VIP.into(), &secondaries, [backend(1), backend(2)])
    }

    /// The IPv6 service fd00:100::1 with the secondary fd00:101::1 before fd00:31::1 and ::2.
    fn new_v6() -> Self {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        Fixture::with(
            ip("fd00:100::1"),
            &[ip("fd00:101::1")],
            [ip("fd00:31::1"), ip("fd00:31::2")],
        )
    }

    fn with(vip: IpAddr, secondaries: &[IpAddr], backends: [IpAddr; 2]) -> Self {
        let endpoints = backends
            .iter()
            .map(|&addr| Endpoint {
                addr,
                port: 8080,
                weight: 1,
            })
            .collect();
        let at = |vip| ServiceKey {
            vip,
            port: 2020,
            proto: Proto::Sctp,
        };
        let mut svc = Service::new(
            at(vip),
            "sctp-mh".into(),
            NatMode::Dnat,
            Algorithm::RoundRobin,
            endpoints,
            Duration::from_secs(1800),
        )
        .unwrap();
        svc.secondaries = secondaries.to_vec();
        let mut snap = Snapshot::default();
        for &addr in std::iter::once(&vip).chain(secondaries) {
            snap.services.insert(at(addr), svc.clone());
            snap.vips.insert(addr);
        }
        for (addr, n) in backends.into_iter().zip([1, 2]) {
            snap.next_hops.insert(
                addr,
                NextHop {
                    ifindex: LB1_IF,
                    src_mac: LB1_MAC,
                    dst_mac: [2, 0, 0, 0, 1, n],
                },
            );
        }
        Fixture {
            snap,
            engine: Engine::new(1024),
        }
    }

    /// Processes the fixture `name` in a buffer with room after it; the verdict and the
    /// frame as it leaves.
    fn run(&mut self, name: &str, ingress: u32) -> (Verdict, Vec<u8>) {
        let mut buf = frame(name);
        let len = buf.len();
        buf.resize(len + ROOM, 0);
        let v = self
            .engine
            .process_with_room(&mut buf, len, ingress, &self.snap, 1);
        let out = match v {
            Verdict::TransmitFirst { len, .. } => len,
            _ => len,
        };
        buf.truncate(out);
        (v, buf)
    }

    /// The INIT and the endpoint's INIT ACK of the association, checked on the way.
    fn associate(mut self) -> Self {
        let (v, out) = self.run("INIT_IN", LB0_IF);
        assert_eq!(v, Verdict::Transmit { ifindex: LB1_IF });
        assert_eq!(
            out,
            frame("INIT_OUT"),
            "the INIT reaches endpoint 1 untouched"
        );
        self
    }
}

#[test]
fn the_endpoints_init_ack_lists_the_secondary_addresses_instead_of_its_own() {
    let mut fx = Fixture::new(&[SEC1, SEC2]).associate();
    let (v, out) = fx.run("INIT_ACK_IN", LB1_IF);
    let want = frame("INIT_ACK_OUT");
    assert_eq!(
        v,
        Verdict::TransmitFirst {
            ifindex: LB0_IF,
            len: want.len()
        }
    );
    assert_eq!(out, want);
}

#[test]
fn an_ipv6_endpoints_init_ack_lists_the_ipv6_secondary_address_instead_of_its_own() {
    let mut fx = Fixture::new_v6();
    let (v, out) = fx.run("INIT6_IN", LB0_IF);
    assert_eq!(v, Verdict::Transmit { ifindex: LB1_IF });
    assert_eq!(out, frame("INIT6_OUT"));
    let (v, out) = fx.run("INIT_ACK6_IN", LB1_IF);
    let want = frame("INIT_ACK6_OUT");
    assert_eq!(
        v,
        Verdict::TransmitFirst {
            ifindex: LB0_IF,
            len: want.len()
        }
    );
    assert_eq!(out, want);
}

#[test]
fn a_second_path_to_a_secondary_address_reaches_the_associations_endpoint_both_ways() {
    let mut fx = Fixture::new(&[SEC1, SEC2]).associate();
    fx.run("INIT_ACK_IN", LB1_IF);
    // Round robin would give a new connection endpoint 2: the path is no new connection.
    let (v, out) = fx.run("HB2_IN", LB0_IF);
    assert_eq!(v, Verdict::Transmit { ifindex: LB1_IF });
    assert_eq!(out, frame("HB2_OUT"));
    let (v, out) = fx.run("HB2_ACK_IN", LB1_IF);
    assert_eq!(v, Verdict::Transmit { ifindex: LB0_IF });
    assert_eq!(
        out,
        frame("HB2_ACK_OUT"),
        "the answer leaves from the secondary"
    );
    assert_eq!(fx.engine.conntrack().len(), 2, "one flow per path");
}

#[test]
fn a_path_with_a_tag_no_association_has_opens_nothing() {
    let mut fx = Fixture::new(&[SEC1, SEC2]).associate();
    fx.run("INIT_ACK_IN", LB1_IF);
    let (v, _) = fx.run("HB2_STRANGER_IN", LB0_IF);
    assert_eq!(v, Verdict::Drop(DropReason::SctpNotInit));
}

#[test]
fn a_path_before_the_init_ack_was_seen_opens_nothing() {
    let mut fx = Fixture::new(&[SEC1, SEC2]).associate();
    let (v, _) = fx.run("HB2_IN", LB0_IF);
    assert_eq!(v, Verdict::Drop(DropReason::SctpNotInit));
}

#[test]
fn without_secondary_addresses_the_init_ack_keeps_its_addresses() {
    let mut fx = Fixture::new(&[]).associate();
    let (v, out) = fx.run("INIT_ACK_IN", LB1_IF);
    assert_eq!(v, Verdict::Transmit { ifindex: LB0_IF });
    let input = frame("INIT_ACK_IN");
    assert_eq!(out.len(), input.len());
    // Only the source, the MACs and the CRC changed: the endpoint's addresses remain.
    assert_eq!(out[14 + 20 + 32..], input[14 + 20 + 32..]);
}

#[test]
fn deleting_the_service_forgets_its_associations() {
    let mut fx = Fixture::new(&[SEC1, SEC2]).associate();
    fx.run("INIT_ACK_IN", LB1_IF);
    let snap = fx.snap.clone();
    fx.engine
        .forget_service(&key(VIP, 2020), &Snapshot::default());
    fx.snap = snap;
    let (v, _) = fx.run("HB2_IN", LB0_IF);
    assert_eq!(v, Verdict::Drop(DropReason::SctpNotInit));
}

#[test]
fn every_path_of_an_sctp_association_has_one_owner_worker() {
    let own = Ownership::new(4, PortRange::default(), 0x5c7b);
    let snap = Fixture::new(&[SEC1, SEC2]).snap;
    let mut owners = std::collections::BTreeSet::new();
    for port in 30000..30064u16 {
        let paths: Vec<Option<usize>> = ["INIT_IN", "HB2_IN", "HB2_ACK_IN"]
            .iter()
            .map(|name| {
                let mut f = frame(name);
                let at = if *name == "HB2_ACK_IN" { 36 } else { 34 };
                f[at..at + 2].copy_from_slice(&port.to_be_bytes());
                own.owner(&f, &snap)
            })
            .collect();
        assert!(paths[0].is_some());
        assert!(
            paths.iter().all(|p| *p == paths[0]),
            "port {port}: {paths:?}"
        );
        owners.insert(paths[0]);
    }
    assert!(owners.len() > 1, "associations spread over the workers");
}
