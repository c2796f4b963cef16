//! Packet-in / packet-out fixture tables for the engine, byte-exact.
//!
//! Expected frames were produced independently (scapy computing every checksum), so these
//! tests do not share the engine's own checksum code.

use oxlb_dataplane::engine::{Engine, EngineConfig, Verdict};
use oxlb_dataplane::nat::l4_checksum_ok;
use oxlb_dataplane::select::Algorithm;
use oxlb_dataplane::snapshot::{
    Endpoint, NatMode, NextHop, OnEndpointDown, PortRange, Proto, Service, ServiceKey, Snapshot,
};
use oxlb_dataplane::stats::DropReason;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

mod common;
use common::hex;

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

const FULLNAT_OUT: &str = "0200000001010200000001fe0800450000280001400040062ba8c6126401c6121f01afc81f90000003e8000000005002faf0d2890000";
const FULLNAT_REPLY_IN: &str = "0200000001fe0200000001010800450000280007400040062ba2c6121f01c61264011f90afc800002328000003e95012fe88abb80000";
const ONEARM_OUT: &str = "0200000001010200000001fe0800450000280001400040066fabc6121ffec6121f01afc81f90000003e8000000005002faf0168d0000";
const ONEARM_REPLY_IN: &str = "0200000001fe0200000001010800450000280007400040066fa5c6121f01c6121ffe1f90afc800002328000003e95012fe88efbb0000";
const DSR_OUT: &str = "0200000001010200000001fe0800450000280001400040064aa7c6120002c61264019c4007e4000003e8000000005002faf01cbd0000";
const UDP_FULLNAT_OUT: &str =
    "0200000001010200000001fe0800450000200003000040116ba3c6126401c6121f01afc81f90000c428570696e67";
