//! Packet-in / packet-out fixture tables for the engine, byte-exact.
//!
//! Expected frames were produced independently (scapy computing every checksum), so these
//! tests do not share the engine's own checksum code.

use oxlb_dataplane::engine::{Engine, Verdict};
use oxlb_dataplane::nat::l4_checksum_ok;
use oxlb_dataplane::snapshot::{
    Endpoint, NatMode, NextHop, Proto, Selection, Service, ServiceKey, Snapshot,
};
use oxlb_dataplane::stats::DropReason;
use std::net::Ipv4Addr;
use std::time::Duration;

const LB0_IF: u32 = 2;
const LB1_IF: u32 = 3;
const LB1_MAC: [u8; 6] = [2, 0, 0, 0, 1, 0xfe];
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);

const SYN_IN: &str = "0200000000010200000000020800450000280001400040064aa7c6120002c61264019c4007e4000003e8000000005002faf01cbd0000";
const SYN_OUT: &str = "0200000001010200000001fe0800450000280001400040068fa7c6120002c6121f019c401f90000003e8000000005002faf04a110000";
const PARTIAL_IN: &str = "02000000000102000000000208004500003c0002400040064a92c6120002c61264019c4107e400000005000000005002faf0f056000068656c6c6f20776f726c642c207061727469616c";
const PARTIAL_OUT: &str = "0200000001010200000001fe08004500003c0002400040068f92c6120002c6121f019c411f9000000005000000005002faf0642c000068656c6c6f20776f726c642c207061727469616c";
const REPLY_IN: &str = "0200000001fe0200000001010800450000280007400040068fa1c6121f01c61200021f909c4000002328000003e95012fe8823400000";
const REPLY_OUT: &str = "0200000000020200000000010800450000280007400040064aa1c6126401c612000207e49c4000002328000003e95012fe88f5eb0000";
const UDP_IN: &str =
    "0200000000010200000000020800450000200003000040118aa2c6120002c6126401c35007e4000c65a870696e67";
const UDP_OUT: &str =
    "0200000001010200000001fe080045000020000300004011cfa2c6120002c6121f01c3501f90000c92fc70696e67";

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn backend(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 31, n)
}

/// A chainable test setup: services, next hops, and an engine.
struct Fixture {
    snap: Snapshot,
    engine: Engine,
    now: u64,
}

impl Fixture {
    fn new() -> Self {
        Fixture {
            snap: Snapshot::default(),
            engine: Engine::new(1024),
            now: 1,
        }
    }

    fn capacity(mut self, n: usize) -> Self {
        self.engine = Engine::new(n);
        self
    }

    fn service(mut self, proto: Proto, backends: &[u8]) -> Self {
        let key = ServiceKey {
            vip: VIP,
            port: 2020,
            proto,
        };
        let endpoints = backends
            .iter()
            .map(|&n| Endpoint {
                addr: backend(n),
                port: 8080,
                weight: 1,
            })
            .collect();
        self.snap.services.insert(
            key,
            Service {
                key,
                name: "web".into(),
                mode: NatMode::Dnat,
                selection: Selection::RoundRobin,
                endpoints,
                inactive_timeout: Duration::from_secs(1800),
            },
        );
        self
    }

    fn next_hop(mut self, n: u8) -> Self {
        self.snap.next_hops.insert(
            backend(n),
            NextHop {
                ifindex: LB1_IF,
                src_mac: LB1_MAC,
                dst_mac: [2, 0, 0, 0, 1, n],
            },
        );
        self
    }

    fn run(&mut self, frame: &mut [u8], ingress: u32) -> Verdict {
        self.engine.process(frame, ingress, &self.snap, self.now)
    }
}

#[test]
fn a_syn_to_the_vip_is_rewritten_to_the_first_backend_byte_for_byte() {
    let mut fx = Fixture::new().service(Proto::Tcp, &[1, 2, 3]).next_hop(1);
    let mut f = hex(SYN_IN);
    assert_eq!(
        fx.run(&mut f, LB0_IF),
        Verdict::Transmit { ifindex: LB1_IF }
    );
    assert_eq!(f, hex(SYN_OUT));
}

#[test]
fn a_partial_checksum_from_an_offloading_sender_leaves_complete() {
    let mut fx = Fixture::new().service(Proto::Tcp, &[1]).next_hop(1);
    let mut f = hex(PARTIAL_IN);
    assert!(!l4_checksum_ok(&f[14..]), "input must really be partial");
    assert_eq!(
        fx.run(&mut f, LB0_IF),
        Verdict::Transmit { ifindex: LB1_IF }
    );
    assert_eq!(f, hex(PARTIAL_OUT));
    assert!(l4_checksum_ok(&f[14..]));
}

#[test]
fn a_reply_from_the_backend_goes_back_to_the_client_from_the_vip() {
    let mut fx = Fixture::new().service(Proto::Tcp, &[1]).next_hop(1);
    let mut syn = hex(SYN_IN);
    fx.run(&mut syn, LB0_IF);
    let mut r = hex(REPLY_IN);
    assert_eq!(
        fx.run(&mut r, LB1_IF),
        Verdict::Transmit { ifindex: LB0_IF }
    );
    assert_eq!(r, hex(REPLY_OUT));
}

#[test]
fn a_udp_request_is_rewritten_byte_for_byte() {
    let mut fx = Fixture::new().service(Proto::Udp, &[1]).next_hop(1);
    let mut f = hex(UDP_IN);
    assert_eq!(
        fx.run(&mut f, LB0_IF),
        Verdict::Transmit { ifindex: LB1_IF }
    );
    assert_eq!(f, hex(UDP_OUT));
}

