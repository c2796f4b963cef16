//! NAT66: `rewrite_v6` against IPv6 packets built independently with scapy (which computes
//! every checksum), byte for byte.

use oxlb_dataplane::nat::{complete_checksum_v6, l4_checksum_ok, rewrite_v6, Rewrite6};
use oxlb_dataplane::snapshot::Proto;
use oxlb_dataplane::wire::WireError;
use std::net::Ipv6Addr;

const CLIENT: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
const VIP: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 1);
const ENDPOINT: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x31, 0, 0, 0, 0, 1);
const SNAT: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x31, 0, 0, 0, 0, 0xfe);

// Built by scapy: client [2001:db8::2], VIP [2001:db8:100::1]:2020, endpoint
// [2001:db8:31::1]:8080, our source toward it [2001:db8:31::fe].
const V6_SYN_IN: &str = "600000000018064020010db800000000000000000000000220010db80100000000000000000000019c4007e4000003e8000000006002faf098c80000020405a0";
const V6_SYN_DNAT: &str = "600000000018064020010db800000000000000000000000220010db80031000000000000000000019c401f90000003e8000000006002faf081eb0000020405a0";
const V6_SYN_FULLNAT: &str = "600000000018064020010db80031000000000000000000fe20010db8003100000000000000000001afc81f90000003e8000000006002faf06d360000020405a0";
const V6_SYNACK_IN: &str = "600000000018063f20010db800310000000000000000000120010db80000000000000000000000021f909c4000002328000003e96012fe885b060000020405b4";
const V6_SYNACK_OUT: &str = "600000000018063f20010db801000000000000000000000120010db800000000000000000000000207e49c4000002328000003e96012fe8871e30000020405b4";
const V6_UDP_IN: &str = "60000000000d114020010db800000000000000000000000220010db8010000000000000000000001c35007e4000dc35970696e6736";
const V6_UDP_DNAT: &str = "60000000000d114020010db800000000000000000000000220010db8003100000000000000000001c3501f90000dac7c70696e6736";
const V6_UDP_REPLY_IN: &str = "60000000000e114020010db800310000000000000000000120010db80000000000000000000000021f90c350000eac53706f6e673621";
const V6_UDP_REPLY_OUT: &str = "60000000000e114020010db801000000000000000000000120010db800000000000000000000000207e4c350000ec330706f6e673621";
const V6_PARTIAL_IN: &str = "600000000028064020010db800000000000000000000000220010db80100000000000000000000019c4107e400000005000000075018faf05ca3000068656c6c6f20776f726c642c207061727469616c";
const V6_PARTIAL_DNAT: &str = "600000000028064020010db800000000000000000000000220010db80031000000000000000000019c411f9000000005000000075018faf0b391000068656c6c6f20776f726c642c207061727469616c";
const V6_UDP_ZERO_IN: &str = "60000000000c114020010db800000000000000000000000220010db8010000000000000000000001c35107e4000c00007a65726f";
const V6_UDP_ZERO_DNAT: &str = "60000000000c114020010db800000000000000000000000220010db8003100000000000000000001c3511f90000cd4797a65726f";

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Rewrites `input` and checks it against `want`, and that it arrived and left valid.
fn rewritten(input: &str, proto: Proto, rw: Rewrite6, want: &str) {
    let mut p = hex(input);
    rewrite_v6(&mut p, proto, rw).unwrap();
    assert_eq!(p, hex(want));
    assert!(l4_checksum_ok(&p));
}

#[test]
fn a_v6_syn_to_the_vip_is_rewritten_to_the_endpoint_byte_for_byte() {
    let input = hex(V6_SYN_IN);
    assert!(l4_checksum_ok(&input));
    assert_eq!(input[8..24], CLIENT.octets(), "from the client");
    rewritten(
        V6_SYN_IN,
        Proto::Tcp,
        Rewrite6::Destination(ENDPOINT, 8080),
        V6_SYN_DNAT,
    );
}

#[test]
fn a_full_nat_source_rewrite_follows_the_destination_rewrite() {
    let mut p = hex(V6_SYN_IN);
    rewrite_v6(&mut p, Proto::Tcp, Rewrite6::Destination(ENDPOINT, 8080)).unwrap();
    rewrite_v6(&mut p, Proto::Tcp, Rewrite6::Source(SNAT, 45000)).unwrap();
    assert_eq!(p, hex(V6_SYN_FULLNAT));
}

#[test]
fn the_endpoints_v6_syn_ack_goes_back_from_the_vip() {
    rewritten(
        V6_SYNACK_IN,
        Proto::Tcp,
        Rewrite6::Source(VIP, 2020),
        V6_SYNACK_OUT,
    );
}

#[test]
fn a_v6_udp_request_and_its_reply_are_rewritten_byte_for_byte() {
    rewritten(
        V6_UDP_IN,
        Proto::Udp,
        Rewrite6::Destination(ENDPOINT, 8080),
        V6_UDP_DNAT,
    );
    rewritten(
        V6_UDP_REPLY_IN,
        Proto::Udp,
        Rewrite6::Source(VIP, 2020),
        V6_UDP_REPLY_OUT,
    );
}

#[test]
fn a_partial_v6_checksum_from_an_offloading_sender_leaves_complete() {
    assert!(
        !l4_checksum_ok(&hex(V6_PARTIAL_IN)),
        "input must be partial"
    );
    rewritten(
        V6_PARTIAL_IN,
        Proto::Tcp,
        Rewrite6::Destination(ENDPOINT, 8080),
        V6_PARTIAL_DNAT,
    );
}

#[test]
fn a_zero_udp_checksum_which_ipv6_forbids_is_computed_on_rewrite() {
    assert!(!l4_checksum_ok(&hex(V6_UDP_ZERO_IN)));
    rewritten(
        V6_UDP_ZERO_IN,
        Proto::Udp,
        Rewrite6::Destination(ENDPOINT, 8080),
        V6_UDP_ZERO_DNAT,
    );
}

#[test]
fn completing_a_v6_checksum_finishes_a_partial_one_and_keeps_a_complete_one() {
    let mut p = hex(V6_PARTIAL_IN);
    complete_checksum_v6(&mut p, Proto::Tcp).unwrap();
    assert!(l4_checksum_ok(&p));
    let mut back = p.clone();
    rewrite_v6(&mut back, Proto::Tcp, Rewrite6::Destination(ENDPOINT, 8080)).unwrap();
    assert_eq!(back, hex(V6_PARTIAL_DNAT));
    let before = p.clone();
    complete_checksum_v6(&mut p, Proto::Tcp).unwrap();
    assert_eq!(p, before);
    let mut z = hex(V6_UDP_ZERO_IN);
    complete_checksum_v6(&mut z, Proto::Udp).unwrap();
    assert!(l4_checksum_ok(&z));
}

#[test]
fn a_next_header_other_than_the_protocol_or_a_cut_packet_is_refused() {
    let mut p = hex(V6_SYN_IN);
    assert_eq!(
        rewrite_v6(&mut p, Proto::Udp, Rewrite6::Source(VIP, 1)),
        Err(WireError::Malformed)
    );
    assert_eq!(p, hex(V6_SYN_IN), "a refused packet is left as it was");
    let mut cut = hex(V6_SYN_IN);
    cut.truncate(50);
    assert_eq!(
        rewrite_v6(&mut cut, Proto::Tcp, Rewrite6::Source(VIP, 1)),
        Err(WireError::Truncated)
    );
}