/// First port of the SNAT range in these fixtures: distinct from the client's port 40000.
const SNAT_FIRST: u16 = 45000;
const LB1_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 31, 254);

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

    fn snat_ports(mut self, first: u16, last: u16) -> Self {
        self.engine = Engine::with_config(EngineConfig {
            conntrack_capacity: 1024,
            conntrack_capacity_v6: 1024,
            worker: 0,
            workers: 1,
            snat_ports: PortRange { first, last },
        });
        self
    }

    /// Switches every service to `mode`.
    fn mode(mut self, mode: NatMode) -> Self {
        for s in self.snap.services.values_mut() {
            s.mode = mode;
        }
        self
    }

    /// Our own address toward backend `n`, as the route lookup reports it.
    fn source(mut self, n: u8, addr: Ipv4Addr) -> Self {
        self.snap.sources.insert(backend(n).into(), addr.into());
        self.snap.own_addrs.insert(IpAddr::from(addr));
        self
    }

    fn service(mut self, proto: Proto, backends: &[u8]) -> Self {
        let key = ServiceKey {
            vip: IpAddr::from(VIP),
            port: 2020,
            proto,
        };
        let endpoints = backends
            .iter()
            .map(|&n| Endpoint {
                addr: IpAddr::from(backend(n)),
                port: 8080,
                weight: 1,
            })
            .collect();
        self.snap.services.insert(
            key,
            Service::new(
                key,
                "web".into(),
                NatMode::Dnat,
                Algorithm::RoundRobin,
                endpoints,
                Duration::from_secs(1800),
            )
            .unwrap(),
        );
        self
    }

    fn next_hop(mut self, n: u8) -> Self {
        self.snap.next_hops.insert(
            IpAddr::from(backend(n)),
            NextHop {
                ifindex: LB1_IF,
                src_mac: LB1_MAC,
                dst_mac: [2, 0, 0, 0, 1, n],
            },
        );
        self
    }

    /// Rebuilds every service's selector for `alg`.
    fn selection(mut self, alg: Algorithm) -> Self {
        for s in self.snap.services.values_mut() {
            *s = Service::new(
                s.key,
                s.name.clone(),
                s.mode,
                alg,
                s.endpoints.clone(),
                s.inactive_timeout,
            )
            .unwrap();
        }
        self
    }

    fn run(&mut self, frame: &mut [u8], ingress: u32) -> Verdict {
        self.engine.process(frame, ingress, &self.snap, self.now)
    }

    /// Publishes a snapshot in which backend `n` is down (its health probe failed) and every
    /// service treats established flows to a down endpoint as `policy` says.
    fn endpoint_down(&mut self, n: u8, policy: OnEndpointDown) {
        for s in self.snap.services.values_mut() {
            s.on_endpoint_down = policy;
            for (e, live) in s.endpoints.iter().zip(s.live.iter_mut()) {
                if e.addr == IpAddr::from(backend(n)) {
                    *live = false;
                }
            }
        }
        self.snap.generation += 1;
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
fn a_connection_table_full_of_established_flows_refuses_the_next_flow_and_counts_it() {
    let mut fx = Fixture::new()
        .capacity(2)
        .service(Proto::Tcp, &[1])
        .next_hop(1);
    for port in 0..3u16 {
        let port = (41000 + port).to_be_bytes();
        let mut syn = hex(SYN_IN);
        syn[34..36].copy_from_slice(&port);
        fx.run(&mut syn, LB0_IF);
        let mut syn_ack = hex(REPLY_IN);
        syn_ack[36..38].copy_from_slice(&port);
        fx.run(&mut syn_ack, LB1_IF);
        let mut ack = hex(SYN_IN);
        ack[34..36].copy_from_slice(&port);
        ack[14 + 20 + 13] = 0x10;
        fx.run(&mut ack, LB0_IF);
    }
    assert_eq!(fx.engine.counters.dropped(DropReason::ConntrackFull), 1);
    assert_eq!(fx.engine.counters.flows_evicted, 0);
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
fn an_idle_flow_expires_and_the_next_syn_starts_a_new_rotation_step() {
    let mut fx = Fixture::new()
        .service(Proto::Tcp, &[1, 2])
        .next_hop(1)
        .next_hop(2);
    let mut f = hex(SYN_IN);
    fx.run(&mut f, LB0_IF);
    fx.now += oxlb_dataplane::engine::NEW_FLOW_TIMEOUT_MS + 1;
    fx.engine.sweep(fx.now, 1024, &fx.snap);
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

#[test]
fn full_nat_rewrites_the_source_to_the_vip_and_an_allocated_port() {
    let mut fx = Fixture::new()
        .snat_ports(SNAT_FIRST, SNAT_FIRST + 99)
        .service(Proto::Tcp, &[1])
        .mode(NatMode::FullNat)
        .next_hop(1);
    let mut f = hex(SYN_IN);
    assert_eq!(
        fx.run(&mut f, LB0_IF),
        Verdict::Transmit { ifindex: LB1_IF }
    );
    assert_eq!(f, hex(FULLNAT_OUT));
}

#[test]
fn a_full_nat_reply_goes_back_to_the_client_address_and_port() {
    let mut fx = Fixture::new()
        .snat_ports(SNAT_FIRST, SNAT_FIRST + 99)
        .service(Proto::Tcp, &[1])
        .mode(NatMode::FullNat)
        .next_hop(1);
    fx.run(&mut hex(SYN_IN), LB0_IF);
    let mut r = hex(FULLNAT_REPLY_IN);
    assert_eq!(
        fx.run(&mut r, LB1_IF),
        Verdict::Transmit { ifindex: LB0_IF }
    );
    assert_eq!(r, hex(REPLY_OUT));
}

#[test]
fn full_nat_udp_is_rewritten_byte_for_byte() {
    let mut fx = Fixture::new()
        .snat_ports(SNAT_FIRST, SNAT_FIRST + 99)
        .service(Proto::Udp, &[1])
        .mode(NatMode::FullNat)
        .next_hop(1);
    let mut f = hex(UDP_IN);
    assert_eq!(
        fx.run(&mut f, LB0_IF),
        Verdict::Transmit { ifindex: LB1_IF }
    );
    assert_eq!(f, hex(UDP_FULLNAT_OUT));
}

#[test]
fn one_arm_uses_the_lbs_own_address_toward_the_endpoint_and_back() {
    let mut fx = Fixture::new()
        .snat_ports(SNAT_FIRST, SNAT_FIRST + 99)
        .service(Proto::Tcp, &[1])
        .mode(NatMode::OneArm)
        .next_hop(1)
        .source(1, LB1_ADDR);
    let mut f = hex(SYN_IN);
    assert_eq!(
        fx.run(&mut f, LB0_IF),
        Verdict::Transmit { ifindex: LB1_IF }
    );
    assert_eq!(f, hex(ONEARM_OUT));
    let mut r = hex(ONEARM_REPLY_IN);
    assert_eq!(
        fx.run(&mut r, LB1_IF),
        Verdict::Transmit { ifindex: LB0_IF }
    );
    assert_eq!(r, hex(REPLY_OUT));
}

#[test]
fn one_arm_without_a_route_to_the_endpoint_is_dropped_and_counted() {
    let mut fx = Fixture::new()
        .service(Proto::Tcp, &[1])
        .mode(NatMode::OneArm)
        .next_hop(1);
    let mut f = hex(SYN_IN);
    assert_eq!(
        fx.run(&mut f, LB0_IF),
        Verdict::Drop(DropReason::NoSourceAddress)
    );
}

#[test]
fn a_syn_dropped_after_its_endpoint_was_chosen_leaves_that_endpoint_its_turn() {
    // Backend 2 has no source address yet (its route is being looked up): its turn comes,
    // the SYN is dropped, and the client's retransmission must still go to backend 2.
    let mut fx = Fixture::new()
        .service(Proto::Tcp, &[1, 2, 3])
        .mode(NatMode::OneArm)
        .source(1, LB1_ADDR)
        .source(3, LB1_ADDR);
    assert_eq!(backend_for(&mut fx, 40000), 1);
    let mut f = hex(SYN_IN);
    f[34..36].copy_from_slice(&40001u16.to_be_bytes());
    assert_eq!(
        fx.run(&mut f, LB0_IF),
        Verdict::Drop(DropReason::NoSourceAddress)
    );
    fx.snap.sources.insert(backend(2).into(), LB1_ADDR.into());
    let rest: Vec<u8> = (40001..40005).map(|p| backend_for(&mut fx, p)).collect();
    assert_eq!(rest, [2, 3, 1, 2]);
}

#[test]
fn dsr_rewrites_only_the_macs() {
    let mut fx = Fixture::new()
        .service(Proto::Tcp, &[1])
        .mode(NatMode::Dsr)
        .next_hop(1);
    let mut f = hex(SYN_IN);
    assert_eq!(
        fx.run(&mut f, LB0_IF),
        Verdict::Transmit { ifindex: LB1_IF }
    );
    assert_eq!(f, hex(DSR_OUT));
    assert_eq!(fx.engine.conntrack().len(), 1, "the flow is still tracked");
}

#[test]
fn dsr_to_an_endpoint_with_an_unknown_mac_is_dropped_not_sent_to_the_kernel() {
    let mut fx = Fixture::new().service(Proto::Tcp, &[1]).mode(NatMode::Dsr);
    let mut f = hex(SYN_IN);
    assert_eq!(
        fx.run(&mut f, LB0_IF),
        Verdict::Drop(DropReason::NextHopUnresolved)
    );
}

#[test]
fn snat_ports_run_out_cleanly_and_come_back_when_flows_end() {
    let mut fx = Fixture::new()
        .snat_ports(SNAT_FIRST, SNAT_FIRST + 1)
        .service(Proto::Tcp, &[1])
        .mode(NatMode::FullNat)
        .next_hop(1);
    // Established flows keep their ports (embryonic ones would give theirs up).
    for port in 0..3u16 {
        let mut f = hex(SYN_IN);
        f[34..36].copy_from_slice(&(41000 + port).to_be_bytes());
        if fx.run(&mut f, LB0_IF) != (Verdict::Transmit { ifindex: LB1_IF }) {
            continue;
        }
        let mut syn_ack = hex(FULLNAT_REPLY_IN);
        syn_ack[36..38].copy_from_slice(&(SNAT_FIRST + port).to_be_bytes());
        fx.run(&mut syn_ack, LB1_IF);
        let mut ack = hex(SYN_IN);
        ack[34..36].copy_from_slice(&(41000 + port).to_be_bytes());
        ack[14 + 20 + 13] = 0x10;
        fx.run(&mut ack, LB0_IF);
    }
    assert_eq!(
        fx.engine.counters.dropped(DropReason::SnatPortsExhausted),
        1
    );
    assert_eq!(fx.engine.counters.flows_evicted, 0);
    assert_eq!(fx.engine.conntrack().len(), 2);
    fx.now += 1800 * 1000 + 1;
    fx.engine.sweep(fx.now, 1024, &fx.snap);
    assert_eq!(fx.engine.free_snat_ports(IpAddr::from(VIP), Proto::Tcp), 2);
    let mut f = hex(SYN_IN);
    assert_eq!(
        fx.run(&mut f, LB0_IF),
        Verdict::Transmit { ifindex: LB1_IF }
    );
}

/// The backend a SYN from client port `port` is sent to (last octet of the new destination).
fn backend_for(fx: &mut Fixture, port: u16) -> u8 {
    let mut f = hex(SYN_IN);
    f[34..36].copy_from_slice(&port.to_be_bytes());
    fx.run(&mut f, LB0_IF);
    f[14 + 19]
}

#[test]
fn hashing_sends_the_same_client_port_to_the_same_backend_every_time() {
    let mut fx = Fixture::new()
        .service(Proto::Tcp, &[1, 2, 3])
        .selection(Algorithm::Hash);
    let first = backend_for(&mut fx, 41234);
    for _ in 0..12 {
        // A new engine each time: the choice depends on the tuple only, not on history.
        let mut again = Fixture::new()
            .service(Proto::Tcp, &[1, 2, 3])
            .selection(Algorithm::Hash);
        assert_eq!(backend_for(&mut again, 41234), first);
    }
}

#[test]
fn weights_80_and_20_split_100_new_flows_80_and_20() {
    let mut fx = Fixture::new().service(Proto::Tcp, &[1, 2]);
    for s in fx.snap.services.values_mut() {
        s.endpoints[0].weight = 80;
        s.endpoints[1].weight = 20;
    }
    let mut fx = fx.selection(Algorithm::Weighted);
    let mut counts = [0u32; 3];
    for port in 0..100u16 {
        counts[usize::from(backend_for(&mut fx, 42000 + port))] += 1;
    }
    assert_eq!(counts[1..], [80, 20]);
}

#[test]
fn least_connections_sends_new_flows_where_fewest_are_open_and_counts_closes() {
    let mut fx = Fixture::new()
        .service(Proto::Tcp, &[1, 2])
        .selection(Algorithm::LeastConnections);
    let a = backend_for(&mut fx, 43000);
    let b = backend_for(&mut fx, 43001);
    assert_ne!(a, b, "the second flow goes to the idle backend");
    // Close the first flow (RST): its backend has the fewest flows again.
    let mut rst = hex(SYN_IN);
    rst[34..36].copy_from_slice(&43000u16.to_be_bytes());
    rst[14 + 20 + 13] = 0x04;
    fx.run(&mut rst, LB0_IF);
    fx.now += oxlb_dataplane::engine::CLOSING_TIMEOUT_MS + 1;
    fx.engine.sweep(fx.now, 1024, &fx.snap);
    assert_eq!(backend_for(&mut fx, 43002), a);
}

#[test]
fn a_persisting_client_sticks_to_one_backend_across_ports() {
    let mut fx = Fixture::new()
        .service(Proto::Tcp, &[1, 2, 3])
        .selection(Algorithm::Persist);
    let first = backend_for(&mut fx, 44000);
    for port in 1..10u16 {
        assert_eq!(backend_for(&mut fx, 44000 + port), first);
    }
}

#[test]
fn dsr_completes_a_partial_checksum_it_does_not_otherwise_touch() {
    const DSR_PARTIAL_OUT: &str = "0200000001010200000001fe08004500003c0002400040064a92c6120002c61264019c4107e400000005000000005002faf036d8000068656c6c6f20776f726c642c207061727469616c";
    let mut fx = Fixture::new()
        .service(Proto::Tcp, &[1])
        .mode(NatMode::Dsr)
        .next_hop(1);
    let mut f = hex(PARTIAL_IN);
    assert_eq!(
        fx.run(&mut f, LB0_IF),
        Verdict::Transmit { ifindex: LB1_IF }
    );
    assert_eq!(f, hex(DSR_PARTIAL_OUT));
}

#[test]
fn an_echo_request_to_the_vip_is_answered_from_the_vip_byte_for_byte() {
    const ECHO_IN: &str = "020000000001020000000002080045000028000940003f014ba4c6120002c61264010800bc23004d000170696e672d7061796c6f6164";
    const ECHO_OUT: &str = "0200000000020200000000010800450000280009400040014aa4c6126401c61200020000c423004d000170696e672d7061796c6f6164";
    let mut fx = Fixture::new().service(Proto::Tcp, &[1]);
    fx.snap.vips.insert(IpAddr::from(VIP));
    let mut f = hex(ECHO_IN);
    assert_eq!(
        fx.run(&mut f, LB0_IF),
        Verdict::Transmit { ifindex: LB0_IF }
    );
    assert_eq!(f, hex(ECHO_OUT));
    assert_eq!(fx.engine.counters.icmp_echo_replies, 1);
}

#[test]
fn other_icmp_to_the_vip_is_dropped_and_counted() {
    let mut fx = Fixture::new().service(Proto::Tcp, &[1]);
    fx.snap.vips.insert(IpAddr::from(VIP));
    let mut f = hex("020000000001020000000002080045000028000940003f014ba4c6120002c61264010800bc23004d000170696e672d7061796c6f6164");
    f[14 + 20] = 13; // timestamp request
    assert_eq!(
        fx.run(&mut f, LB0_IF),
        Verdict::Drop(DropReason::IcmpNotEcho)
    );
}

#[test]
fn a_source_outside_the_allowed_prefixes_is_dropped_and_counted() {
    let mut fx = Fixture::new().service(Proto::Tcp, &[1]).next_hop(1);
    for s in fx.snap.services.values_mut() {
        s.allowed_sources = vec![(u32::from(Ipv4Addr::new(198, 19, 0, 0)), 0xffff_0000)];
    }
    let mut f = hex(SYN_IN);
    assert_eq!(
        fx.run(&mut f, LB0_IF),
        Verdict::Drop(DropReason::SourceNotAllowed)
    );
    for s in fx.snap.services.values_mut() {
        s.allowed_sources
            .push((u32::from(Ipv4Addr::new(198, 18, 0, 0)), 0xffff_ff00));
    }
    let mut f = hex(SYN_IN);
    assert_eq!(
        fx.run(&mut f, LB0_IF),
        Verdict::Transmit { ifindex: LB1_IF }
    );
}

#[test]
fn a_blocked_service_refuses_new_flows_but_keeps_established_ones() {
    let mut fx = Fixture::new().service(Proto::Tcp, &[1]).next_hop(1);
    let mut syn = hex(SYN_IN);
    fx.run(&mut syn, LB0_IF);
    for s in fx.snap.services.values_mut() {
        s.block_new_flows = true;
    }
    let mut same_flow = hex(SYN_IN);
    same_flow[14 + 20 + 13] = 0x10; // ACK of the established flow
    assert_eq!(
        fx.run(&mut same_flow, LB0_IF),
        Verdict::Transmit { ifindex: LB1_IF }
    );
    let mut other = hex(SYN_IN);
    other[34..36].copy_from_slice(&40999u16.to_be_bytes());
    assert_eq!(
        fx.run(&mut other, LB0_IF),
        Verdict::Drop(DropReason::ServiceBlocked)
    );
}

#[test]
fn an_endpoint_that_is_not_live_gets_no_new_flow() {
    let mut fx = Fixture::new()
        .service(Proto::Tcp, &[1, 2, 3])
        .next_hop(1)
        .next_hop(2);
    for s in fx.snap.services.values_mut() {
        s.live[0] = false;
    }
    let mut f = hex(SYN_IN);
    assert_eq!(
        fx.run(&mut f, LB0_IF),
        Verdict::Transmit { ifindex: LB1_IF }
    );
    assert_eq!(f[14 + 16..14 + 20], backend(2).octets());
}

#[test]
fn no_live_endpoint_drops_a_new_flow_as_no_endpoint() {
    let mut fx = Fixture::new().service(Proto::Tcp, &[1]).next_hop(1);
    for s in fx.snap.services.values_mut() {
        s.live[0] = false;
    }
    let mut f = hex(SYN_IN);
    assert_eq!(
        fx.run(&mut f, LB0_IF),
        Verdict::Drop(DropReason::NoEndpoint)
    );
}

#[test]
fn an_endpoints_packet_to_our_own_address_without_a_flow_goes_to_the_kernel() {
    // A health probe's answer: from the endpoint's service port to the LB itself.
    let mut fx = Fixture::new()
        .service(Proto::Tcp, &[1])
        .source(1, Ipv4Addr::new(198, 18, 31, 254));
    let mut f = hex(ONEARM_REPLY_IN);
    assert_eq!(fx.run(&mut f, LB1_IF), Verdict::Kernel);
    assert_eq!(f, hex(ONEARM_REPLY_IN), "a complete checksum is left alone");
    assert!(fx.engine.conntrack().is_empty());
}

#[test]
fn a_copied_flow_shows_its_tuples_state_and_counters_per_direction() {
    use oxlb_dataplane::conntrack::FlowState;
    let mut fx = Fixture::new().service(Proto::Tcp, &[1]).next_hop(1);
    let mut syn = hex(SYN_IN);
    fx.run(&mut syn, LB0_IF);
    let (flows, truncated) = fx.engine.flows(fx.now, 16);
    assert!(!truncated);
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0].state, FlowState::New);
    let mut reply = hex(REPLY_IN);
    fx.run(&mut reply, LB1_IF);
    let (flows, _) = fx.engine.flows(fx.now, 16);
    assert_eq!(
        flows[0].state,
        FlowState::New,
        "SYN-ACK: handshake not done"
    );
    let mut ack = hex(SYN_IN);
    ack[14 + 20 + 13] = 0x10;
    fx.run(&mut ack, LB0_IF);
    let (flows, _) = fx.engine.flows(fx.now, 16);
    let f = flows[0];
    assert_eq!(f.original.src, Ipv4Addr::new(198, 18, 0, 2));
    assert_eq!((f.original.src_port, f.original.dst), (40000, VIP.into()));
    assert_eq!((f.original.dst_port, f.original.proto), (2020, Proto::Tcp));
    assert_eq!((f.reply.src, f.reply.src_port), (backend(1).into(), 8080));
    assert_eq!(
        (f.endpoint.addr, f.endpoint.port),
        (backend(1).into(), 8080)
    );
    assert_eq!(f.service.vip, VIP);
    assert_eq!((f.mode, f.snat), (NatMode::Dnat, None));
    assert_eq!(f.state, FlowState::Established);
    assert_eq!(f.packets, [2, 1]);
    assert_eq!(f.bytes, [80, 40]);
    assert!(fx
        .engine
        .flows(
            fx.now + oxlb_dataplane::engine::NEW_FLOW_TIMEOUT_MS + 1800 * 1000,
            16
        )
        .0
        .is_empty());
}

// ICMP errors (scapy): a port unreachable from backend 1 about the forwarded UDP_OUT, and what
// the client must get; a fragmentation needed (MTU 1300) from a client-side router about
// REPLY_OUT, and what backend 1 must get; a 1500-byte UDP datagram with DF and the
// fragmentation needed (MTU 1400) the engine must answer it with.
const UNREACH_IN: &str = "0200000001fe02000000010108004500003c004d00004001cf4cc6121f01c61200020303a8420000000045000020000300004011cfa2c6120002c6121f01c3501f90000c92fc70696e67";
const UNREACH_OUT: &str = "02000000000202000000000108004500003c004d000040018a4cc6126401c61200020303ed4200000000450000200003000040118aa2c6120002c6126401c35007e4000c65a870696e67";
const REPLY_FRAG_IN: &str = "020000000001020000000002080045000038004e000040018953c61200fec61264010304309b00000514450000280007400040064aa1c6126401c612000207e49c4000002328";
const REPLY_FRAG_OUT: &str = "0200000001010200000001fe080045000038004e00004001ce53c61200fec6121f01030418ef00000514450000280007400040068fa1c6121f01c61200021f909c4000002328";
const BIG_HEAD: &str =
    "0200000000010200000000020800450005dc00094000401144e0c6120002c6126401c35107e405c818e0";
const BIG_OUT: &str = "020000000002020000000001080045c0003800000000400189ddc6126401c612000203040da600000578450005dc00094000401144e0c6120002c6126401c35107e405c818e0";

#[test]
fn a_port_unreachable_about_a_forwarded_datagram_reaches_the_client_from_the_vip() {
    let mut fx = Fixture::new().service(Proto::Udp, &[1]).next_hop(1);
    let mut req = hex(UDP_IN);
    fx.run(&mut req, LB0_IF);
    let mut err = hex(UNREACH_IN);
    assert_eq!(
        fx.run(&mut err, LB1_IF),
        Verdict::Transmit { ifindex: LB0_IF }
    );
    assert_eq!(err, hex(UNREACH_OUT));
    assert_eq!(fx.engine.counters.icmp_errors_translated, 1);
}

#[test]
fn a_fragmentation_needed_about_a_reply_reaches_the_endpoint_quoting_its_own_segment() {
    let mut fx = Fixture::new().service(Proto::Tcp, &[1]).next_hop(1);
    fx.run(&mut hex(SYN_IN), LB0_IF);
    fx.run(&mut hex(REPLY_IN), LB1_IF);
    let mut err = hex(REPLY_FRAG_IN);
    assert_eq!(
        fx.run(&mut err, LB0_IF),
        Verdict::Transmit { ifindex: LB1_IF }
    );
    assert_eq!(err, hex(REPLY_FRAG_OUT));
}

#[test]
fn a_fragmentation_needed_about_a_dsr_reply_reaches_the_endpoint_unchanged_but_for_the_macs() {
    // The endpoint answered the client from the VIP it holds: the quote is its own packet.
    let mut fx = Fixture::new()
        .service(Proto::Tcp, &[1])
        .mode(NatMode::Dsr)
        .next_hop(1);
    fx.run(&mut hex(SYN_IN), LB0_IF);
    let mut err = hex(REPLY_FRAG_IN);
    let mut expected = err.clone();
    expected[0..6].copy_from_slice(&[2, 0, 0, 0, 1, 1]);
    expected[6..12].copy_from_slice(&LB1_MAC);
    assert_eq!(
        fx.run(&mut err, LB0_IF),
        Verdict::Transmit { ifindex: LB1_IF }
    );
    assert_eq!(err, expected);
}

#[test]
fn an_icmp_error_about_no_flow_of_ours_is_left_to_the_kernel() {
    let mut fx = Fixture::new().service(Proto::Udp, &[1]).next_hop(1);
    let mut err = hex(UNREACH_IN);
    assert_eq!(fx.run(&mut err, LB1_IF), Verdict::Kernel);
    assert_eq!(err, hex(UNREACH_IN), "left untouched");
}

#[test]
fn a_packet_too_big_for_the_endpoints_link_earns_its_sender_a_fragmentation_needed() {
    let mut fx = Fixture::new().service(Proto::Udp, &[1]).next_hop(1);
    fx.snap.link_mtus.insert(LB1_IF, 1400);
    let mut big = hex(BIG_HEAD);
    big.resize(14 + 1500, b'z');
    let verdict = fx.run(&mut big, LB0_IF);
    let Verdict::TransmitFirst { ifindex, len } = verdict else {
        panic!("expected a short reply, got {verdict:?}");
    };
    assert_eq!(ifindex, LB0_IF);
    assert_eq!(&big[..len], &hex(BIG_OUT)[..]);
    assert_eq!(fx.engine.counters.frag_needed_sent, 1);

    // Without DF the packet would need fragmenting: dropped and counted instead.
    let mut big = hex(BIG_HEAD);
    big.resize(14 + 1500, b'z');
    big[20] = 0;
    assert_eq!(
        fx.run(&mut big, LB0_IF),
        Verdict::Drop(DropReason::TooBigToForward)
    );
    // A packet that fits goes through.
    fx.snap.link_mtus.insert(LB1_IF, 1500);
    let mut big = hex(BIG_HEAD);
    big.resize(14 + 1500, b'z');
    assert_eq!(
        fx.run(&mut big, LB0_IF),
        Verdict::Transmit { ifindex: LB1_IF }
    );
}

// SCTP (scapy, CRC32c computed by scapy): an INIT from the client to the VIP and the same
// INIT as backend 1 must get it (DNAT); backend 1's INIT ACK and what the client must get; an
// ABORT of an association nobody knows.
const SCTP_INIT_IN: &str = "020000000001020000000002080045000034000b400040844a13c6120002c61264019c4007e400000000d9c65dad01000014000012340000ffff0001000100000001";
const SCTP_INIT_OUT: &str = "0200000001010200000001fe080045000034000b400040848f13c6120002c6121f019c401f9000000000abb2ef7a01000014000012340000ffff0001000100000001";
const SCTP_INIT_ACK_IN: &str = "0200000001fe020000000101080045000034000c400040848f12c6121f01c61200021f909c40000012347121922b02000014000056780000ffff0001000100000001";
const SCTP_INIT_ACK_OUT: &str = "020000000002020000000001080045000034000c400040844a12c6126401c612000207e49c4000001234b8d18c0502000014000056780000ffff0001000100000001";
const SCTP_ABORT_IN: &str = "020000000001020000000002080045000024000d400040844a21c6120002c61264019c4107e400000099eac874be06000004";

#[test]
fn an_sctp_init_and_its_init_ack_are_rewritten_with_their_crc32c_byte_for_byte() {
    let mut fx = Fixture::new().service(Proto::Sctp, &[1]).next_hop(1);
    let mut init = hex(SCTP_INIT_IN);
    assert_eq!(
        fx.run(&mut init, LB0_IF),
        Verdict::Transmit { ifindex: LB1_IF }
    );
    assert_eq!(init, hex(SCTP_INIT_OUT));
    let mut ack = hex(SCTP_INIT_ACK_IN);
    assert_eq!(
        fx.run(&mut ack, LB1_IF),
        Verdict::Transmit { ifindex: LB0_IF }
    );
    assert_eq!(ack, hex(SCTP_INIT_ACK_OUT));
}

#[test]
fn an_sctp_chunk_other_than_init_opens_nothing_and_a_bad_crc_is_not_forwarded() {
    let mut fx = Fixture::new().service(Proto::Sctp, &[1]).next_hop(1);
    let mut abort = hex(SCTP_ABORT_IN);
    assert_eq!(
        fx.run(&mut abort, LB0_IF),
        Verdict::Drop(DropReason::SctpNotInit)
    );
    let mut init = hex(SCTP_INIT_IN);
    let last = init.len() - 1;
    init[last] ^= 0xff;
    assert_eq!(
        fx.run(&mut init, LB0_IF),
        Verdict::Drop(DropReason::Malformed)
    );
}

#[test]
fn an_sctp_first_fragment_is_dropped_as_a_fragment_and_left_as_it_came() {
    let mut fx = Fixture::new().service(Proto::Sctp, &[1]).next_hop(1);
    // The INIT as the first fragment of a longer datagram: "more fragments" set, the IP
    // header checksum made right again, so only the fragment bit differs.
    let mut head = hex(SCTP_INIT_IN);
    let ip = &mut head[14..34];
    ip[6..8].copy_from_slice(&0x2000u16.to_be_bytes());
    ip[10..12].fill(0);
    let check = oxlb_dataplane::checksum::ipv4_header(ip);
    ip[10..12].copy_from_slice(&check.to_be_bytes());
    let before = head.clone();
    assert_eq!(
        fx.run(&mut head, LB0_IF),
        Verdict::Drop(DropReason::Fragment)
    );
    assert_eq!(head, before, "nothing rewritten");
    assert_eq!(fx.engine.conntrack().len(), 0, "no flow opened");
}

// Port ranges (loxilb's `portMax`). Expected frames: the SYN and reply fixtures above with
// the service port changed to 2023 and the TCP checksum recomputed in full by a separate
// script (not the engine's checksum code).
const SYN_2023_IN: &str = "0200000000010200000000020800450000280001400040064aa7c6120002c61264019c4007e7000003e8000000005002faf01cba0000";
const REPLY_2023_OUT: &str = "0200000000020200000000010800450000280007400040064aa1c6126401c612000207e79c4000002328000003e95012fe88f5e80000";

impl Fixture {
    /// Makes the service on port 2020 cover 2020..=`port_max`, as the control plane compiles
    /// a range: one entry per port, each with the rule's own key.
    fn port_max(mut self, port_max: u16) -> Self {
        let rule: Vec<Service> = self.snap.services.values().cloned().collect();
        for mut svc in rule {
            svc.port_max = port_max;
            for port in svc.key.port..=port_max {
                let at = ServiceKey { port, ..svc.key };
                self.snap.services.insert(at, svc.clone());
            }
        }
        self
    }
}

#[test]
fn a_syn_to_the_fourth_port_of_a_range_reaches_the_endpoints_own_target_port() {
    let mut fx = Fixture::new()
        .service(Proto::Tcp, &[1])
        .port_max(2030)
        .next_hop(1);
    let mut f = hex(SYN_2023_IN);
    assert_eq!(
        fx.run(&mut f, LB0_IF),
        Verdict::Transmit { ifindex: LB1_IF }
    );
    // loxilb rewrites every port of the range to the endpoint's targetPort (8080 here).
    assert_eq!(f, hex(SYN_OUT));
}

#[test]
fn the_reply_to_a_flow_on_a_ranged_port_leaves_from_the_port_the_client_used() {
    let mut fx = Fixture::new()
        .service(Proto::Tcp, &[1])
        .port_max(2030)
        .next_hop(1);
    let mut syn = hex(SYN_2023_IN);
    fx.run(&mut syn, LB0_IF);
    let mut r = hex(REPLY_IN);
    assert_eq!(
        fx.run(&mut r, LB1_IF),
        Verdict::Transmit { ifindex: LB0_IF }
    );
    assert_eq!(r, hex(REPLY_2023_OUT));
    let (flows, _) = fx.engine.flows(fx.now, 10);
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0].service.port, 2023, "tracked under the actual port");
}

