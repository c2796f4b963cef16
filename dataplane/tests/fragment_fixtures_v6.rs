//! Packet-in / packet-out fixtures for IPv6 fragments: the first fragment of a datagram is
//! handled as a packet of its flow with its Fragment header kept in place, and the later ones
//! follow it (same addresses and MACs, same way out).
//!
//! The frames are in `fixtures/ipv6_fragments.txt`, built with scapy: each datagram was
//! built whole (scapy computing its UDP checksum over all of it, with the addresses and ports
//! it must have) and cut by `fragment6` into 1280-byte packets, so the expected checksums never
//! come from the engine's own code.

use oxlb_dataplane::engine::Verdict;
use oxlb_dataplane::snapshot::{NatMode, Proto};
use oxlb_dataplane::stats::DropReason;

mod common;
use common::v6::{Lb, B1_MAC, B4, B6, LB0_IF, LB1_IF, LB1_MAC, OUR4};

fn frame(name: &str) -> Vec<u8> {
    common::fixture(include_str!("fixtures/ipv6_fragments.txt"), name)
}

/// Runs `{prefix}{i}_IN` for every `i` in `pieces`, each expected to leave by `egress` as
/// `{prefix}{i}_{out}`.
fn expect(lb: &mut Lb, prefix: &str, pieces: usize, out: &str, ingress: u32, egress: u32) {
    for i in 0..pieces {
        let (v, got) = lb.run(frame(&format!("{prefix}{i}_IN")), ingress);
        assert_eq!(v, Verdict::Transmit { ifindex: egress }, "{prefix}{i}");
        assert!(
            got == frame(&format!("{prefix}{i}_{out}")),
            "{prefix}{i} left as {out} differently"
        );
    }
}

#[test]
fn the_fragments_of_an_ipv6_datagram_and_of_its_answer_follow_their_first_in_nat66_dnat() {
    let mut lb = Lb::new(Proto::Udp, NatMode::Dnat, B6.into());
    expect(&mut lb, "FRAG6_", 3, "DNAT_OUT", LB0_IF, LB1_IF);
    assert_eq!(
        lb.engine.conntrack_v6().len(),
        1,
        "one flow for the datagram"
    );
    // The endpoint's fragmented answer goes back to the client from the VIP.
    expect(&mut lb, "REPLY6_", 2, "DNAT_OUT", LB1_IF, LB0_IF);
    assert_eq!(lb.engine.counters.fragments_followed, 3);
    assert_eq!(lb.engine.counters.dropped_total(), 0);
}

#[test]
fn the_fragments_of_an_ipv6_datagram_follow_their_first_in_full_nat() {
    let mut lb = Lb::new(Proto::Udp, NatMode::FullNat, B6.into());
    expect(&mut lb, "FRAG6_", 3, "FULLNAT_OUT", LB0_IF, LB1_IF);
    assert_eq!(lb.engine.counters.fragments_followed, 2);
}

#[test]
fn the_fragments_of_an_ipv6_datagram_in_dsr_only_change_their_macs() {
    let mut lb = Lb::new(Proto::Udp, NatMode::Dsr, B6.into());
    for i in 0..3 {
        let name = format!("FRAG6_{i}_IN");
        let (v, got) = lb.run(frame(&name), LB0_IF);
        assert_eq!(v, Verdict::Transmit { ifindex: LB1_IF }, "{name}");
        let mut want = frame(&name);
        want[0..6].copy_from_slice(&B1_MAC);
        want[6..12].copy_from_slice(&LB1_MAC);
        assert!(got == want, "{name} changed beyond its MACs");
    }
}

#[test]
fn a_fragment_header_behind_a_destination_options_header_is_followed_with_both_in_place() {
    let mut lb = Lb::new(Proto::Udp, NatMode::Dnat, B6.into());
    expect(&mut lb, "DSTFRAG6_", 3, "DNAT_OUT", LB0_IF, LB1_IF);
    assert_eq!(lb.engine.counters.fragments_followed, 2);
}

#[test]
fn a_later_ipv6_fragment_without_its_first_is_dropped_and_counted() {
    let mut lb = Lb::new(Proto::Udp, NatMode::Dnat, B6.into());
    let (v, _) = lb.run(frame("FRAG6_1_IN"), LB0_IF);
    assert_eq!(v, Verdict::Drop(DropReason::Fragment));
    assert_eq!(lb.engine.counters.dropped(DropReason::Fragment), 1);
    // Another datagram's first fragment does not make it followable either.
    expect(&mut lb, "DSTFRAG6_", 1, "DNAT_OUT", LB0_IF, LB1_IF);
    let (v, _) = lb.run(frame("FRAG6_2_IN"), LB0_IF);
    assert_eq!(v, Verdict::Drop(DropReason::Fragment));
    assert_eq!(lb.engine.counters.fragments_followed, 0);
}

#[test]
fn nat64_of_a_fragmented_ipv6_datagram_is_refused_and_counted_before_a_flow_exists() {
    let mut lb = Lb::new(Proto::Udp, NatMode::FullNat, B4.into());
    let (v, _) = lb.run(frame("FRAG6_0_IN"), LB0_IF);
    assert_eq!(v, Verdict::Drop(DropReason::Nat64ExtensionHeaders));
    assert_eq!(
        lb.engine.counters.flows_created, 0,
        "no flow is left behind"
    );
    assert_eq!(lb.engine.conntrack_v6().len(), 0);
    // Nothing was remembered for the later fragments: they are dropped as fragments.
    let (v, _) = lb.run(frame("FRAG6_1_IN"), LB0_IF);
    assert_eq!(v, Verdict::Drop(DropReason::Fragment));
    assert_eq!(
        lb.engine.free_snat_ports(OUR4.into(), Proto::Udp),
        1000,
        "no SNAT port is held"
    );
}

#[test]
fn an_atomic_ipv6_fragment_is_handled_as_a_whole_packet() {
    let mut lb = Lb::new(Proto::Udp, NatMode::Dnat, B6.into());
    let (v, got) = lb.run(frame("ATOMIC6_IN"), LB0_IF);
    assert_eq!(v, Verdict::Transmit { ifindex: LB1_IF });
    assert_eq!(got, frame("ATOMIC6_DNAT_OUT"));
    assert!(oxlb_dataplane::nat::l4_checksum_ok(&got[14..]));
    assert_eq!(lb.engine.counters.fragments_followed, 0);
}

#[test]
fn every_truncation_and_byte_change_of_an_ipv6_fragment_leaves_the_engine_standing() {
    let names = ["FRAG6_0_IN", "FRAG6_1_IN", "DSTFRAG6_0_IN", "DSTFRAG6_2_IN"];
    for mode in [NatMode::Dnat, NatMode::FullNat, NatMode::Dsr] {
        let mut lb = Lb::new(Proto::Udp, mode, B6.into());
        for name in names {
            let whole = frame(name);
            // The headers and the start of the transport header are where parsing happens.
            let head = whole.len().min(14 + 40 + 8 + 8 + 16);
            let mut variants: Vec<Vec<u8>> = (0..head).map(|n| whole[..n].to_vec()).collect();
            for at in 14..head {
                for value in [0u8, 1, 0x2c, 0x3c, 0xff] {
                    let mut f = whole.clone();
                    f[at] = value;
                    variants.push(f);
                }
            }
            for mut f in variants {
                let len = f.len();
                f.resize(len + 64, 0);
                lb.engine
                    .process_with_room(&mut f, len, LB0_IF, &lb.snap, 1);
            }
        }
    }
}
