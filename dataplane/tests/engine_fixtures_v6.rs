//! Packet-in / packet-out fixtures for IPv6 services: NAT66 (DNAT, full NAT) and NAT64 (an
//! IPv6 VIP in front of IPv4 endpoints), and ICMPv6 echo to a VIP.
//!
//! The expected frames were produced independently with scapy (every checksum computed by
//! it), not with the engine's own checksum code.

use oxlb_dataplane::engine::Verdict;
use oxlb_dataplane::nat::l4_checksum_ok;
use oxlb_dataplane::snapshot::{NatMode, Proto, ServiceKey};
use oxlb_dataplane::stats::DropReason;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

mod common;
use common::hex;
use common::v6::{Lb, B4, B6, LB0_IF, LB1_IF};

const SYN6_IN: &str = "02000000000102000000000286dd6000000000140640fd000000000000000000000000000002fd0001000000000000000000000000019c4007e4000003e8000000005002faf011e10000";
const SYN6_DNAT_OUT: &str = "0200000001010200000001fe86dd6000000000140640fd000000000000000000000000000002fd0000310000000000000000000000019c401f90000003e8000000005002faf0fb030000";
const SYNACK6_DNAT_IN: &str = "0200000001fe02000000010186dd6000000000140640fd000031000000000000000000000001fd0000000000000000000000000000021f909c4000002328000003e95012fe88d4320000";
const SYNACK6_DNAT_OUT: &str = "02000000000202000000000186dd6000000000140640fd000100000000000000000000000001fd00000000000000000000000000000207e49c4000002328000003e95012fe88eb0f0000";
const SYN6_FULLNAT_OUT: &str = "0200000001010200000001fe86dd6000000000140640fd000100000000000000000000000001fd000031000000000000000000000001afc81f90000003e8000000005002faf0e67c0000";
const SYNACK6_FULLNAT_IN: &str = "0200000001fe02000000010186dd6000000000140640fd000031000000000000000000000001fd0001000000000000000000000000011f90afc800002328000003e95012fe88bfab0000";
const UDP6_IN: &str = "02000000000102000000000286dd60000000000c1140fd000000000000000000000000000002fd000100000000000000000000000001c35007e4000c5acc70696e67";
const UDP6_DNAT_OUT: &str = "0200000001010200000001fe86dd60000000000c1140fd000000000000000000000000000002fd000031000000000000000000000001c3501f90000c43ef70696e67";
const SYN64_OUT: &str = "0200000001010200000001fe0800450000280000400040066facc6121ffec6121f01afc81f90000003e8000000005002faf0168d0000";
const SYNACK64_IN: &str = "0200000001fe0200000001010800450000280000400040066facc6121f01c6121ffe1f90afc800002328000003e95012fe88efbb0000";
const SYNACK64_OUT: &str = "02000000000202000000000186dd6000000000140640fd000100000000000000000000000001fd00000000000000000000000000000207e49c4000002328000003e95012fe88eb0f0000";
const UDP64_OUT: &str =
    "0200000001010200000001fe0800450000200000400040116fa9c6121ffec6121f01afc81f90000c868870696e67";
const UDP64_REPLY_IN: &str =
    "0200000001fe020000000101080045000020000700004011afa2c6121f01c6121ffe1f90afc8000c8682706f6e67";
const UDP64_REPLY_OUT: &str = "02000000000202000000000186dd60000000000c1140fd000100000000000000000000000001fd00000000000000000000000000000207e4c350000c5ac6706f6e67";
const ECHO6_IN: &str = "02000000000102000000000286dd6000000000103a40fd000000000000000000000000000002fd0001000000000000000000000000018000f312000700016162636465666768";
const ECHO6_OUT: &str = "02000000000202000000000186dd6000000000103a40fd000100000000000000000000000001fd0000000000000000000000000000028100f212000700016162636465666768";

const SYN6_ONEARM_OUT: &str = "0200000001010200000001fe86dd6000000000140640fd0000310000000000000000000000fefd000031000000000000000000000001afc81f90000003e8000000005002faf0e64e0000";
const SYNACK6_ONEARM_IN: &str = "0200000001fe02000000010186dd6000000000140640fd000031000000000000000000000001fd0000310000000000000000000000fe1f90afc800002328000003e95012fe88bf7d0000";
const SYN6_DSR_OUT: &str = "0200000001010200000001fe86dd6000000000140640fd000000000000000000000000000002fd0001000000000000000000000000019c4007e4000003e8000000005002faf011e10000";
const SCTP6_INIT_IN: &str = "02000000000102000000000286dd6000000000208440fd000000000000000000000000000002fd0001000000000000000000000000019c4007e400000000d9c65dad01000014000012340000ffff0001000100000001";
const SCTP6_INIT_OUT: &str = "0200000001010200000001fe86dd6000000000208440fd000000000000000000000000000002fd0000310000000000000000000000019c401f9000000000abb2ef7a01000014000012340000ffff0001000100000001";

