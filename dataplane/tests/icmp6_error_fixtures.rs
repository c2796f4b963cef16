//! Packet-in / packet-out fixtures for ICMP errors about flows of the IPv6 table: ICMPv6 errors
//! about NAT66 flows from either side, and ICMPv4 errors from the IPv4 endpoint of a NAT64
//! flow, which the IPv6 client must get as ICMPv6.
//!
//! The frames are in `fixtures/icmp6_errors.txt`, built independently with scapy (every
//! checksum computed by it, over whole messages): client [fd00::2], VIP [fd00:100::1]:2020,
//! endpoint [fd00:31::1]:8080 or 198.18.31.1:8080, our IPv4 source 198.18.31.254, SNAT ports
//! from 45000.

use oxlb_dataplane::engine::{Engine, EngineConfig, Verdict};
use oxlb_dataplane::select::Algorithm;
use oxlb_dataplane::snapshot::{
    Endpoint, NatMode, NextHop, PortRange, Proto, Service, ServiceKey, Snapshot,
};
use oxlb_dataplane::stats::DropReason;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

mod common;

const LB0_IF: u32 = 2;
const LB1_IF: u32 = 3;
const LB1_MAC: [u8; 6] = [2, 0, 0, 0, 1, 0xfe];
const B1_MAC: [u8; 6] = [2, 0, 0, 0, 1, 1];
const VIP: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 1);
const B6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x31, 0, 0, 0, 0, 0, 1);
const B4: Ipv4Addr = Ipv4Addr::new(198, 18, 31, 1);
const OUR4: Ipv4Addr = Ipv4Addr::new(198, 18, 31, 254);

fn fixture(name: &str) -> Vec<u8> {
    common::fixture(include_str!("fixtures/icmp6_errors.txt"), name)
}

/// One IPv6 service on port 2020 with one endpoint on 8080 whose next hop is known.
struct Lb {
    snap: Snapshot,
    engine: Engine,
}

impl Lb {
    fn new(proto: Proto, mode: NatMode, endpoint: IpAddr) -> Lb {
        let key = ServiceKey {
            vip: VIP.into(),
            port: 2020,
            proto,
        };
        let ep = Endpoint {
            addr: endpoint,
            port: 8080,
            weight: 1,
        };
        let svc = Service::new(
            key,
            "icmp6".into(),
            mode,
            Algorithm::RoundRobin,
            vec![ep],
            Duration::from_secs(1800),
        )
        .unwrap();
        let mut snap = Snapshot::default();
        snap.services.insert(key, svc);
        snap.vips.insert(VIP.into());
        snap.next_hops.insert(
            endpoint,
            NextHop {
                ifindex: LB1_IF,
                src_mac: LB1_MAC,
                dst_mac: B1_MAC,
            },
        );
        if endpoint.is_ipv4() {
            snap.sources.insert(endpoint, OUR4.into());
            snap.own_addrs.insert(OUR4.into());
        }
        let engine = Engine::with_config(EngineConfig {
            conntrack_capacity: 16,
            conntrack_capacity_v6: 16,
            worker: 0,
            workers: 1,
            snat_ports: PortRange {
                first: 45000,
                last: 45999,
            },
        });
        Lb { snap, engine }
    }

    fn link_mtu(mut self, ifindex: u32, mtu: u16) -> Lb {
        self.snap.link_mtus.insert(ifindex, mtu);
        self
    }

    /// Runs fixture `name` through the engine (with room to grow after it); returns the
    /// verdict and the frame as it would leave.
    fn run(&mut self, name: &str, ingress: u32) -> (Verdict, Vec<u8>) {
        let mut buf = fixture(name);
        let len = buf.len();
        buf.resize(len + 64, 0);
        let v = self
            .engine
            .process_with_room(&mut buf, len, ingress, &self.snap, 1);
        let out_len = match v {
            Verdict::TransmitFirst { len, .. } => len,
            _ => len,
        };
        buf.truncate(out_len);
        (v, buf)
    }