#[test]
fn new_flows_rotate_over_the_endpoints_in_order() {
    let mut fx = Fixture::new().service(Proto::Tcp, &[1, 2, 3]);
    let mut seen = Vec::new();
    for port in 0..6u16 {
        let mut f = hex(SYN_IN);
        f[34..36].copy_from_slice(&(40000 + port).to_be_bytes());
        assert_eq!(fx.run(&mut f, LB0_IF), Verdict::Kernel);
        seen.push(f[14 + 19]);
    }
    assert_eq!(seen, [1, 2, 3, 1, 2, 3]);
}

#[test]
fn packets_of_one_flow_stay_on_its_endpoint() {
    let mut fx = Fixture::new().service(Proto::Tcp, &[1, 2, 3]).next_hop(1);
    let mut syn = hex(SYN_IN);
    fx.run(&mut syn, LB0_IF);
    let mut again = hex(SYN_IN);
    assert_eq!(
        fx.run(&mut again, LB0_IF),
        Verdict::Transmit { ifindex: LB1_IF }
    );
    assert_eq!(again, hex(SYN_OUT));
}

#[test]
fn an_unresolved_next_hop_hands_the_packet_to_the_kernel_already_rewritten() {
    let mut fx = Fixture::new().service(Proto::Tcp, &[1]);
    let mut f = hex(SYN_IN);
    assert_eq!(fx.run(&mut f, LB0_IF), Verdict::Kernel);
    assert_eq!(f[14..], hex(SYN_OUT)[14..]);
}

#[test]
fn a_tcp_packet_without_syn_for_an_unknown_flow_is_dropped_and_counted() {
    let mut fx = Fixture::new().service(Proto::Tcp, &[1]).next_hop(1);
    let mut f = hex(SYN_IN);
    f[14 + 20 + 13] = 0x10; // ACK only
    assert_eq!(fx.run(&mut f, LB0_IF), Verdict::Drop(DropReason::TcpNotSyn));
    assert_eq!(fx.engine.counters.dropped(DropReason::TcpNotSyn), 1);
    assert!(fx.engine.conntrack().is_empty());
}

#[test]
fn a_packet_to_no_service_is_dropped_and_counted() {
    let mut fx = Fixture::new();
    let mut f = hex(SYN_IN);
    assert_eq!(
        fx.run(&mut f, LB0_IF),
        Verdict::Drop(DropReason::NoFlowNoService)
    );
    assert_eq!(fx.engine.counters.dropped(DropReason::NoFlowNoService), 1);
}

#[test]
fn a_full_connection_table_refuses_the_next_flow_and_counts_it() {
    let mut fx = Fixture::new()
        .capacity(2)
        .service(Proto::Tcp, &[1])
        .next_hop(1);
    for port in 0..3u16 {
        let mut f = hex(SYN_IN);
        f[34..36].copy_from_slice(&(41000 + port).to_be_bytes());
        fx.run(&mut f, LB0_IF);
    }
    assert_eq!(fx.engine.counters.dropped(DropReason::ConntrackFull), 1);
    assert_eq!(fx.engine.conntrack().len(), 2);
}

#[test]
fn a_truncated_frame_is_dropped_as_truncated() {
    let mut fx = Fixture::new().service(Proto::Tcp, &[1]);
    let mut f = hex(SYN_IN);
    f.truncate(40);
    assert_eq!(fx.run(&mut f, LB0_IF), Verdict::Drop(DropReason::Truncated));
}

#[test]
fn a_fragment_is_dropped_as_fragment() {
    let mut fx = Fixture::new().service(Proto::Tcp, &[1]);
    let mut f = hex(SYN_IN);
    f[14 + 6] = 0x20; // more fragments
    assert_eq!(fx.run(&mut f, LB0_IF), Verdict::Drop(DropReason::Fragment));
}

#[test]
fn an_idle_flow_expires_and_the_next_syn_starts_a_new_rotation_step() {
    let mut fx = Fixture::new()
        .service(Proto::Tcp, &[1, 2])
        .next_hop(1)
        .next_hop(2);
    let mut f = hex(SYN_IN);
    fx.run(&mut f, LB0_IF);
    fx.now += oxlb_dataplane::engine::NEW_FLOW_TIMEOUT_MS + 1;
    fx.engine.sweep(fx.now, 1024);
    assert!(fx.engine.conntrack().is_empty());
    let mut f = hex(SYN_IN);
    fx.run(&mut f, LB0_IF);
    assert_eq!(f[14 + 19], 2);
}

#[test]
fn a_syn_reusing_the_ports_of_a_closing_flow_opens_a_new_flow() {
    let mut fx = Fixture::new()
        .service(Proto::Tcp, &[1, 2])
        .next_hop(1)
        .next_hop(2);
    let mut syn = hex(SYN_IN);
    fx.run(&mut syn, LB0_IF);
    assert_eq!(syn[14 + 19], 1);
    let mut fin = hex(SYN_IN);
    fin[14 + 20 + 13] = 0x11; // FIN+ACK
    fx.run(&mut fin, LB0_IF);
    let mut again = hex(SYN_IN);
    assert_eq!(
        fx.run(&mut again, LB0_IF),
        Verdict::Transmit { ifindex: LB1_IF }
    );
    assert_eq!(
        again[14 + 19],
        2,
        "the new connection gets the next endpoint"
    );
    assert_eq!(fx.engine.conntrack().len(), 1);
}

#[test]
fn a_retransmitted_syn_of_an_open_flow_keeps_its_endpoint() {
    let mut fx = Fixture::new()
        .service(Proto::Tcp, &[1, 2])
        .next_hop(1)
        .next_hop(2);
    for _ in 0..3 {
        let mut syn = hex(SYN_IN);
        fx.run(&mut syn, LB0_IF);
        assert_eq!(syn[14 + 19], 1);
    }
}
