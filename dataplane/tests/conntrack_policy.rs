//! The connection table under pressure and over time, driven through the engine: a flood of
//! new flows into a full table, and how long a flow lives in each phase of its life.

use oxlb_dataplane::checksum;
use oxlb_dataplane::conntrack::{FlowInfo, FlowState};
use oxlb_dataplane::engine::{
    Engine, EngineConfig, Verdict, CLOSING_TIMEOUT_MS, HALF_CLOSED_TIMEOUT_MS, NEW_FLOW_TIMEOUT_MS,
};
use oxlb_dataplane::select::Algorithm;
use oxlb_dataplane::snapshot::{
    Endpoint, NatMode, NextHop, PortRange, Proto, Service, ServiceKey, Snapshot,
};
use oxlb_dataplane::stats::DropReason;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

mod common;
use common::Rng;

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
const VIP_PORT: u16 = 2020;
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const ENDPOINT: Ipv4Addr = Ipv4Addr::new(198, 18, 31, 1);
const CLIENT_IF: u32 = 2;
const ENDPOINT_IF: u32 = 3;
const SERVICE_TIMEOUT_MS: u64 = 1_800_000;

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const SYN_ACK: u8 = 0x12;
const FIN_ACK: u8 = 0x11;
const RST: u8 = 0x04;