#[test]
fn a_port_just_past_the_range_finds_no_service() {
    let mut fx = Fixture::new()
        .service(Proto::Tcp, &[1])
        .port_max(2022)
        .next_hop(1);
    let mut f = hex(SYN_2023_IN);
    assert_eq!(
        fx.run(&mut f, LB0_IF),
        Verdict::Drop(DropReason::NoFlowNoService)
    );
}

#[test]
fn flows_on_two_ports_of_a_range_count_under_the_rules_key_and_rotate_together() {
    let mut fx = Fixture::new()
        .service(Proto::Tcp, &[1, 2])
        .port_max(2030)
        .next_hop(1)
        .next_hop(2);
    let (mut a, mut b) = (hex(SYN_IN), hex(SYN_2023_IN));
    fx.run(&mut a, LB0_IF);
    fx.run(&mut b, LB0_IF);
    // One rotation for the whole range: the second port's flow goes to the second endpoint.
    assert_eq!(a[30..34], [198, 18, 31, 1]);
    assert_eq!(b[30..34], [198, 18, 31, 2]);
    let counters = fx.engine.endpoint_counters();
    assert_eq!(counters.len(), 2);
    for (service, _, c) in counters {
        assert_eq!(service.port, 2020, "counted under the rule's key");
        assert_eq!((c.flows_created, c.packets[0]), (1, 1));
    }
}