#[test]
fn an_ipv6_syn_is_rewritten_to_an_ipv6_endpoint_in_dnat_and_its_answer_comes_from_the_vip() {
    let mut lb = Lb::new(Proto::Tcp, NatMode::Dnat, B6.into());
    let (v, out) = lb.run(hex(SYN6_IN), LB0_IF);
    assert_eq!(v, Verdict::Transmit { ifindex: LB1_IF });
    assert_eq!(out, hex(SYN6_DNAT_OUT));
    let (v, out) = lb.run(hex(SYNACK6_DNAT_IN), LB1_IF);
    assert_eq!(v, Verdict::Transmit { ifindex: LB0_IF });
    assert_eq!(out, hex(SYNACK6_DNAT_OUT));
    assert_eq!(lb.engine.conntrack_v6().len(), 1);
    assert_eq!(
        lb.engine.conntrack().len(),
        0,
        "IPv6 flows stay out of the IPv4 table"
    );
}

#[test]
fn an_ipv6_full_nat_flow_leaves_from_the_vip_and_its_answer_returns_to_the_client() {
    let mut lb = Lb::new(Proto::Tcp, NatMode::FullNat, B6.into());
    let (v, out) = lb.run(hex(SYN6_IN), LB0_IF);
    assert_eq!(v, Verdict::Transmit { ifindex: LB1_IF });
    assert_eq!(out, hex(SYN6_FULLNAT_OUT));
    let (v, out) = lb.run(hex(SYNACK6_FULLNAT_IN), LB1_IF);
    assert_eq!(v, Verdict::Transmit { ifindex: LB0_IF });
    assert_eq!(out, hex(SYNACK6_DNAT_OUT));
}

#[test]
fn an_ipv6_udp_datagram_is_rewritten_to_its_endpoint() {
    let mut lb = Lb::new(Proto::Udp, NatMode::Dnat, B6.into());
    let (v, out) = lb.run(hex(UDP6_IN), LB0_IF);
    assert_eq!(v, Verdict::Transmit { ifindex: LB1_IF });
    assert_eq!(out, hex(UDP6_DNAT_OUT));
}

/// A NAT64 service (IPv6 VIP, IPv4 endpoint, full NAT).
fn nat64(proto: Proto) -> Lb {
    Lb::new(proto, NatMode::FullNat, B4.into())
}

#[test]
fn an_ipv6_syn_to_a_nat64_service_leaves_as_ipv4_from_our_own_address() {
    let mut lb = nat64(Proto::Tcp);
    let (v, out) = lb.run(hex(SYN6_IN), LB0_IF);
    let shorter = hex(SYN6_IN).len() - 20;
    assert_eq!(
        v,
        Verdict::TransmitFirst {
            ifindex: LB1_IF,
            len: shorter
        }
    );
    assert_eq!(out, hex(SYN64_OUT));
    assert!(l4_checksum_ok(&out[14..]));
}

#[test]
fn the_ipv4_answer_of_a_nat64_flow_returns_to_the_client_as_ipv6_from_the_vip() {
    let mut lb = nat64(Proto::Tcp);
    lb.run(hex(SYN6_IN), LB0_IF);
    let (v, out) = lb.run(hex(SYNACK64_IN), LB1_IF);
    let longer = hex(SYNACK64_IN).len() + 20;
    assert_eq!(
        v,
        Verdict::TransmitFirst {
            ifindex: LB0_IF,
            len: longer
        }
    );
    assert_eq!(out, hex(SYNACK64_OUT));
    assert_eq!(lb.engine.conntrack_v6().len(), 1);
}

#[test]
fn a_nat64_udp_exchange_is_translated_both_ways() {
    let mut lb = nat64(Proto::Udp);
    let (_, out) = lb.run(hex(UDP6_IN), LB0_IF);
    assert_eq!(out, hex(UDP64_OUT));
    let (v, out) = lb.run(hex(UDP64_REPLY_IN), LB1_IF);
    assert!(matches!(
        v,
        Verdict::TransmitFirst {
            ifindex: LB0_IF,
            ..
        }
    ));
    assert_eq!(out, hex(UDP64_REPLY_OUT));
}