/// An Ethernet frame carrying TCP (`flags`) or UDP (`flags` ignored) with complete checksums.
fn frame(proto: Proto, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8) -> Vec<u8> {
    let l4_len = if proto == Proto::Tcp { 20 } else { 8 };
    let ip_len = 20 + l4_len;
    let mut f = vec![0u8; 14 + ip_len];
    f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = proto as u8;
    ip[12..16].copy_from_slice(&src.0.octets());
    ip[16..20].copy_from_slice(&dst.0.octets());
    let c = checksum::ipv4_header(&ip[..20]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let l4 = &mut ip[20..];
    l4[0..2].copy_from_slice(&src.1.to_be_bytes());
    l4[2..4].copy_from_slice(&dst.1.to_be_bytes());
    let field = if proto == Proto::Tcp {
        l4[12] = 0x50;
        l4[13] = flags;
        l4[14..16].copy_from_slice(&1000u16.to_be_bytes());
        16
    } else {
        l4[4..6].copy_from_slice(&8u16.to_be_bytes());
        6
    };
    let pseudo = checksum::pseudo_header_v4(src.0, dst.0, proto as u8, l4_len);
    let c = checksum::l4_full(l4, field, pseudo);
    l4[field..field + 2].copy_from_slice(&c.to_be_bytes());
    f
}

/// One engine with one service on VIP:2020 and one endpoint, driven packet by packet.
struct Lb {
    engine: Engine,
    snap: Snapshot,
    proto: Proto,
    now: u64,
}

impl Lb {
    fn new(capacity: usize, mode: NatMode, proto: Proto) -> Lb {
        let engine = Engine::with_config(EngineConfig {
            conntrack_capacity: capacity,
            conntrack_capacity_v6: capacity,
            worker: 0,
            workers: 1,
            snat_ports: PortRange::default(),
        });
        let mut lb = Lb {
            engine,
            snap: Snapshot::default(),
            proto,
            now: 1,
        };
        let key = ServiceKey {
            vip: IpAddr::from(VIP),
            port: VIP_PORT,
            proto,
        };
        let endpoints = vec![Endpoint {
            addr: IpAddr::from(ENDPOINT),
            port: 8080,
            weight: 1,
        }];
        let service = Service::new(
            key,
            "web".into(),
            mode,
            Algorithm::RoundRobin,
            endpoints,
            Duration::from_millis(SERVICE_TIMEOUT_MS),
        )
        .expect("a valid service");
        lb.snap.services.insert(key, service);
        lb.snap.vips.insert(IpAddr::from(VIP));
        lb.snap.next_hops.insert(
            IpAddr::from(ENDPOINT),
            NextHop {
                ifindex: ENDPOINT_IF,
                src_mac: [2, 0, 0, 0, 1, 0xfe],
                dst_mac: [2, 0, 0, 0, 1, 1],
            },
        );
        lb
    }

    /// Gives the source-translating modes `ports` SNAT ports from 45000.
    fn snat_ports(mut self, ports: u16) -> Lb {
        self.engine = Engine::with_config(EngineConfig {
            conntrack_capacity: self.engine.conntrack().capacity(),
            conntrack_capacity_v6: 16,
            worker: 0,
            workers: 1,
            snat_ports: PortRange {
                first: 45000,
                last: 45000 + ports - 1,
            },
        });
        self
    }

    fn client_sends(&mut self, client: Ipv4Addr, port: u16, flags: u8) -> Verdict {
        let mut f = frame(self.proto, (client, port), (VIP, VIP_PORT), flags);
        self.engine.process(&mut f, CLIENT_IF, &self.snap, self.now)
    }

    /// A packet from the endpoint in the flow of the client's `port` (which must be tracked).
    fn endpoint_sends(&mut self, port: u16, flags: u8) -> Verdict {
        let reply = self.flow(port).expect("a tracked flow").reply;
        let mut f = frame(
            self.proto,
            (v4(reply.src), reply.src_port),
            (v4(reply.dst), reply.dst_port),
            flags,
        );
        self.engine
            .process(&mut f, ENDPOINT_IF, &self.snap, self.now)
    }

    fn handshake(&mut self, client: Ipv4Addr, port: u16) {
        for v in [
            self.client_sends(client, port, SYN),
            self.endpoint_sends(port, SYN_ACK),
            self.client_sends(client, port, ACK),
        ] {
            assert!(matches!(v, Verdict::Transmit { .. }), "{v:?}");
        }
        assert_eq!(self.state(port), Some(FlowState::Established));
    }

    /// The flow of the client's `port` (from `CLIENT`) if it is live now.
    fn flow(&self, port: u16) -> Option<FlowInfo> {
        let (flows, _) = self.engine.flows(self.now, usize::MAX);
        flows
            .into_iter()
            .find(|f| f.original.src == CLIENT && f.original.src_port == port)
    }

    fn state(&self, port: u16) -> Option<FlowState> {
        self.flow(port).map(|f| f.state)
    }

    /// Moves the clock on and lets the sweep see the whole table.
    fn wait(&mut self, ms: u64) {
        self.now += ms;
        let capacity = self.engine.conntrack().capacity();
        self.engine.sweep(self.now, capacity, &self.snap);
    }

    /// Whether the flow of `port` is still live `ms` after its last packet and gone 2 ms later.
    fn lives_exactly(&mut self, port: u16, ms: u64) -> bool {
        self.wait(ms - 1);
        let before = self.state(port).is_some();
        self.wait(2);
        before && self.state(port).is_none()
    }
}

/// A random client address in 198.18.0.0/16 other than `CLIENT`, and a random port.
fn spoofed(rng: &mut Rng) -> (Ipv4Addr, u16) {
    let host = 0x0100 + rng.below(0xfe00) as u16;
    let [a, b] = host.to_be_bytes();
    (
        Ipv4Addr::new(198, 18, a, b),
        1024 + rng.below(64_000) as u16,
    )
}

#[test]
fn a_syn_flood_into_a_full_table_never_evicts_an_established_flow_nor_grows_the_table() {
    let mut lb = Lb::new(256, NatMode::Dnat, Proto::Tcp);
    let bytes = lb.engine.conntrack().allocated_bytes();
    let established: Vec<u16> = (40_000..40_008).collect();
    for &port in &established {
        lb.handshake(CLIENT, port);
    }
    let mut rng = Rng(7);
    for _ in 0..20_000 {
        let (client, port) = spoofed(&mut rng);
        let v = lb.client_sends(client, port, SYN);
        assert!(matches!(v, Verdict::Transmit { .. }), "{v:?}");
        lb.now += 1;
    }
    let c = &lb.engine.counters;
    assert_eq!(c.dropped(DropReason::ConntrackFull), 0, "room was made");
    assert!(
        c.flows_evicted >= 20_000 - 256,
        "{} evicted",
        c.flows_evicted
    );
    assert_eq!(lb.engine.conntrack().len(), 256);
    assert_eq!(lb.engine.conntrack().allocated_bytes(), bytes);
    for &port in &established {
        assert_eq!(lb.state(port), Some(FlowState::Established), "{port}");
        let v = lb.client_sends(CLIENT, port, ACK);
        assert_eq!(
            v,
            Verdict::Transmit {
                ifindex: ENDPOINT_IF
            }
        );
        let v = lb.endpoint_sends(port, ACK);
        assert_eq!(v, Verdict::Transmit { ifindex: CLIENT_IF });
    }
}

#[test]
fn syns_answered_by_the_endpoint_but_never_acknowledged_are_still_evicted() {
    let mut lb = Lb::new(16, NatMode::Dnat, Proto::Tcp);
    lb.handshake(CLIENT, 40_000);
    for port in 41_000..41_015 {
        lb.client_sends(CLIENT, port, SYN);
        lb.endpoint_sends(port, SYN_ACK);
        assert_eq!(lb.state(port), Some(FlowState::New));
    }
    let v = lb.client_sends(CLIENT, 42_000, SYN);
    assert_eq!(
        v,
        Verdict::Transmit {
            ifindex: ENDPOINT_IF
        }
    );
    assert_eq!(lb.engine.counters.flows_evicted, 1);
    assert_eq!(lb.state(41_000), None, "the oldest went");
    assert_eq!(lb.state(40_000), Some(FlowState::Established));
}

#[test]
fn a_table_full_of_established_flows_refuses_new_flows_and_counts_them() {
    let mut lb = Lb::new(8, NatMode::Dnat, Proto::Tcp);
    for port in 40_000..40_008 {
        lb.handshake(CLIENT, port);
    }
    let bytes = lb.engine.conntrack().allocated_bytes();
    let mut rng = Rng(9);
    for _ in 0..1000 {
        let (client, port) = spoofed(&mut rng);
        let v = lb.client_sends(client, port, SYN);
        assert_eq!(v, Verdict::Drop(DropReason::ConntrackFull));
    }
    assert_eq!(lb.engine.counters.dropped(DropReason::ConntrackFull), 1000);
    assert_eq!(lb.engine.counters.flows_evicted, 0);
    assert_eq!(lb.engine.conntrack().allocated_bytes(), bytes);
    for port in 40_000..40_008 {
        assert_eq!(lb.state(port), Some(FlowState::Established));
    }
}

#[test]
fn evicted_flows_give_their_snat_ports_back() {
    let mut lb = Lb::new(16, NatMode::FullNat, Proto::Tcp).snat_ports(64);
    lb.handshake(CLIENT, 40_000);
    assert_eq!(lb.engine.free_snat_ports(IpAddr::from(VIP), Proto::Tcp), 63);
    let mut rng = Rng(11);
    for _ in 0..5000 {
        let (client, port) = spoofed(&mut rng);
        let v = lb.client_sends(client, port, SYN);
        assert_eq!(
            v,
            Verdict::Transmit {
                ifindex: ENDPOINT_IF
            }
        );
    }
    let c = &lb.engine.counters;
    assert_eq!(c.dropped(DropReason::SnatPortsExhausted), 0);
    assert_eq!(c.flows_evicted, 5000 - 15);
    assert_eq!(
        lb.engine.free_snat_ports(IpAddr::from(VIP), Proto::Tcp),
        64 - 16
    );
    assert_eq!(lb.state(40_000), Some(FlowState::Established));
    lb.wait(NEW_FLOW_TIMEOUT_MS + 1);
    assert_eq!(lb.engine.free_snat_ports(IpAddr::from(VIP), Proto::Tcp), 63);
}

#[test]
fn a_syn_flood_through_full_nat_cannot_take_every_snat_port_from_real_clients() {
    // Room for far more flows than ports: the ports would run out first.
    let mut lb = Lb::new(1024, NatMode::FullNat, Proto::Tcp).snat_ports(32);
    lb.handshake(CLIENT, 40_000);
    let mut rng = Rng(13);
    for _ in 0..2000 {
        let (client, port) = spoofed(&mut rng);
        let v = lb.client_sends(client, port, SYN);
        assert_eq!(
            v,
            Verdict::Transmit {
                ifindex: ENDPOINT_IF
            }
        );
    }
    let c = &lb.engine.counters;
    assert_eq!(c.dropped(DropReason::SnatPortsExhausted), 0);
    assert_eq!(c.flows_evicted, 2000 - 31);
    assert_eq!(lb.engine.conntrack().len(), 32);
    lb.handshake(CLIENT, 40_001);
    assert_eq!(lb.state(40_000), Some(FlowState::Established));
}

#[test]
fn a_syn_without_answer_is_forgotten_after_the_new_flow_timeout() {
    let mut lb = Lb::new(16, NatMode::Dnat, Proto::Tcp);
    lb.client_sends(CLIENT, 40_000, SYN);
    assert_eq!(lb.state(40_000), Some(FlowState::New));
    assert!(lb.lives_exactly(40_000, NEW_FLOW_TIMEOUT_MS));
    assert_eq!(lb.engine.counters.flows_expired, 1);
}

#[test]
fn a_syn_answered_but_never_acknowledged_is_forgotten_after_the_new_flow_timeout() {
    let mut lb = Lb::new(16, NatMode::Dnat, Proto::Tcp);
    lb.client_sends(CLIENT, 40_000, SYN);
    lb.endpoint_sends(40_000, SYN_ACK);
    assert_eq!(lb.state(40_000), Some(FlowState::New));
    assert!(lb.lives_exactly(40_000, NEW_FLOW_TIMEOUT_MS));
}

#[test]
fn an_idle_connection_kept_alive_by_keepalives_lives_until_the_service_timeout() {
    let mut lb = Lb::new(16, NatMode::Dnat, Proto::Tcp);
    lb.handshake(CLIENT, 40_000);
    // Two hours of keepalive probes a minute apart, each acknowledged: far longer than the
    // new-flow and closing timeouts, and than the service timeout itself.
    for _ in 0..120 {
        lb.wait(60_000);
        assert_eq!(lb.state(40_000), Some(FlowState::Established));
        lb.client_sends(CLIENT, 40_000, ACK);
        lb.endpoint_sends(40_000, ACK);
    }
    assert!(lb.lives_exactly(40_000, SERVICE_TIMEOUT_MS));
}

#[test]
fn an_established_connection_keeps_its_slot_for_the_service_timeout_with_no_packet() {
    let mut lb = Lb::new(16, NatMode::Dnat, Proto::Tcp);
    lb.handshake(CLIENT, 40_000);
    assert!(lb.lives_exactly(40_000, SERVICE_TIMEOUT_MS));
}

#[test]
fn fins_from_both_sides_leave_a_connection_closing_for_the_closing_timeout() {
    let mut lb = Lb::new(16, NatMode::Dnat, Proto::Tcp);
    lb.handshake(CLIENT, 40_000);
    lb.client_sends(CLIENT, 40_000, FIN_ACK);
    lb.endpoint_sends(40_000, FIN_ACK);
    lb.client_sends(CLIENT, 40_000, ACK);
    assert_eq!(lb.state(40_000), Some(FlowState::Closing));
    assert!(lb.lives_exactly(40_000, CLOSING_TIMEOUT_MS));
}

#[test]
fn a_rst_leaves_a_connection_closing_for_the_closing_timeout() {
    let mut lb = Lb::new(16, NatMode::Dnat, Proto::Tcp);
    lb.handshake(CLIENT, 40_000);
    lb.endpoint_sends(40_000, RST);
    assert_eq!(lb.state(40_000), Some(FlowState::Closing));
    assert!(lb.lives_exactly(40_000, CLOSING_TIMEOUT_MS));
}

#[test]
fn a_connection_closed_by_one_side_lives_while_the_other_side_sends() {
    let mut lb = Lb::new(16, NatMode::Dnat, Proto::Tcp);
    lb.handshake(CLIENT, 40_000);
    lb.client_sends(CLIENT, 40_000, FIN_ACK);
    assert_eq!(lb.state(40_000), Some(FlowState::Closing));
    for _ in 0..10 {
        lb.wait(CLOSING_TIMEOUT_MS * 2);
        assert!(lb.state(40_000).is_some(), "half closed, still sending");
        lb.endpoint_sends(40_000, ACK);
    }
    assert!(lb.lives_exactly(40_000, HALF_CLOSED_TIMEOUT_MS));
}

#[test]
fn an_unanswered_udp_flow_lives_for_the_new_flow_timeout_and_an_answered_one_for_the_service_timeout(
) {
    let mut lb = Lb::new(16, NatMode::Dnat, Proto::Udp);
    lb.client_sends(CLIENT, 40_000, 0);
    lb.client_sends(CLIENT, 40_001, 0);
    lb.endpoint_sends(40_001, 0);
    assert_eq!(lb.state(40_000), Some(FlowState::New));
    assert_eq!(lb.state(40_001), Some(FlowState::Established));
    assert!(lb.lives_exactly(40_000, NEW_FLOW_TIMEOUT_MS));
    assert!(lb.state(40_001).is_some());
    assert!(lb.lives_exactly(40_001, SERVICE_TIMEOUT_MS - NEW_FLOW_TIMEOUT_MS - 1));
}

#[test]
fn a_dsr_connection_is_established_by_the_clients_ack_alone() {
    let mut lb = Lb::new(16, NatMode::Dsr, Proto::Tcp);
    lb.client_sends(CLIENT, 40_000, SYN);
    assert_eq!(lb.state(40_000), Some(FlowState::New));
    lb.client_sends(CLIENT, 40_000, ACK);
    assert_eq!(lb.state(40_000), Some(FlowState::Established));
    assert!(lb.lives_exactly(40_000, SERVICE_TIMEOUT_MS));
}

#[test]
fn a_clients_ack_before_the_endpoint_answered_does_not_establish_a_connection() {
    // Without this, a flood of SYN then ACK from spoofed sources would pin the table.
    let mut lb = Lb::new(16, NatMode::Dnat, Proto::Tcp);
    lb.client_sends(CLIENT, 40_000, SYN);
    lb.client_sends(CLIENT, 40_000, ACK);
    assert_eq!(lb.state(40_000), Some(FlowState::New));
}

#[test]
fn least_connections_stops_counting_a_connection_as_soon_as_it_is_closed() {
    let mut lb = Lb::new(64, NatMode::Dnat, Proto::Tcp);
    let second = Ipv4Addr::new(198, 18, 31, 2);
    let svc = lb.snap.services.values_mut().next().expect("the service");
    let endpoints = [ENDPOINT, second]
        .into_iter()
        .map(|a| Endpoint {
            addr: a.into(),
            port: 8080,
            weight: 1,
        })
        .collect();
    *svc = Service::new(
        svc.key,
        "web".into(),
        NatMode::Dnat,
        Algorithm::LeastConnections,
        endpoints,
        Duration::from_millis(SERVICE_TIMEOUT_MS),
    )
    .expect("a valid service");
    let hop = lb.snap.next_hops[&IpAddr::from(ENDPOINT)];
    lb.snap.next_hops.insert(second.into(), hop);
    for port in [1000, 1001, 1002] {
        lb.handshake(CLIENT, port);
    }
    let on = |lb: &Lb, port| lb.flow(port).expect("a live flow").endpoint.addr;
    // Three connections over two endpoints: one endpoint carries two of them.
    let (busy, other) = if on(&lb, 1000) == on(&lb, 1002) {
        (on(&lb, 1000), on(&lb, 1001))
    } else {
        (on(&lb, 1001), on(&lb, 1000))
    };
    let busy_ports: Vec<u16> = [1000, 1001, 1002]
        .into_iter()
        .filter(|&p| on(&lb, p) == busy)
        .collect();
    assert_eq!(busy_ports.len(), 2);
    // Both connections of the busy endpoint are reset: they linger for their last packets,
    // but no longer load it, so it is the least loaded now (0 against 1).
    for &port in &busy_ports {
        lb.client_sends(CLIENT, port, RST);
        assert_eq!(lb.state(port), Some(FlowState::Closing));
    }
    lb.client_sends(CLIENT, 2000, SYN);
    assert_eq!(
        on(&lb, 2000),
        busy,
        "the endpoint whose connections closed is least loaded"
    );
    // When the lingering flows finally go, nothing is released twice: both endpoints carry
    // one connection, so the next two go one to each.
    lb.wait(CLOSING_TIMEOUT_MS + 1);
    assert_eq!(lb.state(busy_ports[0]), None);
    lb.client_sends(CLIENT, 2001, SYN);
    lb.client_sends(CLIENT, 2002, SYN);
    let mut last_two = [on(&lb, 2001), on(&lb, 2002)];
    last_two.sort();
    let mut both = [busy, other];
    both.sort();
    assert_eq!(last_two, both);
}

/// An address of these tests' flows, all IPv4.
fn v4(ip: IpAddr) -> Ipv4Addr {
    match ip {
        IpAddr::V4(a) => a,
        IpAddr::V6(a) => panic!("an IPv4 flow has IPv6 address {a}"),
    }
}
