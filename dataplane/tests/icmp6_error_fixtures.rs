//! Packet-in / packet-out fixtures for ICMP errors about flows of the IPv6 table: ICMPv6 errors
//! about NAT66 flows from either side, and ICMPv4 errors from the IPv4 endpoint of a NAT64
//! flow, which the IPv6 client must get as ICMPv6.
//!
//! The frames are in `fixtures/icmp6_errors.txt`, built independently with scapy (every
//! checksum computed by it, over whole messages): client [fd00::2], VIP [fd00:100::1]:2020,
//! endpoint [fd00:31::1]:8080 or 198.18.31.1:8080, our IPv4 source 198.18.31.254, SNAT ports
//! from 45000.

use oxlb_dataplane::engine::Verdict;
use oxlb_dataplane::snapshot::{NatMode, Proto};
use oxlb_dataplane::stats::DropReason;

mod common;
use common::v6::{Lb, B1_MAC, B4, B6, LB0_IF, LB1_IF, LB1_MAC};
use std::net::IpAddr;

fn fixture(name: &str) -> Vec<u8> {
    common::fixture(include_str!("fixtures/icmp6_errors.txt"), name)
}

/// This file's fixture table run over the shared IPv6 load balancer.
trait Fixtures {
    /// Runs fixture `name`; the verdict and the frame as it would leave.
    fn run_named(&mut self, name: &str, ingress: u32) -> (Verdict, Vec<u8>);
    fn forwarded(&mut self, name: &str, ingress: u32);
    fn translated(&self) -> u64;
}

impl Fixtures for Lb {
    fn run_named(&mut self, name: &str, ingress: u32) -> (Verdict, Vec<u8>) {
        self.run(fixture(name), ingress)
    }