    /// Runs fixture `name` as a packet of a flow that must be forwarded.
    fn forwarded(&mut self, name: &str, ingress: u32) {
        let (v, _) = self.run(name, ingress);
        assert!(
            matches!(v, Verdict::Transmit { .. } | Verdict::TransmitFirst { .. }),
            "{name}: {v:?}"
        );
    }

    fn translated(&self) -> u64 {
        self.engine.counters.icmp_errors_translated
    }
}

#[test]
fn a_port_unreachable_from_a_dnat_endpoint_reaches_the_client_from_the_vip_quoting_its_request() {
    let mut lb = Lb::new(Proto::Udp, NatMode::Dnat, B6.into());
    let (_, out) = lb.run("UDP_IN", LB0_IF);
    assert_eq!(out, fixture("UDP_DNAT_OUT"), "the flow's own request");
    let (v, out) = lb.run("UNREACH_IN", LB1_IF);
    assert_eq!(v, Verdict::Transmit { ifindex: LB0_IF });
    assert_eq!(out, fixture("UNREACH_OUT"));
    assert_eq!(lb.translated(), 1);
}

#[test]
fn a_clients_port_unreachable_about_a_reply_reaches_the_endpoint_quoting_its_own_answer() {
    let mut lb = Lb::new(Proto::Udp, NatMode::Dnat, B6.into());
    lb.forwarded("UDP_IN", LB0_IF);
    let (v, out) = lb.run("REPLY_UNREACH_IN", LB0_IF);
    assert_eq!(v, Verdict::Transmit { ifindex: LB1_IF });
    assert_eq!(out, fixture("REPLY_UNREACH_OUT"));
    assert_eq!(lb.translated(), 1);
}

#[test]
fn a_packet_too_big_about_a_full_nat_segment_reaches_the_client_from_the_vip_with_its_mtu() {
    let mut lb = Lb::new(Proto::Tcp, NatMode::FullNat, B6.into());
    lb.forwarded("SYN_IN", LB0_IF);
    let (v, out) = lb.run("PTB_IN", LB1_IF);
    assert_eq!(v, Verdict::Transmit { ifindex: LB0_IF });
    // 1232 quoted bytes: the quoted TCP checksum (over the whole segment) was updated too.
    assert_eq!(out.len(), 14 + 1280);
    assert_eq!(out, fixture("PTB_OUT"));
    assert_eq!(lb.translated(), 1);
}

#[test]
fn a_time_exceeded_about_a_full_nat_reply_reaches_the_endpoint_quoting_its_answer_to_our_port() {
    let mut lb = Lb::new(Proto::Tcp, NatMode::FullNat, B6.into());
    lb.forwarded("SYN_IN", LB0_IF);
    let (v, out) = lb.run("TE_IN", LB0_IF);
    assert_eq!(v, Verdict::Transmit { ifindex: LB1_IF });
    assert_eq!(out, fixture("TE_OUT"));
}

#[test]
fn a_clients_error_about_a_dsr_answer_reaches_the_endpoint_as_it_came_which_holds_the_vip() {
    let mut lb = Lb::new(Proto::Udp, NatMode::Dsr, B6.into());
    lb.forwarded("UDP_IN", LB0_IF);
    // The endpoint answered from VIP:2020 itself, which is what the error quotes.
    let (v, out) = lb.run("REPLY_UNREACH_IN", LB0_IF);
    assert_eq!(v, Verdict::Transmit { ifindex: LB1_IF });
    let mut want = fixture("REPLY_UNREACH_IN");
    want[..6].copy_from_slice(&B1_MAC);
    want[6..12].copy_from_slice(&LB1_MAC);
    assert_eq!(out, want);
}

#[test]
fn an_icmpv6_error_about_no_flow_of_ours_is_left_to_the_kernel_untouched() {
    let mut lb = Lb::new(Proto::Udp, NatMode::Dnat, B6.into());
    let (v, out) = lb.run("UNREACH_IN", LB1_IF);
    assert_eq!(v, Verdict::Kernel);
    assert_eq!(out, fixture("UNREACH_IN"));
    assert_eq!(lb.translated(), 0);
}

