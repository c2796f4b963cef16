//! The IPv6 fixture tests' load balancer: one IPv6 service with one endpoint, the addresses
//! and links the scapy fixtures were built for (client [fd00::2], VIP [fd00:100::1]:2020,
//! endpoint [fd00:31::1]:8080 or 198.18.31.1:8080 behind lb1, our IPv4 source 198.18.31.254,
//! SNAT ports from 45000).

use oxlb_dataplane::engine::{Engine, EngineConfig, Verdict};
use oxlb_dataplane::select::Algorithm;
use oxlb_dataplane::snapshot::{
    Endpoint, NatMode, NextHop, PortRange, Proto, Service, ServiceKey, Snapshot,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

pub const LB0_IF: u32 = 2;
pub const LB1_IF: u32 = 3;
pub const LB1_MAC: [u8; 6] = [2, 0, 0, 0, 1, 0xfe];
pub const B1_MAC: [u8; 6] = [2, 0, 0, 0, 1, 1];
pub const VIP: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 1);
pub const B6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x31, 0, 0, 0, 0, 0, 1);
pub const B4: Ipv4Addr = Ipv4Addr::new(198, 18, 31, 1);
pub const OUR4: Ipv4Addr = Ipv4Addr::new(198, 18, 31, 254);

/// Bytes of room after a frame, as a UMEM frame has: NAT64 replies grow by 20, ICMP errors
/// translated to ICMPv6 by up to 40.
const ROOM: usize = 64;

/// An engine and a snapshot with one service VIP:2020 (`proto`) in `mode` over
/// `endpoint`:8080, whose next hop is known.
pub struct Lb {
    pub snap: Snapshot,
    pub engine: Engine,
}

impl Lb {
    pub fn new(proto: Proto, mode: NatMode, endpoint: IpAddr) -> Lb {
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
            "v6".into(),
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
        // Our IPv4 address toward an IPv4 endpoint (a NAT64 flow's source).
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

    pub fn link_mtu(mut self, ifindex: u32, mtu: u16) -> Lb {
        self.snap.link_mtus.insert(ifindex, mtu);
        self
    }

    /// Runs `frame` through the engine with [`ROOM`] after it; returns the verdict and the
    /// frame as it would leave (at its new length when it grew or shrank).
    pub fn run(&mut self, mut frame: Vec<u8>, ingress: u32) -> (Verdict, Vec<u8>) {
        let len = frame.len();
        frame.resize(len + ROOM, 0);
        let v = self
            .engine
            .process_with_room(&mut frame, len, ingress, &self.snap, 1);
        let out_len = match v {
            Verdict::TransmitFirst { len, .. } => len,
            _ => len,
        };
        frame.truncate(out_len);
        (v, frame)
    }
}