#[test]
fn deleting_a_ranged_service_ends_its_flows_on_every_port() {
    let mut fx = Fixture::new()
        .service(Proto::Tcp, &[1, 2])
        .port_max(2030)
        .next_hop(1)
        .next_hop(2);
    // Same client port on two ports of the range: two endpoints keep their replies apart.
    let (mut a, mut b) = (hex(SYN_IN), hex(SYN_2023_IN));
    fx.run(&mut a, LB0_IF);
    fx.run(&mut b, LB0_IF);
    assert_eq!(fx.engine.conntrack().len(), 2);
    let key = ServiceKey {
        vip: IpAddr::from(VIP),
        port: 2020,
        proto: Proto::Tcp,
    };
    fx.snap.services.clear();
    fx.engine.forget_service(&key, &fx.snap);
    assert_eq!(fx.engine.conntrack().len(), 0);
    assert!(fx.engine.endpoint_counters().is_empty());
}

/// A 2008-byte UDP datagram (client 198.18.0.2:50000 to the VIP) cut in three fragments, and
/// the same fragments as DNAT and full NAT must send them to backend 1; produced by scapy
/// (`fragment()` of a datagram whose checksum it computed whole).
fn fragment_fixture(name: &str) -> Vec<u8> {
    common::fixture(include_str!("fixtures/ipv4_fragments.txt"), name)
}