#[test]
fn a_nat64_reply_without_room_to_grow_is_dropped_as_truncated() {
    let mut lb = nat64(Proto::Tcp);
    lb.run(hex(SYN6_IN), LB0_IF);
    let mut exact = hex(SYNACK64_IN);
    let v = lb.engine.process(&mut exact, LB1_IF, &lb.snap, 1);
    assert_eq!(v, Verdict::Drop(DropReason::Truncated));
}

#[test]
fn nat64_without_source_translation_is_refused_as_an_address_family_mix() {
    let mut lb = Lb::new(Proto::Tcp, NatMode::Dnat, B4.into());
    let (v, _) = lb.run(hex(SYN6_IN), LB0_IF);
    assert_eq!(v, Verdict::Drop(DropReason::AddressFamily));
    assert_eq!(lb.engine.conntrack_v6().len(), 0);
}

#[test]
fn an_ipv4_service_with_an_ipv6_endpoint_drops_as_an_address_family_mix() {
    let v4_vip = Ipv4Addr::new(198, 18, 100, 1);
    let key = ServiceKey {
        vip: v4_vip.into(),
        port: 2020,
        proto: Proto::Tcp,
    };
    let mut lb = Lb::new(Proto::Tcp, NatMode::FullNat, B6.into());
    let mut svc = lb.snap.services.values().next().unwrap().clone();
    svc.key = key;
    lb.snap.services = [(key, svc)].into_iter().collect();
    // The IPv4 SYN of the IPv4 fixtures, to 198.18.100.1:2020.
    let syn = "0200000000010200000000020800450000280001400040064aa7c6120002c61264019c4007e4000003e8000000005002faf01cbd0000";
    let (v, _) = lb.run(hex(syn), LB0_IF);
    assert_eq!(v, Verdict::Drop(DropReason::AddressFamily));
    assert_eq!(
        lb.engine.free_snat_ports(v4_vip.into(), Proto::Tcp),
        1000,
        "port returned: the whole SNAT range 45000-45999 is free"
    );
}

#[test]
fn an_icmpv6_echo_request_to_the_vip_is_answered_from_it() {
    let mut lb = Lb::new(Proto::Tcp, NatMode::Dnat, B6.into());
    let (v, out) = lb.run(hex(ECHO6_IN), LB0_IF);
    assert_eq!(v, Verdict::Transmit { ifindex: LB0_IF });
    assert_eq!(out, hex(ECHO6_OUT));
}

#[test]
fn an_ipv6_one_arm_flow_leaves_from_our_own_ipv6_address_toward_the_endpoint() {
    let mut lb = Lb::new(Proto::Tcp, NatMode::OneArm, B6.into());
    let ours: IpAddr = "fd00:31::fe".parse::<Ipv6Addr>().unwrap().into();
    lb.snap.sources.insert(B6.into(), ours);
    lb.snap.own_addrs.insert(ours);
    let (v, out) = lb.run(hex(SYN6_IN), LB0_IF);
    assert_eq!(v, Verdict::Transmit { ifindex: LB1_IF });
    assert_eq!(out, hex(SYN6_ONEARM_OUT));
    let (v, out) = lb.run(hex(SYNACK6_ONEARM_IN), LB1_IF);
    assert_eq!(v, Verdict::Transmit { ifindex: LB0_IF });
    assert_eq!(out, hex(SYNACK6_DNAT_OUT));
}

#[test]
fn an_ipv6_dsr_flow_only_changes_the_macs() {
    let mut lb = Lb::new(Proto::Tcp, NatMode::Dsr, B6.into());
    let (v, out) = lb.run(hex(SYN6_IN), LB0_IF);
    assert_eq!(v, Verdict::Transmit { ifindex: LB1_IF });
    assert_eq!(out, hex(SYN6_DSR_OUT));
}

#[test]
fn an_ipv6_sctp_init_reaches_its_endpoint_with_a_valid_crc() {
    let mut lb = Lb::new(Proto::Sctp, NatMode::Dnat, B6.into());
    let (v, out) = lb.run(hex(SCTP6_INIT_IN), LB0_IF);
    assert_eq!(v, Verdict::Transmit { ifindex: LB1_IF });
    assert_eq!(out, hex(SCTP6_INIT_OUT));
}

/// A frame of `dataplane/tests/fixtures/ipv6_too_big.txt` (scapy): a 1500-byte IPv6 segment
/// to the VIP, and the ICMPv6 "packet too big" (MTU 1400) quoting its first 1232 bytes.
fn too_big_fixture(name: &str) -> Vec<u8> {
    common::fixture(include_str!("fixtures/ipv6_too_big.txt"), name)
}

