//! The per-packet decision: parse, find or create the flow, pick an endpoint, rewrite.
//!
//! The engine is pure with respect to I/O: it takes a frame in place, the current snapshot and
//! the time, and returns a verdict. The worker does the sockets; tests and benchmarks drive
//! the engine with byte arrays.

use crate::conntrack::{ClientL2, Conntrack, Direction, Flow, FlowKey, FlowState, InsertError};
use crate::nat::{rewrite_v4, Rewrite};
use crate::snapshot::{Endpoint, Proto, Selection, Service, ServiceKey, Snapshot};
use crate::stats::{Counters, DropReason};
use crate::wire::{ethernet, ipv4, tcp, udp, WireError};
use hashbrown::HashMap;

/// How long a TCP flow may wait for its first reply, and a UDP flow for its first answer.
pub const NEW_FLOW_TIMEOUT_MS: u64 = 30_000;
/// How long a TCP flow lingers after FIN or RST, for retransmissions and the last ACK.
pub const CLOSING_TIMEOUT_MS: u64 = 10_000;

/// What the worker should do with the (already rewritten) frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send the frame out of this interface.
    Transmit {
        ifindex: u32,
    },
    /// The next hop's MAC is unknown: hand the IP packet (the frame minus its Ethernet header)
    /// to the kernel, which resolves the neighbour and queues the packet meanwhile.
    Kernel,
    Drop(DropReason),
}

/// What a parsed packet looks like, for decisions.
#[derive(Debug, Clone, Copy)]
struct PacketRepr {
    key: FlowKey,
    tcp_flags: u8,
    eth_src: [u8; 6],
    eth_dst: [u8; 6],
    ip_len: usize,
}

pub struct Engine {
    conntrack: Conntrack,
    /// Next rotation index per service. Worker-local: each worker rotates on its own.
    rotation: HashMap<ServiceKey, usize>,
    pub counters: Counters,
}

impl Engine {
    pub fn new(conntrack_capacity: usize) -> Self {
        Engine {
            conntrack: Conntrack::with_capacity(conntrack_capacity),
            rotation: HashMap::new(),
            counters: Counters::default(),
        }
    }

    pub fn conntrack(&self) -> &Conntrack {
        &self.conntrack
    }

    /// Decides about one frame received on `ingress_ifindex` and rewrites it in place.
    pub fn process(
        &mut self,
        frame: &mut [u8],
        ingress_ifindex: u32,
        snap: &Snapshot,
        now_ms: u64,
    ) -> Verdict {
        self.counters.rx_packets += 1;
        match self.process_inner(frame, ingress_ifindex, snap, now_ms) {
            Ok(v) => v,
            Err(reason) => {
                self.counters.drop(reason);
                Verdict::Drop(reason)
            }
        }
    }

    /// Removes expired flows, looking at no more than `budget` slots.
    pub fn sweep(&mut self, now_ms: u64, budget: usize) {
        let n = self.conntrack.sweep(now_ms, budget);
        self.counters.flows_expired += n as u64;
        self.counters.flows_active = self.conntrack.len() as u64;
    }

    /// Ends every flow of a service (it was deleted) and forgets its rotation.
    pub fn forget_service(&mut self, key: &ServiceKey) {
        self.conntrack.forget_service(key);
        self.rotation.remove(key);
        self.counters.flows_active = self.conntrack.len() as u64;
    }

    fn process_inner(
        &mut self,
        frame: &mut [u8],
        ingress_ifindex: u32,
        snap: &Snapshot,
        now_ms: u64,
    ) -> Result<Verdict, DropReason> {
        let pkt = parse(frame)?;
        let found = self.conntrack.lookup(&pkt.key, now_ms);
        let (slot, dir) = match found {
            // A client reusing the ports of a connection that is closing opens a new one: it
            // gets a fresh endpoint choice instead of the lingering flow's.
            Some((slot, Direction::Original))
                if is_opening(&pkt)
                    && self.conntrack.flow_mut(slot).state == FlowState::Closing =>
            {
                self.conntrack.remove(slot);
                self.new_flow(&pkt, ingress_ifindex, snap, now_ms)?
            }
            Some(found) => found,
            None => self.new_flow(&pkt, ingress_ifindex, snap, now_ms)?,
        };

        let flow = self.conntrack.flow_mut(slot);
        let d = dir as usize;
        flow.packets[d] += 1;
        flow.bytes[d] += pkt.ip_len as u64;
        advance(flow, dir, pkt.key.proto, pkt.tcp_flags, now_ms);
        let (endpoint, service, client) = (flow.endpoint, flow.service, flow.client);

        let ip_buf = &mut frame[ethernet::HEADER_LEN..];
        match dir {
            Direction::Original => {
                rewrite_v4(
                    ip_buf,
                    pkt.key.proto,
                    Rewrite::Destination(endpoint.addr, endpoint.port),
                )
                .map_err(wire_drop)?;
                let Some(nh) = snap.next_hops.get(&endpoint.addr) else {
                    return Ok(Verdict::Kernel);
                };
                let mut eth = ethernet::Frame::new_checked(&mut *frame).map_err(wire_drop)?;
                eth.set_dst(nh.dst_mac);
                eth.set_src(nh.src_mac);
                Ok(Verdict::Transmit {
                    ifindex: nh.ifindex,
                })
            }
            Direction::Reply => {
                rewrite_v4(
                    ip_buf,
                    pkt.key.proto,
                    Rewrite::Source(service.vip, service.port),
                )
                .map_err(wire_drop)?;
                let mut eth = ethernet::Frame::new_checked(&mut *frame).map_err(wire_drop)?;
                eth.set_dst(client.peer_mac);
                eth.set_src(client.own_mac);
                Ok(Verdict::Transmit {
                    ifindex: client.ifindex,
                })
            }
        }
    }