#[test]
fn the_fragments_of_a_datagram_follow_their_first_fragment_in_dnat() {
    let mut fx = Fixture::new().service(Proto::Udp, &[1]).next_hop(1);
    for i in 0..3 {
        let mut f = fragment_fixture(&format!("FRAG{i}_IN"));
        assert_eq!(
            fx.run(&mut f, LB0_IF),
            Verdict::Transmit { ifindex: LB1_IF },
            "fragment {i}"
        );
        assert_eq!(
            f,
            fragment_fixture(&format!("FRAG{i}_DNAT_OUT")),
            "fragment {i}"
        );
    }
    assert_eq!(fx.engine.counters.fragments_followed, 2);
}

#[test]
fn the_fragments_of_a_datagram_follow_their_first_fragment_in_full_nat() {
    let mut fx = Fixture::new()
        .snat_ports(SNAT_FIRST, SNAT_FIRST + 99)
        .service(Proto::Udp, &[1])
        .next_hop(1)
        .mode(NatMode::FullNat);
    for i in 0..3 {
        let mut f = fragment_fixture(&format!("FRAG{i}_IN"));
        assert_eq!(
            fx.run(&mut f, LB0_IF),
            Verdict::Transmit { ifindex: LB1_IF },
            "fragment {i}"
        );
        assert_eq!(
            f,
            fragment_fixture(&format!("FRAG{i}_FULLNAT_OUT")),
            "fragment {i}"
        );
    }
}