#[test]
fn an_ipv6_packet_too_big_for_the_endpoint_link_earns_its_sender_a_packet_too_big() {
    let mut lb = Lb::new(Proto::Tcp, NatMode::Dnat, B6.into());
    lb.snap.link_mtus.insert(LB1_IF, 1400);
    let mut buf = too_big_fixture("BIG6_IN");
    let len = buf.len();
    let v = lb.engine.process(&mut buf, LB0_IF, &lb.snap, 1);
    let expected = too_big_fixture("PTB6_OUT");
    assert_eq!(
        v,
        Verdict::TransmitFirst {
            ifindex: LB0_IF,
            len: expected.len()
        }
    );
    assert!(expected.len() < len);
    assert_eq!(&buf[..expected.len()], &expected[..]);
    assert_eq!(lb.engine.counters.frag_needed_sent, 1);
}

/// A frame of `dataplane/tests/fixtures/nat64_too_big.txt` (scapy).
fn nat64_too_big_fixture(name: &str) -> Vec<u8> {
    common::fixture(include_str!("fixtures/nat64_too_big.txt"), name)
}

#[test]
fn an_ipv6_client_packet_too_big_once_translated_earns_a_packet_too_big_20_bytes_larger() {
    let mut lb = Lb::new(Proto::Tcp, NatMode::FullNat, B4.into());
    // 1500 bytes of IPv6 leave as 1480 of IPv4: too big for 1400, and the client may send
    // 1420-byte IPv6 packets.
    lb.snap.link_mtus.insert(LB1_IF, 1400);
    let mut buf = too_big_fixture("BIG6_IN");
    let v = lb.engine.process(&mut buf, LB0_IF, &lb.snap, 1);
    let expected = nat64_too_big_fixture("PTB64_OUT");
    assert_eq!(
        v,
        Verdict::TransmitFirst {
            ifindex: LB0_IF,
            len: expected.len()
        }
    );
    assert_eq!(&buf[..expected.len()], &expected[..]);
    assert_eq!(lb.engine.counters.frag_needed_sent, 1);
}

#[test]
fn an_ipv4_endpoint_reply_too_big_once_translated_earns_a_fragmentation_needed_20_bytes_smaller() {
    let mut lb = nat64(Proto::Tcp);
    let (v, out) = lb.run(hex(SYN6_IN), LB0_IF);
    assert!(matches!(v, Verdict::TransmitFirst { .. }), "{v:?}");
    assert_eq!(out, hex(SYN64_OUT), "the flow leaves from OUR4:45000");
    // 1400 bytes of IPv4 would reach the client as 1420 of IPv6.
    lb.snap.link_mtus.insert(LB0_IF, 1400);
    let mut buf = nat64_too_big_fixture("BIG4_REPLY_IN");
    let v = lb.engine.process(&mut buf, LB1_IF, &lb.snap, 2);
    let expected = nat64_too_big_fixture("FRAG_NEEDED64_OUT");
    assert_eq!(
        v,
        Verdict::TransmitFirst {
            ifindex: LB1_IF,
            len: expected.len()
        }
    );
    assert_eq!(&buf[..expected.len()], &expected[..]);
    assert_eq!(lb.engine.counters.frag_needed_sent, 1);
}

#[test]
fn an_ipv4_endpoint_reply_too_big_without_df_is_dropped_and_counted() {
    let mut lb = nat64(Proto::Tcp);
    lb.run(hex(SYN6_IN), LB0_IF);
    lb.snap.link_mtus.insert(LB0_IF, 1400);
    let mut buf = nat64_too_big_fixture("BIG4_REPLY_IN");
    // DF off (flags byte of the IPv4 header), header checksum adjusted by the same amount.
    buf[14 + 6] = 0;
    let sum = u16::from_be_bytes([buf[14 + 10], buf[14 + 11]]);
    let (folded, carry) = sum.overflowing_add(0x4000);
    let fixed = folded + u16::from(carry);
    buf[14 + 10..14 + 12].copy_from_slice(&fixed.to_be_bytes());
    let v = lb.engine.process(&mut buf, LB1_IF, &lb.snap, 2);
    assert_eq!(v, Verdict::Drop(DropReason::TooBigToForward));
    assert_eq!(lb.engine.counters.frag_needed_sent, 0);
}