    fn new_flow(
        &mut self,
        pkt: &PacketRepr,
        ingress_ifindex: u32,
        snap: &Snapshot,
        now_ms: u64,
    ) -> Result<(crate::conntrack::Slot, Direction), DropReason> {
        let k = pkt.key;
        let skey = ServiceKey {
            vip: k.dst,
            port: k.dst_port,
            proto: k.proto,
        };
        let service = snap
            .services
            .get(&skey)
            .ok_or(DropReason::NoFlowNoService)?;
        // Only a connection opening may create state: stray ACKs (after a restart, or a flood)
        // would otherwise fill the table and be sent to endpoints that never saw the SYN.
        if k.proto == Proto::Tcp && !is_opening(pkt) {
            return Err(DropReason::TcpNotSyn);
        }
        let endpoint = self.select(service)?;
        let flow = Flow {
            original: k,
            reply: FlowKey {
                src: endpoint.addr,
                dst: k.src,
                src_port: endpoint.port,
                dst_port: k.src_port,
                proto: k.proto,
            },
            service: skey,
            endpoint,
            client: ClientL2 {
                ifindex: ingress_ifindex,
                peer_mac: pkt.eth_src,
                own_mac: pkt.eth_dst,
            },
            state: FlowState::New,
            expires_at: now_ms + NEW_FLOW_TIMEOUT_MS,
            idle_ms: service.inactive_timeout.as_millis() as u64,
            packets: [0; 2],
            bytes: [0; 2],
        };
        let slot = self.conntrack.insert(flow).map_err(|e| match e {
            InsertError::Full => DropReason::ConntrackFull,
            InsertError::Collision => DropReason::TupleCollision,
        })?;
        self.counters.flows_created += 1;
        self.counters.flows_active = self.conntrack.len() as u64;
        Ok((slot, Direction::Original))
    }

    fn select(&mut self, service: &Service) -> Result<Endpoint, DropReason> {
        if service.endpoints.is_empty() {
            return Err(DropReason::NoEndpoint);
        }
        match service.selection {
            Selection::RoundRobin => {
                let next = self.rotation.entry(service.key).or_insert(0);
                let ep = service.endpoints[*next % service.endpoints.len()];
                *next = (*next + 1) % service.endpoints.len();
                Ok(ep)
            }
        }
    }
}

/// Moves the flow's state and expiry on for a packet in direction `dir`.
fn advance(flow: &mut Flow, dir: Direction, proto: Proto, tcp_flags: u8, now_ms: u64) {
    if proto == Proto::Tcp && tcp_flags & (tcp::FLAG_FIN | tcp::FLAG_RST) != 0 {
        flow.state = FlowState::Closing;
    } else if dir == Direction::Reply && flow.state == FlowState::New {
        flow.state = FlowState::Established;
    }
    flow.expires_at = now_ms
        + match flow.state {
            FlowState::New => NEW_FLOW_TIMEOUT_MS,
            FlowState::Established => flow.idle_ms,
            FlowState::Closing => CLOSING_TIMEOUT_MS,
        };
}

/// A TCP SYN without ACK or RST: the only packet allowed to open a TCP flow.
fn is_opening(pkt: &PacketRepr) -> bool {
    pkt.key.proto == Proto::Tcp
        && pkt.tcp_flags & (tcp::FLAG_SYN | tcp::FLAG_ACK | tcp::FLAG_RST) == tcp::FLAG_SYN
}

fn wire_drop(e: WireError) -> DropReason {
    match e {
        WireError::Truncated => DropReason::Truncated,
        WireError::Malformed => DropReason::Malformed,
    }
}

fn parse(frame: &[u8]) -> Result<PacketRepr, DropReason> {
    let eth = ethernet::Frame::new_checked(frame).map_err(wire_drop)?;
    if eth.ethertype() != ethernet::ETHERTYPE_IPV4 {
        return Err(DropReason::NotIpv4);
    }
    let ip = ipv4::Packet::new_checked(&frame[ethernet::HEADER_LEN..]).map_err(wire_drop)?;
    if ip.is_fragment() {
        return Err(DropReason::Fragment);
    }
    let proto = Proto::from_ip_proto(ip.protocol()).ok_or(DropReason::UnsupportedProtocol)?;
    let l4 = &frame[ethernet::HEADER_LEN + ip.header_len()..ethernet::HEADER_LEN + ip.total_len()];
    let (src_port, dst_port, tcp_flags) = match proto {
        Proto::Tcp => {
            let s = tcp::Segment::new_checked(l4).map_err(wire_drop)?;
            (s.src_port(), s.dst_port(), s.flags())
        }
        Proto::Udp => {
            let d = udp::Datagram::new_checked(l4).map_err(wire_drop)?;
            (d.src_port(), d.dst_port(), 0)
        }
    };
    Ok(PacketRepr {
        key: FlowKey {
            src: ip.src(),
            dst: ip.dst(),
            src_port,
            dst_port,
            proto,
        },
        tcp_flags,
        eth_src: eth.src(),
        eth_dst: eth.dst(),
        ip_len: ip.total_len(),
    })
}