#[test]
fn a_later_fragment_without_its_first_is_dropped_and_counted() {
    let mut fx = Fixture::new().service(Proto::Udp, &[1]).next_hop(1);
    let mut f = fragment_fixture("FRAG1_IN");
    assert_eq!(fx.run(&mut f, LB0_IF), Verdict::Drop(DropReason::Fragment));
    assert_eq!(fx.engine.counters.dropped(DropReason::Fragment), 1);
}

#[test]
fn an_endpoint_with_port_zero_receives_the_port_the_client_came_to() {
    // SYN_IN to the VIP's port 2020, rewritten to backend 1 keeping port 2020 (scapy).
    const KEPT_PORT_OUT: &str = "0200000001010200000001fe0800450000280001400040068fa7c6120002c6121f019c4007e4000003e8000000005002faf061bd0000";
    let mut fx = Fixture::new().service(Proto::Tcp, &[1]).next_hop(1);
    for s in fx.snap.services.values_mut() {
        let mut eps = s.endpoints.clone();
        eps[0].port = 0;
        *s = Service::new(
            s.key,
            s.name.clone(),
            s.mode,
            Algorithm::LeastConnections,
            eps,
            s.inactive_timeout,
        )
        .unwrap();
    }
    let mut f = hex(SYN_IN);
    assert_eq!(
        fx.run(&mut f, LB0_IF),
        Verdict::Transmit { ifindex: LB1_IF }
    );
    assert_eq!(f, hex(KEPT_PORT_OUT));
    // Its counters stay with the endpoint as configured, and closing the flow releases its
    // least-connections count there (the flow is found again by its port-0 endpoint).
    let counters = fx.engine.endpoint_counters();
    assert_eq!(counters.len(), 1);
    assert_eq!((counters[0].1.port, counters[0].2.flows_active), (0, 1));
    let snap = fx.snap.clone();
    fx.engine.sweep(fx.now + 3_600_000, 4096, &snap);
    assert_eq!(fx.engine.conntrack().len(), 0);
    let counters = fx.engine.endpoint_counters();
    assert_eq!((counters[0].1.port, counters[0].2.flows_active), (0, 0));
}