#[test]
fn an_icmpv6_error_about_a_reply_toward_an_unresolved_endpoint_goes_to_the_kernel_translated() {
    let mut lb = Lb::new(Proto::Udp, NatMode::Dnat, B6.into());
    lb.forwarded("UDP_IN", LB0_IF);
    lb.snap.next_hops.clear();
    let (v, out) = lb.run("REPLY_UNREACH_IN", LB0_IF);
    assert_eq!(v, Verdict::Kernel);
    // The kernel gets the IP packet: everything after the MACs is already right.
    assert_eq!(out[12..], fixture("REPLY_UNREACH_OUT")[12..]);
}

#[test]
fn an_icmpv6_error_quoting_too_little_of_its_packet_is_not_translated() {
    let mut lb = Lb::new(Proto::Udp, NatMode::Dnat, B6.into());
    lb.forwarded("UDP_IN", LB0_IF);
    // The quote cut to the IPv6 header and 4 bytes of UDP (the ports, not the checksum).
    let mut cut = fixture("UNREACH_IN");
    cut.truncate(14 + 40 + 8 + 40 + 4);
    cut[18..20].copy_from_slice(&52u16.to_be_bytes());
    let len = cut.len();
    let v = lb.engine.process(&mut cut, LB1_IF, &lb.snap, 1);
    assert_eq!(v, Verdict::Drop(DropReason::NoFlowNoService));
    assert_eq!(cut.len(), len);
    assert_eq!(lb.translated(), 0);
}

#[test]
fn echo_requests_to_the_vip_are_still_answered_beside_error_translation() {
    let mut lb = Lb::new(Proto::Udp, NatMode::Dnat, B6.into());
    // An echo request from the client (its ICMPv6 layout as in the echo fixtures).
    let mut echo = fixture("UDP_IN");
    let icmp = [0x80u8, 0, 0, 0, 0, 7, 0, 1];
    echo.truncate(14 + 40);
    echo.extend_from_slice(&icmp);
    echo[14 + 4..14 + 6].copy_from_slice(&8u16.to_be_bytes());
    echo[14 + 6] = 58;
    let v = lb.engine.process(&mut echo, LB0_IF, &lb.snap, 1);
    assert_eq!(v, Verdict::Transmit { ifindex: LB0_IF });
    assert_eq!(echo[14 + 40], 129, "an echo reply");
    assert_eq!(lb.engine.counters.icmp_echo_replies, 1);
}

#[test]
fn an_icmpv6_error_from_the_client_about_a_nat64_reply_is_left_to_the_kernel() {
    let mut lb = Lb::new(Proto::Udp, NatMode::FullNat, B4.into());
    lb.forwarded("UDP_IN", LB0_IF);
    // Quotes VIP:2020 -> client:50000, the flow's reply as we sent it; its endpoint speaks
    // only ICMPv4.
    let (v, out) = lb.run("REPLY_UNREACH_IN", LB0_IF);
    assert_eq!(v, Verdict::Kernel);
    assert_eq!(out, fixture("REPLY_UNREACH_IN"));
    assert_eq!(lb.translated(), 0);
}

#[test]
fn a_port_unreachable_from_a_nat64_endpoint_reaches_the_client_as_icmpv6_from_the_vip() {
    let mut lb = Lb::new(Proto::Udp, NatMode::FullNat, B4.into());
    lb.forwarded("UDP_IN", LB0_IF);
    let (v, out) = lb.run("UNREACH64_IN", LB1_IF);
    let want = fixture("UNREACH64_OUT");
    assert_eq!(
        v,
        Verdict::TransmitFirst {
            ifindex: LB0_IF,
            len: want.len()
        }
    );
    assert_eq!(out, want);
    assert_eq!(lb.translated(), 1);
}

#[test]
fn a_fragmentation_needed_about_a_nat64_segment_becomes_a_packet_too_big_20_bytes_larger() {
    let mut lb = Lb::new(Proto::Tcp, NatMode::FullNat, B4.into());
    lb.forwarded("SYN_IN", LB0_IF);
    let (v, out) = lb.run("FRAG64_IN", LB1_IF);
    assert!(
        matches!(
            v,
            Verdict::TransmitFirst {
                ifindex: LB0_IF,
                ..
            }
        ),
        "{v:?}"
    );
    assert_eq!(out, fixture("PTB64_OUT"));
}