fn ext_fixture(name: &str) -> String {
    let frame = common::fixture(include_str!("fixtures/ipv6_extension_headers.txt"), name);
    frame.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn an_ipv6_syn_with_hop_by_hop_and_destination_options_is_rewritten_with_them_in_place() {
    let mut lb = Lb::new(Proto::Tcp, NatMode::Dnat, B6.into());
    let input = hex(&ext_fixture("EXT_SYN6_IN"));
    assert!(l4_checksum_ok(&input[14..]), "scapy's checksum verifies");
    let (v, out) = lb.run(hex(&ext_fixture("EXT_SYN6_IN")), LB0_IF);
    assert_eq!(v, Verdict::Transmit { ifindex: LB1_IF });
    assert_eq!(out, hex(&ext_fixture("EXT_SYN6_DNAT_OUT")));
    let (v, out) = lb.run(hex(&ext_fixture("EXT_SYNACK6_IN")), LB1_IF);
    assert_eq!(v, Verdict::Transmit { ifindex: LB0_IF });
    assert_eq!(out, hex(&ext_fixture("EXT_SYNACK6_OUT")));
}

#[test]
fn an_ipv6_udp_datagram_with_a_finished_routing_header_is_rewritten_to_its_endpoint() {
    let mut lb = Lb::new(Proto::Udp, NatMode::Dnat, B6.into());
    let (v, out) = lb.run(hex(&ext_fixture("RT0_UDP6_IN")), LB0_IF);
    assert_eq!(v, Verdict::Transmit { ifindex: LB1_IF });
    assert_eq!(out, hex(&ext_fixture("RT0_UDP6_DNAT_OUT")));
}

#[test]
fn a_routing_header_with_segments_left_is_dropped_and_counted_as_such() {
    let mut lb = Lb::new(Proto::Udp, NatMode::Dnat, B6.into());
    let (v, _) = lb.run(hex(&ext_fixture("RT1_UDP6_IN")), LB0_IF);
    assert_eq!(v, Verdict::Drop(DropReason::RoutingSegmentsLeft));
    assert_eq!(lb.engine.conntrack_v6().len(), 0);
}

#[test]
fn an_ipv6_first_fragment_is_forwarded_as_the_head_of_its_datagram() {
    // Fragments and their followers are covered in `fragment_fixtures_v6.rs`.
    let mut lb = Lb::new(Proto::Udp, NatMode::Dnat, B6.into());
    let (v, _) = lb.run(hex(&ext_fixture("FRAG_UDP6_IN")), LB0_IF);
    assert_eq!(v, Verdict::Transmit { ifindex: LB1_IF });
}

#[test]
fn nat64_of_a_packet_with_extension_headers_is_dropped_and_counted() {
    let mut lb = nat64(Proto::Udp);
    let (v, _) = lb.run(hex(&ext_fixture("DST_UDP6_IN")), LB0_IF);
    assert_eq!(v, Verdict::Drop(DropReason::Nat64ExtensionHeaders));
    assert_eq!(
        lb.engine.counters.flows_created, 0,
        "no flow is left behind"
    );
    // Without them the same datagram is translated (the drop is about the headers).
    let (_, out) = lb.run(hex(UDP6_IN), LB0_IF);
    assert_eq!(out, hex(UDP64_OUT));
}

#[test]
fn every_truncation_and_byte_change_of_an_extended_packet_leaves_the_engine_standing() {
    let names = ["EXT_SYN6_IN", "RT0_UDP6_IN", "RT1_UDP6_IN", "FRAG_UDP6_IN"];
    let mut forwarded = 0;
    for proto in [Proto::Tcp, Proto::Udp] {
        let mut lb = Lb::new(proto, NatMode::FullNat, B6.into());
        for name in names {
            let frame = hex(&ext_fixture(name));
            let mut variants: Vec<Vec<u8>> =
                (0..frame.len()).map(|n| frame[..n].to_vec()).collect();
            for at in 14..frame.len() {
                for value in [0u8, 1, 0x2b, 0x2c, 0x3c, 0xff] {
                    let mut f = frame.clone();
                    f[at] = value;
                    variants.push(f);
                }
            }
            for mut f in variants {
                let len = f.len();
                // A change that broke the checksum stays broken: only valid packets are
                // held to leaving valid.
                let arrived_valid = len > 14 && l4_checksum_ok(&f[14..]);
                f.resize(len + 64, 0);
                if let Verdict::Transmit { .. } = lb
                    .engine
                    .process_with_room(&mut f, len, LB0_IF, &lb.snap, 1)
                {
                    forwarded += 1;
                    assert!(
                        !arrived_valid || l4_checksum_ok(&f[14..len]),
                        "left invalid: {:02x?}",
                        &f[..len]
                    );
                }
            }
        }
    }
    assert!(forwarded > 100, "only {forwarded} variants forwarded");
}