// Established flows of an endpoint a health probe marked down (`onEndpointDown`). The
// client's ACK after SYN_IN / REPLY_IN, and the RST oxlb answers it with from the VIP, made
// with scapy.
const ACK_IN: &str = "0200000000010200000000020800450000280002400040064aa6c6120002c61264019c4007e4000003e9000023295010faf0f9840000";
const RST_OUT: &str = "0200000000020200000000010800450000280000400040064aa8c6126401c612000207e49c40000023290000000050040000f86a0000";

#[test]
fn with_reset_a_clients_segment_to_a_down_endpoint_gets_a_rst_from_the_vip_and_the_flow_ends() {
    let mut fx = Fixture::new()
        .service(Proto::Tcp, &[1, 2])
        .next_hop(1)
        .next_hop(2);
    fx.run(&mut hex(SYN_IN), LB0_IF);
    fx.run(&mut hex(REPLY_IN), LB1_IF);
    fx.endpoint_down(1, OnEndpointDown::Reset);
    let mut f = hex(ACK_IN);
    let v = fx.run(&mut f, LB0_IF);
    assert_eq!(
        v,
        Verdict::TransmitFirst {
            ifindex: LB0_IF,
            len: 54
        }
    );
    assert_eq!(f[..54], hex(RST_OUT));
    assert_eq!(fx.engine.conntrack().len(), 0, "the flow ended");
    assert_eq!(fx.engine.counters.flows_ended_endpoint_down, 1);
}