    /// Runs fixture `name` as a packet of a flow that must be forwarded.
    fn forwarded(&mut self, name: &str, ingress: u32) {
        let (v, _) = self.run_named(name, ingress);
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
    let (_, out) = lb.run_named("UDP_IN", LB0_IF);
    assert_eq!(out, fixture("UDP_DNAT_OUT"), "the flow's own request");
    let (v, out) = lb.run_named("UNREACH_IN", LB1_IF);
    assert_eq!(v, Verdict::Transmit { ifindex: LB0_IF });
    assert_eq!(out, fixture("UNREACH_OUT"));
    assert_eq!(lb.translated(), 1);
}

#[test]
fn a_clients_port_unreachable_about_a_reply_reaches_the_endpoint_quoting_its_own_answer() {
    let mut lb = Lb::new(Proto::Udp, NatMode::Dnat, B6.into());
    lb.forwarded("UDP_IN", LB0_IF);
    let (v, out) = lb.run_named("REPLY_UNREACH_IN", LB0_IF);
    assert_eq!(v, Verdict::Transmit { ifindex: LB1_IF });
    assert_eq!(out, fixture("REPLY_UNREACH_OUT"));
    assert_eq!(lb.translated(), 1);
}

#[test]
fn a_packet_too_big_about_a_full_nat_segment_reaches_the_client_from_the_vip_with_its_mtu() {
    let mut lb = Lb::new(Proto::Tcp, NatMode::FullNat, B6.into());
    lb.forwarded("SYN_IN", LB0_IF);
    let (v, out) = lb.run_named("PTB_IN", LB1_IF);
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
    let (v, out) = lb.run_named("TE_IN", LB0_IF);
    assert_eq!(v, Verdict::Transmit { ifindex: LB1_IF });
    assert_eq!(out, fixture("TE_OUT"));
}

#[test]
fn a_clients_error_about_a_dsr_answer_reaches_the_endpoint_as_it_came_which_holds_the_vip() {
    let mut lb = Lb::new(Proto::Udp, NatMode::Dsr, B6.into());
    lb.forwarded("UDP_IN", LB0_IF);
    // The endpoint answered from VIP:2020 itself, which is what the error quotes.
    let (v, out) = lb.run_named("REPLY_UNREACH_IN", LB0_IF);
    assert_eq!(v, Verdict::Transmit { ifindex: LB1_IF });
    let mut want = fixture("REPLY_UNREACH_IN");
    want[..6].copy_from_slice(&B1_MAC);
    want[6..12].copy_from_slice(&LB1_MAC);
    assert_eq!(out, want);
}

#[test]
fn a_clients_error_about_a_dsr_answer_toward_an_unresolved_endpoint_is_dropped_and_counted() {
    let mut lb = Lb::new(Proto::Udp, NatMode::Dsr, B6.into());
    lb.forwarded("UDP_IN", LB0_IF);
    lb.snap.next_hops.clear();
    // Addressed to the VIP, which the kernel would keep for itself, as for IPv4.
    let (v, _) = lb.run_named("REPLY_UNREACH_IN", LB0_IF);
    assert_eq!(v, Verdict::Drop(DropReason::NextHopUnresolved));
    assert_eq!(lb.translated(), 0);
}

#[test]
fn an_icmpv6_error_about_no_flow_of_ours_is_left_to_the_kernel_untouched() {
    let mut lb = Lb::new(Proto::Udp, NatMode::Dnat, B6.into());
    let (v, out) = lb.run_named("UNREACH_IN", LB1_IF);
    assert_eq!(v, Verdict::Kernel);
    assert_eq!(out, fixture("UNREACH_IN"));
    assert_eq!(lb.translated(), 0);
}

#[test]
fn an_icmpv6_error_about_a_reply_toward_an_unresolved_endpoint_goes_to_the_kernel_translated() {
    let mut lb = Lb::new(Proto::Udp, NatMode::Dnat, B6.into());
    lb.forwarded("UDP_IN", LB0_IF);
    lb.snap.next_hops.clear();
    let (v, out) = lb.run_named("REPLY_UNREACH_IN", LB0_IF);
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
fn a_port_unreachable_quoting_extension_headers_reaches_the_client_quoting_them_in_place() {
    let mut lb = Lb::new(Proto::Udp, NatMode::Dnat, B6.into());
    lb.forwarded("UDP_IN", LB0_IF);
    // The quoted request carries hop-by-hop and destination options before its UDP header.
    let (v, out) = lb.run_named("UNREACH_EXT_IN", LB1_IF);
    assert_eq!(v, Verdict::Transmit { ifindex: LB0_IF });
    assert_eq!(out, fixture("UNREACH_EXT_OUT"));
    assert_eq!(lb.translated(), 1);
}

#[test]
fn an_error_with_its_own_hop_by_hop_header_is_translated_behind_it() {
    let mut lb = Lb::new(Proto::Udp, NatMode::Dnat, B6.into());
    lb.forwarded("UDP_IN", LB0_IF);
    let (v, out) = lb.run_named("UNREACH_OUTER_EXT_IN", LB1_IF);
    assert_eq!(v, Verdict::Transmit { ifindex: LB0_IF });
    assert_eq!(out, fixture("UNREACH_OUTER_EXT_OUT"));
}

#[test]
fn a_packet_too_big_quoting_a_finished_routing_header_reaches_the_client_with_its_segment() {
    let mut lb = Lb::new(Proto::Tcp, NatMode::FullNat, B6.into());
    lb.forwarded("SYN_IN", LB0_IF);
    let (v, out) = lb.run_named("PTB_EXT_IN", LB1_IF);
    assert_eq!(v, Verdict::Transmit { ifindex: LB0_IF });
    // The quoted TCP checksum (over the whole segment) was moved to the client's tuple.
    assert_eq!(out, fixture("PTB_EXT_OUT"));
}

#[test]
fn an_icmpv6_error_quoting_a_packet_cut_inside_its_extension_headers_is_dropped_and_counted() {
    let mut lb = Lb::new(Proto::Udp, NatMode::Dnat, B6.into());
    lb.forwarded("UDP_IN", LB0_IF);
    let (v, out) = lb.run_named("UNREACH_EXT_CUT_IN", LB1_IF);
    assert_eq!(v, Verdict::Drop(DropReason::IcmpQuoteTruncated));
    assert_eq!(out, fixture("UNREACH_EXT_CUT_IN"), "left untouched");
    let dropped = lb.engine.counters.dropped(DropReason::IcmpQuoteTruncated);
    assert_eq!((dropped, lb.translated()), (1, 0));
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
fn an_echo_request_with_extension_headers_is_answered_without_them() {
    let mut lb = Lb::new(Proto::Udp, NatMode::Dnat, B6.into());
    // Hop-by-hop and destination options before the ICMPv6 header.
    let (v, out) = lb.run_named("ECHO_EXT_IN", LB0_IF);
    let want = fixture("ECHO_EXT_OUT");
    assert_eq!(
        v,
        Verdict::TransmitFirst {
            ifindex: LB0_IF,
            len: want.len()
        }
    );
    assert_eq!(out, want);
    assert_eq!(lb.engine.counters.icmp_echo_replies, 1);
}

/// Runs fixture `name` (an ICMPv6 error from the client's side about an answer of a NAT64
/// UDP flow) and checks the IPv4 endpoint gets fixture `want`.
fn reaches_the_nat64_endpoint(lb: &mut Lb, name: &str, want: &str) {
    let (v, out) = lb.run_named(name, LB0_IF);
    let want = fixture(want);
    assert_eq!(
        v,
        Verdict::TransmitFirst {
            ifindex: LB1_IF,
            len: want.len()
        },
        "{name}"
    );
    assert_eq!(out, want, "{name}");
}

#[test]
fn a_clients_port_unreachable_about_a_nat64_answer_reaches_the_endpoint_as_icmpv4_from_us() {
    let mut lb = Lb::new(Proto::Udp, NatMode::FullNat, B4.into());
    lb.forwarded("UDP_IN", LB0_IF);
    // Quotes VIP:2020 -> client:50000, the flow's answer as we sent it; the endpoint gets it
    // from our address, quoting its own answer to our port.
    reaches_the_nat64_endpoint(&mut lb, "REPLY_UNREACH_IN", "UNREACH46_OUT");
    assert_eq!(lb.translated(), 1);
}

#[test]
fn time_exceeded_and_parameter_problems_about_a_nat64_answer_map_as_rfc_7915_says() {
    let mut lb = Lb::new(Proto::Udp, NatMode::FullNat, B4.into());
    lb.forwarded("UDP_IN", LB0_IF);
    reaches_the_nat64_endpoint(&mut lb, "TE46_IN", "TE46_OUT");
    // The hop limit (IPv6 byte 7) is the TTL (IPv4 byte 8).
    reaches_the_nat64_endpoint(&mut lb, "PARAM46_IN", "PARAM46_OUT");
    // An unrecognised next header is a protocol unreachable.
    reaches_the_nat64_endpoint(&mut lb, "NEXTHDR46_IN", "NEXTHDR46_OUT");
    assert_eq!(lb.translated(), 3);
}

#[test]
fn an_icmpv6_error_without_an_icmpv4_counterpart_about_a_nat64_answer_is_dropped_and_counted() {
    let mut lb = Lb::new(Proto::Udp, NatMode::FullNat, B4.into());
    lb.forwarded("UDP_IN", LB0_IF);
    // A pointer at the flow label, an unrecognised option, a source failing a policy.
    for name in ["FLOWLABEL46_IN", "OPTION46_IN", "POLICY46_IN"] {
        let (v, out) = lb.run_named(name, LB0_IF);
        assert_eq!(v, Verdict::Drop(DropReason::IcmpUntranslatable), "{name}");
        assert_eq!(out, fixture(name), "{name} left untouched");
    }
    let dropped = lb.engine.counters.dropped(DropReason::IcmpUntranslatable);
    assert_eq!((dropped, lb.translated()), (3, 0));
}

#[test]
fn a_packet_too_big_about_a_nat64_answer_becomes_fragmentation_needed_20_bytes_smaller() {
    let mut lb = Lb::new(Proto::Tcp, NatMode::FullNat, B4.into());
    lb.forwarded("SYN_IN", LB0_IF);
    // 1232 bytes of a 1500-byte answer quoted; cut to 576 bytes as ICMPv4, MTU 1400 - 20.
    let (_, out) = lb.run_named("PTB46_IN", LB0_IF);
    assert_eq!(out.len(), 14 + 576);
    assert_eq!(out, fixture("PTB46_OUT"));
}

#[test]
fn a_nat64_fragmentation_needed_never_exceeds_the_links_on_the_way() {
    // The endpoint's link is the narrower: 1300.
    let mut lb = Lb::new(Proto::Tcp, NatMode::FullNat, B4.into())
        .link_mtu(LB1_IF, 1300)
        .link_mtu(LB0_IF, 1400);
    lb.forwarded("SYN_IN", LB0_IF);
    let (_, out) = lb.run_named("PTB46_IN", LB0_IF);
    assert_eq!(out, fixture("PTB46_CAPPED_OUT"));
    // The client's: 1320, which carries 1300 bytes of IPv4 as IPv6.
    let mut lb = Lb::new(Proto::Tcp, NatMode::FullNat, B4.into()).link_mtu(LB0_IF, 1320);
    lb.forwarded("SYN_IN", LB0_IF);
    let (_, out) = lb.run_named("PTB46_IN", LB0_IF);
    assert_eq!(out, fixture("PTB46_CAPPED_OUT"));
}

#[test]
fn a_corrupt_icmpv6_error_about_a_nat64_answer_is_not_given_a_sound_icmpv4_checksum() {
    let mut lb = Lb::new(Proto::Udp, NatMode::FullNat, B4.into());
    lb.forwarded("UDP_IN", LB0_IF);
    let mut frame = fixture("REPLY_UNREACH_IN");
    // A bit flipped in the quoted payload, which the ICMPv6 checksum covers.
    let last = frame.len() - 1;
    frame[last] ^= 1;
    let v = lb.engine.process(&mut frame, LB0_IF, &lb.snap, 1);
    assert_eq!(v, Verdict::Drop(DropReason::Malformed));
    assert_eq!(lb.translated(), 0);
}

#[test]
fn an_icmpv6_error_about_a_nat64_answer_toward_an_unresolved_endpoint_goes_to_the_kernel() {
    let mut lb = Lb::new(Proto::Udp, NatMode::FullNat, B4.into());
    lb.forwarded("UDP_IN", LB0_IF);
    lb.snap.next_hops.clear();
    let (v, out) = lb.run_named("REPLY_UNREACH_IN", LB0_IF);
    assert_eq!(v, Verdict::Kernel);
    // The kernel gets the IPv4 packet, which says its own length.
    let want = fixture("UNREACH46_OUT");
    assert_eq!(out[12..want.len()], want[12..]);
}

#[test]
fn a_port_unreachable_from_a_nat64_endpoint_reaches_the_client_as_icmpv6_from_the_vip() {
    let mut lb = Lb::new(Proto::Udp, NatMode::FullNat, B4.into());
    lb.forwarded("UDP_IN", LB0_IF);
    let (v, out) = lb.run_named("UNREACH64_IN", LB1_IF);
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
fn a_corrupt_icmpv4_error_from_a_nat64_endpoint_is_not_given_a_sound_icmpv6_checksum() {
    let mut lb = Lb::new(Proto::Udp, NatMode::FullNat, B4.into());
    lb.forwarded("UDP_IN", LB0_IF);
    let mut frame = fixture("UNREACH64_IN");
    // A bit flipped in the quoted payload, which the ICMPv4 checksum covers.
    let last = frame.len() - 1;
    frame[last] ^= 1;
    let (v, _) = lb.run(frame, LB1_IF);
    assert_eq!(v, Verdict::Drop(DropReason::Malformed));
    assert_eq!(lb.translated(), 0);
}

#[test]
fn a_fragmentation_needed_about_a_nat64_segment_becomes_a_packet_too_big_20_bytes_larger() {
    let mut lb = Lb::new(Proto::Tcp, NatMode::FullNat, B4.into());
    lb.forwarded("SYN_IN", LB0_IF);
    let (v, out) = lb.run_named("FRAG64_IN", LB1_IF);
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
    let (_, out) = lb.run_named("FRAG64_IN", LB1_IF);
    assert_eq!(out, fixture("PTB64_CAPPED_OUT"));
}

#[test]
fn an_icmpv4_error_without_an_icmpv6_counterpart_is_left_to_the_kernel_untouched() {
    let mut lb = Lb::new(Proto::Udp, NatMode::FullNat, B4.into());
    lb.forwarded("UDP_IN", LB0_IF);
    let (v, out) = lb.run_named("CUTOFF64_IN", LB1_IF);
    assert_eq!(v, Verdict::Kernel);
    assert_eq!(out, fixture("CUTOFF64_IN"));
    assert_eq!(lb.translated(), 0);
}

#[test]
fn an_icmpv4_error_about_no_nat64_flow_is_left_to_the_kernel() {
    let mut lb = Lb::new(Proto::Udp, NatMode::FullNat, B4.into());
    let (v, out) = lb.run_named("UNREACH64_IN", LB1_IF);
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
        ("UNREACH_EXT_IN", LB1_IF),
        ("PTB_EXT_IN", LB1_IF),
        ("TE46_IN", LB0_IF),
        ("PTB46_IN", LB0_IF),
    ];
    for round in 0..3000 {
        let (name, ingress) = cases[round % cases.len()];
        let nat64 = name.contains("64") || name.contains("46");
        let proto = if name.contains("UNREACH") || name.starts_with("TE46") {
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
        lb.run_named(
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