#[test]
fn a_nat64_packet_too_big_never_exceeds_the_clients_own_link() {
    let mut lb = Lb::new(Proto::Tcp, NatMode::FullNat, B4.into()).link_mtu(LB0_IF, 1400);
    lb.forwarded("SYN_IN", LB0_IF);
    let (_, out) = lb.run("FRAG64_IN", LB1_IF);
    assert_eq!(out, fixture("PTB64_CAPPED_OUT"));
}

#[test]
fn an_icmpv4_error_without_an_icmpv6_counterpart_is_left_to_the_kernel_untouched() {
    let mut lb = Lb::new(Proto::Udp, NatMode::FullNat, B4.into());
    lb.forwarded("UDP_IN", LB0_IF);
    let (v, out) = lb.run("CUTOFF64_IN", LB1_IF);
    assert_eq!(v, Verdict::Kernel);
    assert_eq!(out, fixture("CUTOFF64_IN"));
    assert_eq!(lb.translated(), 0);
}

#[test]
fn an_icmpv4_error_about_no_nat64_flow_is_left_to_the_kernel() {
    let mut lb = Lb::new(Proto::Udp, NatMode::FullNat, B4.into());
    let (v, out) = lb.run("UNREACH64_IN", LB1_IF);
    assert_eq!(v, Verdict::Kernel);
    assert_eq!(out, fixture("UNREACH64_IN"));
}

#[test]
fn a_nat64_icmp_error_without_room_to_grow_is_dropped_as_truncated() {
    let mut lb = Lb::new(Proto::Udp, NatMode::FullNat, B4.into());
    lb.forwarded("UDP_IN", LB0_IF);
    let mut exact = fixture("UNREACH64_IN");
    let v = lb.engine.process(&mut exact, LB1_IF, &lb.snap, 1);
    assert_eq!(v, Verdict::Drop(DropReason::Truncated));
    assert_eq!(exact, fixture("UNREACH64_IN"), "left untouched");
}

#[test]
fn corrupted_and_cut_errors_never_panic_and_what_leaves_fits_its_buffer() {
    let mut rng = common::Rng(0x1c6e);
    let cases = [
        ("UNREACH_IN", LB1_IF),
        ("REPLY_UNREACH_IN", LB0_IF),
        ("PTB_IN", LB1_IF),
        ("TE_IN", LB0_IF),
        ("UNREACH64_IN", LB1_IF),
        ("FRAG64_IN", LB1_IF),
    ];
    for round in 0..3000 {
        let (name, ingress) = cases[round % cases.len()];
        let nat64 = name.contains("64");
        let proto = if name.contains("UNREACH") {
            Proto::Udp
        } else {
            Proto::Tcp
        };
        let (mode, endpoint): (NatMode, IpAddr) = match (nat64, rng.below(2)) {
            (true, _) => (NatMode::FullNat, B4.into()),
            (false, 0) => (NatMode::Dnat, B6.into()),
            (false, _) => (NatMode::FullNat, B6.into()),
        };
        let mut lb = Lb::new(proto, mode, endpoint);
        lb.run(
            if proto == Proto::Udp {
                "UDP_IN"
            } else {
                "SYN_IN"
            },
            LB0_IF,
        );
        let mut frame = fixture(name);
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(frame.len() as u64) as usize;
            frame[at] = rng.next() as u8;
        }
        frame.truncate(rng.below(frame.len() as u64 + 1) as usize);
        let len = frame.len();
        frame.resize(len + rng.below(64) as usize, 0);
        let v = lb
            .engine
            .process_with_room(&mut frame, len, ingress, &lb.snap, 1);
        if let Verdict::TransmitFirst { len, .. } = v {
            assert!(len <= frame.len(), "{name} round {round}: {v:?}");
        }
    }
}