#[test]
fn with_reset_the_down_endpoints_own_packets_are_dropped_and_the_flow_waits_for_the_client() {
    let mut fx = Fixture::new().service(Proto::Tcp, &[1, 2]).next_hop(1);
    fx.run(&mut hex(SYN_IN), LB0_IF);
    fx.endpoint_down(1, OnEndpointDown::Reset);
    assert_eq!(
        fx.run(&mut hex(REPLY_IN), LB1_IF),
        Verdict::Drop(DropReason::EndpointDown)
    );
    assert_eq!(fx.engine.conntrack().len(), 1);
    assert_eq!(fx.engine.counters.dropped(DropReason::EndpointDown), 1);
}

#[test]
fn with_keep_established_flows_to_a_down_endpoint_continue_both_ways() {
    let mut fx = Fixture::new().service(Proto::Tcp, &[1, 2]).next_hop(1);
    fx.run(&mut hex(SYN_IN), LB0_IF);
    fx.endpoint_down(1, OnEndpointDown::Keep);
    let mut r = hex(REPLY_IN);
    assert_eq!(
        fx.run(&mut r, LB1_IF),
        Verdict::Transmit { ifindex: LB0_IF }
    );
    assert_eq!(r, hex(REPLY_OUT));
    assert_eq!(
        fx.run(&mut hex(ACK_IN), LB0_IF),
        Verdict::Transmit { ifindex: LB1_IF }
    );
    assert_eq!(fx.engine.counters.flows_ended_endpoint_down, 0);
}

#[test]
fn with_reset_a_udp_datagram_of_a_flow_to_a_down_endpoint_opens_a_flow_to_a_live_one() {
    let mut fx = Fixture::new()
        .service(Proto::Udp, &[1, 2])
        .next_hop(1)
        .next_hop(2);
    let mut first = hex(UDP_IN);
    fx.run(&mut first, LB0_IF);
    assert_eq!(first[30..34], backend(1).octets());
    fx.endpoint_down(1, OnEndpointDown::Reset);
    let mut next = hex(UDP_IN);
    assert_eq!(
        fx.run(&mut next, LB0_IF),
        Verdict::Transmit { ifindex: LB1_IF }
    );
    assert_eq!(
        next[30..34],
        backend(2).octets(),
        "moved to the live endpoint"
    );
    assert!(l4_checksum_ok(&next[14..]));
    assert_eq!(fx.engine.conntrack().len(), 1);
    assert_eq!(fx.engine.counters.flows_ended_endpoint_down, 1);
}

#[test]
fn with_reset_an_ended_full_nat_flow_gives_its_snat_port_back() {
    let mut fx = Fixture::new()
        .snat_ports(SNAT_FIRST, SNAT_FIRST + 99)
        .service(Proto::Tcp, &[1, 2])
        .next_hop(1)
        .mode(NatMode::FullNat);
    let all = fx.engine.free_snat_ports(VIP.into(), Proto::Tcp);
    fx.run(&mut hex(SYN_IN), LB0_IF);
    assert_eq!(fx.engine.free_snat_ports(VIP.into(), Proto::Tcp), all - 1);
    fx.endpoint_down(1, OnEndpointDown::Reset);
    let v = fx.run(&mut hex(ACK_IN), LB0_IF);
    assert!(matches!(v, Verdict::TransmitFirst { .. }), "{v:?}");
    assert_eq!(fx.engine.free_snat_ports(VIP.into(), Proto::Tcp), all);
}

#[test]
fn with_reset_a_rule_update_that_removes_another_endpoint_ends_no_flow() {
    let mut fx = Fixture::new()
        .service(Proto::Tcp, &[1, 2])
        .next_hop(1)
        .next_hop(2);
    fx.run(&mut hex(SYN_IN), LB0_IF);
    fx.endpoint_down(3, OnEndpointDown::Reset);
    // The rule now has backend 1 only: the flow's endpoint is still there and up.
    fx = fx.service(Proto::Tcp, &[1]);
    for s in fx.snap.services.values_mut() {
        s.on_endpoint_down = OnEndpointDown::Reset;
    }
    fx.snap.generation += 1;
    assert_eq!(
        fx.run(&mut hex(ACK_IN), LB0_IF),
        Verdict::Transmit { ifindex: LB1_IF }
    );
    assert_eq!(fx.engine.counters.flows_ended_endpoint_down, 0);
}
