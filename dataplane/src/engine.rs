//! The per-packet decision: parse, find or create the flow, pick an endpoint, rewrite.
//!
//! The engine is pure with respect to I/O: it takes a frame in place, the current snapshot and
//! the time, and returns a verdict. The worker does the sockets; tests and benchmarks drive
//! the engine with byte arrays.

use crate::accounting::{Accounting, EndpointCounters, EndpointId};
use crate::checksum::{ipv4_header, update16};
use crate::conntrack::{
    ClientL2, Conntrack, Direction, Flow, FlowInfo, FlowKey, FlowState, InsertError, NewFlow,
    Phase, Removal,
};
use crate::icmp_error::{self, Quote, Translation};
use crate::nat::{complete_checksum_v4, rewrite_v4, Rewrite};
use crate::ports::PortPools;
use crate::select::{EndpointKey, FlowTuple, SelectorState, SharedSelection};
use crate::snapshot::{Endpoint, NatMode, PortRange, Proto, Service, ServiceKey, Snapshot};
use crate::stats::{Counters, DropReason};
use crate::wire::{ethernet, icmp, ipv4, sctp, tcp, udp, WireError};
use hashbrown::HashMap;
use std::sync::Arc;

/// How long a TCP flow may take to complete its handshake (from the SYN, refreshed by a
/// retransmitted SYN), and a UDP flow to be answered. Established flows get the service's
/// inactive timeout instead.
pub const NEW_FLOW_TIMEOUT_MS: u64 = 30_000;
/// How long a TCP flow lingers after FINs from both sides or a RST (or a FIN or RST before it
/// was established), for retransmissions and the last ACK.
pub const CLOSING_TIMEOUT_MS: u64 = 10_000;
/// How long an established TCP flow closed by one side only may stay idle (capped by the
/// service's inactive timeout): the other side may still be sending, and a peer that vanished
/// after its FIN must not hold the slot for the full inactive timeout.
pub const HALF_CLOSED_TIMEOUT_MS: u64 = 120_000;
/// Oldest embryonic flows looked at for one holding a SNAT port when the ports run out.
const PORT_RECLAIM_LOOK: usize = 64;
/// Clients a worker remembers per persisting service (about 48 bytes each).
pub const PERSIST_CAPACITY: usize = 4096;

/// What the worker should do with the (already rewritten) frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send the frame out of this interface.
    Transmit {
        ifindex: u32,
    },
    /// Send the first `len` bytes of the frame out of this interface: the engine built a
    /// shorter packet in its place (an ICMP error).
    TransmitShort {
        ifindex: u32,
        len: usize,
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
    dont_fragment: bool,
}

/// What an engine is given at start and keeps for its life.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    pub conntrack_capacity: usize,
    /// This worker's index and the number of workers: they split the SNAT port range.
    pub worker: u16,
    pub workers: u16,
    pub snat_ports: PortRange,
}

/// Selection state shared by all workers, one entry per service (see [`SharedSelection`]).
#[derive(Debug, Default)]
pub struct SharedSelections(std::sync::Mutex<HashMap<ServiceKey, Arc<SharedSelection>>>);

impl SharedSelections {
    /// The shared state of `key`, created on first use (once per service per worker).
    fn of(&self, key: ServiceKey) -> Arc<SharedSelection> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(key).or_default().clone()
    }

    /// Forgets a deleted service's rotation and counts.
    pub fn forget(&self, key: &ServiceKey) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }
}

pub struct Engine {
    conntrack: Conntrack,
    /// Selection state per service (rotation, weights, persistence, flow counts), owned by
    /// this worker: each worker rotates on its own.
    selectors: HashMap<ServiceKey, SelectorState>,
    ports: PortPools,
    /// Traffic per service and endpoint.
    accounting: Accounting,
    /// Present with several workers.
    shared: Option<Arc<SharedSelections>>,
    pub counters: Counters,
}

impl Engine {
    /// An engine for a single worker with the default SNAT port range.
    pub fn new(conntrack_capacity: usize) -> Self {
        Self::with_config(EngineConfig {
            conntrack_capacity,
            worker: 0,
            workers: 1,
            snat_ports: PortRange::default(),
        })
    }

    pub fn with_config(cfg: EngineConfig) -> Self {
        Engine {
            conntrack: Conntrack::with_capacity(cfg.conntrack_capacity),
            selectors: HashMap::new(),
            ports: PortPools::new(cfg.snat_ports, cfg.worker, cfg.workers),
            accounting: Accounting::default(),
            shared: None,
            counters: Counters::default(),
        }
    }

    /// An engine that rotates and counts flows per service together with every other engine
    /// given the same `shared`: one per worker when there are several.
    pub fn with_shared_selection(cfg: EngineConfig, shared: Arc<SharedSelections>) -> Self {
        Engine {
            shared: Some(shared),
            ..Self::with_config(cfg)
        }
    }

    /// Free SNAT ports of this worker for `addr` (for tests and stats).
    pub fn free_snat_ports(&self, addr: std::net::Ipv4Addr, proto: Proto) -> usize {
        self.ports.free(addr, proto)
    }

    /// This worker's traffic per service and endpoint.
    pub fn endpoint_counters(&self) -> Vec<(ServiceKey, EndpointId, EndpointCounters)> {
        self.accounting.snapshot()
    }

    pub fn conntrack(&self) -> &Conntrack {
        &self.conntrack
    }

    /// Copies of up to `max` flows live at `now_ms`, and whether the cap left some out.
    pub fn flows(&self, now_ms: u64, max: usize) -> (Vec<FlowInfo>, bool) {
        self.conntrack.copy_flows(now_ms, max)
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
        let verdict = match self.process_inner(frame, ingress_ifindex, snap, now_ms) {
            Ok(v) => v,
            Err(reason) => {
                self.counters.drop(reason);
                Verdict::Drop(reason)
            }
        };
        self.settle(snap);
        verdict
    }

    /// Removes expired flows, looking at no more than `budget` slots.
    pub fn sweep(&mut self, now_ms: u64, budget: usize, snap: &Snapshot) {
        // Counted in `settle`, with the flows that expired on lookup or made room on insert.
        self.conntrack.sweep(now_ms, budget);
        self.settle(snap);
    }

    /// Ends every flow of a service (it was deleted) and forgets its selection state. A flow
    /// is tracked under the port it came to, so the flows of a port range's other ports are
    /// those to `key`'s address and protocol whose port no rule of `snap` (the snapshot
    /// without the service) covers any more.
    pub fn forget_service(&mut self, key: &ServiceKey, snap: &Snapshot) {
        self.conntrack.forget_service(key);
        let orphans: Vec<_> = self
            .conntrack
            .iter()
            .filter(|f| {
                let s = f.service();
                s.vip == key.vip && s.proto == key.proto && !snap.services.contains_key(&s)
            })
            .map(|f| f.original())
            .collect();
        for original in orphans {
            // Time 0: a lookup that must not expire anything, only find the slot.
            if let Some((slot, _)) = self.conntrack.lookup(&original, 0) {
                self.conntrack.remove(slot);
            }
        }
        self.selectors.remove(key);
        self.settle(snap);
        self.accounting.forget(key);
    }

    /// Releases what removed flows held (their SNAT ports, their endpoint's flow count) and
    /// refreshes the flow gauge.
    fn settle(&mut self, snap: &Snapshot) {
        for r in self.conntrack.drain_removed() {
            match r.cause {
                Removal::Expired => self.counters.flows_expired += 1,
                Removal::Evicted => self.counters.flows_evicted += 1,
                Removal::Ended | Removal::Forgotten => {}
            }
            if let Some((addr, port)) = r.snat {
                self.ports.release(addr, r.proto, port);
            }
            // A flow knows the port it came to; its rule's key is the first port of the range.
            let svc = snap.services.get(&r.service);
            let rule = svc.map_or(r.service, |svc| svc.key);
            self.accounting.close(rule, r.endpoint.into());
            let state = self.selectors.get_mut(&rule);
            if let (Some(state), Some(svc)) = (state, svc) {
                let key = EndpointKey::v4(r.endpoint.addr, r.endpoint.port);
                if let Some(i) = svc.selector.index_of(&key) {
                    state.on_flow_close(&svc.selector, i);
                }
            }
        }
        self.counters.flows_active = self.conntrack.len() as u64;
    }

    fn process_inner(
        &mut self,
        frame: &mut [u8],
        ingress_ifindex: u32,
        snap: &Snapshot,
        now_ms: u64,
    ) -> Result<Verdict, DropReason> {
        if is_icmp_v4(frame) {
            if let Some(quote) = icmp_error::quote(&frame[ethernet::HEADER_LEN..]) {
                return self.translate_icmp_error(frame, &quote, snap, now_ms);
            }
            return self.answer_echo(frame, ingress_ifindex, snap);
        }
        let pkt = parse(frame)?;
        let found = self.conntrack.lookup(&pkt.key, now_ms);
        let (slot, dir) = match found {
            // A client reusing the ports of a connection that is closing opens a new one: it
            // gets a fresh endpoint choice instead of the lingering flow's.
            Some((slot, Direction::Original))
                if is_opening(&pkt) && self.conntrack.flow(slot).state() == FlowState::Closing =>
            {
                self.conntrack.remove(slot);
                self.new_flow(&pkt, ingress_ifindex, snap, now_ms)?
            }
            Some(found) => found,
            // In DNAT mode an endpoint's packets are steered here by their source; those to
            // our own address are the appliance's connections (health probes, an operator's
            // session), which belong to the kernel.
            None if snap.own_addrs.contains(&pkt.key.dst) => {
                let ip_buf = &mut frame[ethernet::HEADER_LEN..];
                complete_checksum_v4(ip_buf, pkt.key.proto).map_err(wire_drop)?;
                return Ok(Verdict::Kernel);
            }
            None => self.new_flow(&pkt, ingress_ifindex, snap, now_ms)?,
        };

        let (phase, expires_at) = advance(
            self.conntrack.flow(slot),
            dir,
            pkt.key.proto,
            pkt.tcp_flags,
            now_ms,
        );
        let flow = self
            .conntrack
            .update(slot, dir, pkt.ip_len, phase, expires_at);
        self.accounting
            .packet(flow.stats_slot(), dir as usize, pkt.ip_len);
        let (endpoint, service, client, mode, snat, original) = (
            flow.endpoint(),
            flow.service(),
            flow.client(),
            flow.mode(),
            flow.snat(),
            flow.original(),
        );

        // The egress link must take the packet as it is (no rewrite changes its length);
        // checked before rewriting, so an error quotes the packet as its sender sent it.
        // The endpoint's next hop is looked up once, for the MTU and for the MACs below.
        let next_hop = match dir {
            Direction::Original => snap.next_hops.get(&endpoint.addr).copied(),
            Direction::Reply => None,
        };
        let egress = match dir {
            Direction::Original => next_hop.map(|nh| nh.ifindex),
            Direction::Reply => Some(client.ifindex),
        };
        if let Some(&mtu) = egress.and_then(|ifindex| snap.link_mtus.get(&ifindex)) {
            if pkt.ip_len > usize::from(mtu) {
                return self.too_big(frame, &pkt, service.vip, mtu, ingress_ifindex);
            }
        }

        let ip_buf = &mut frame[ethernet::HEADER_LEN..];
        let proto = pkt.key.proto;
        match dir {
            Direction::Original => {
                if mode == NatMode::Dsr {
                    complete_checksum_v4(ip_buf, proto).map_err(wire_drop)?;
                } else {
                    rewrite_v4(
                        ip_buf,
                        proto,
                        Rewrite::Destination(endpoint.addr, endpoint.port),
                    )
                    .map_err(wire_drop)?;
                }
                if let Some((addr, port)) = snat {
                    rewrite_v4(ip_buf, proto, Rewrite::Source(addr, port)).map_err(wire_drop)?;
                }
                let Some(nh) = next_hop else {
                    // The kernel can deliver a packet addressed to the endpoint while it learns
                    // the MAC; a DSR packet is still addressed to the VIP, which it cannot.
                    if mode == NatMode::Dsr {
                        return Err(DropReason::NextHopUnresolved);
                    }
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
                rewrite_v4(ip_buf, proto, Rewrite::Source(service.vip, service.port))
                    .map_err(wire_drop)?;
                if snat.is_some() {
                    rewrite_v4(
                        ip_buf,
                        proto,
                        Rewrite::Destination(original.src, original.src_port),
                    )
                    .map_err(wire_drop)?;
                }
                let mut eth = ethernet::Frame::new_checked(&mut *frame).map_err(wire_drop)?;
                eth.set_dst(client.peer_mac);
                eth.set_src(client.own_mac);
                Ok(Verdict::Transmit {
                    ifindex: client.ifindex,
                })
            }
        }
    }

    /// A packet bigger than its egress link: with DF, its sender gets "fragmentation
    /// needed" from `from` (the VIP, the address it talks to) back where it came from, and
    /// lowers its path MTU; without DF it would need fragmenting, which is not done here.
    fn too_big(
        &mut self,
        frame: &mut [u8],
        pkt: &PacketRepr,
        from: std::net::Ipv4Addr,
        mtu: u16,
        ingress_ifindex: u32,
    ) -> Result<Verdict, DropReason> {
        if !pkt.dont_fragment {
            return Err(DropReason::TooBigToForward);
        }
        let len = icmp_error::frag_needed_in_place(frame, from, mtu).map_err(wire_drop)?;
        self.counters.frag_needed_sent += 1;
        Ok(Verdict::TransmitShort {
            ifindex: ingress_ifindex,
            len,
        })
    }

    /// An ICMP error quoting a packet of one of our flows, rewritten like the flow's own
    /// packets (see `icmp_error`): toward the client as from the VIP when it is about a
    /// request we forwarded, toward the endpoint when it is about a reply. An error about no
    /// flow of ours concerns the host's own connections: the kernel's.
    fn translate_icmp_error(
        &mut self,
        frame: &mut [u8],
        quote: &Quote,
        snap: &Snapshot,
        now_ms: u64,
    ) -> Result<Verdict, DropReason> {
        let Some((slot, dir)) = self.conntrack.lookup(&quote.key, now_ms) else {
            return Ok(Verdict::Kernel);
        };
        let flow = self.conntrack.flow(slot);
        let (endpoint, service, client, snat, original) = (
            flow.endpoint(),
            flow.service(),
            flow.client(),
            flow.snat(),
            flow.original(),
        );
        let ip_buf = &mut frame[ethernet::HEADER_LEN..];
        let (dst_mac, src_mac, ifindex) = match dir {
            Direction::Reply => {
                let t = Translation {
                    outer_src: Some(service.vip),
                    outer_dst: original.src,
                    quoted_src: (original.src, original.src_port),
                    quoted_dst: (service.vip, service.port),
                };
                icmp_error::translate(ip_buf, quote, &t).map_err(wire_drop)?;
                (client.peer_mac, client.own_mac, client.ifindex)
            }
            Direction::Original => {
                let t = Translation {
                    outer_src: None,
                    outer_dst: endpoint.addr,
                    quoted_src: (endpoint.addr, endpoint.port),
                    quoted_dst: snat.unwrap_or((original.src, original.src_port)),
                };
                icmp_error::translate(ip_buf, quote, &t).map_err(wire_drop)?;
                let Some(nh) = snap.next_hops.get(&endpoint.addr) else {
                    return Ok(Verdict::Kernel);
                };
                (nh.dst_mac, nh.src_mac, nh.ifindex)
            }
        };
        let mut eth = ethernet::Frame::new_checked(&mut *frame).map_err(wire_drop)?;
        eth.set_dst(dst_mac);
        eth.set_src(src_mac);
        self.counters.icmp_errors_translated += 1;
        Ok(Verdict::Transmit { ifindex })
    }

    fn new_flow(
        &mut self,
        pkt: &PacketRepr,
        ingress_ifindex: u32,
        snap: &Snapshot,
        now_ms: u64,
    ) -> Result<(crate::conntrack::Slot, Direction), DropReason> {
        let k = pkt.key;
        // Every port of a range is a key of its own (see `Snapshot::services`): one lookup.
        // The flow is tracked under the port it came to, so replies leave from that port;
        // the endpoint's port is its own whatever the port, as in loxilb.
        let service = snap
            .services
            .get(&ServiceKey {
                vip: k.dst,
                port: k.dst_port,
                proto: k.proto,
            })
            .ok_or(DropReason::NoFlowNoService)?;
        // Only a connection opening may create state: stray ACKs (after a restart, or a flood)
        // would otherwise fill the table and be sent to endpoints that never saw the SYN.
        match k.proto {
            Proto::Tcp if !is_opening(pkt) => return Err(DropReason::TcpNotSyn),
            Proto::Sctp if !is_opening(pkt) => return Err(DropReason::SctpNotInit),
            _ => {}
        }
        if service.block_new_flows {
            return Err(DropReason::ServiceBlocked);
        }
        if !service.allows(k.src) {
            return Err(DropReason::SourceNotAllowed);
        }
        let (endpoint, chosen) = self.select(service, &k, now_ms)?;
        let snat = match service.mode {
            NatMode::FullNat => Some(service.snat_addr.unwrap_or(service.key.vip)),
            NatMode::OneArm => Some(
                *snap
                    .sources
                    .get(&endpoint.addr)
                    .ok_or(DropReason::NoSourceAddress)?,
            ),
            NatMode::Dnat | NatMode::Dsr => None,
        }
        .map(|addr| {
            self.allocate_port(addr, k.proto, snap, now_ms)
                .map(|port| (addr, port))
        })
        .transpose()?;
        // The tuple the endpoint's answer carries: to our SNAT address and port, or straight
        // to the client. A DSR endpoint answers the client itself; its key only has to be
        // unique, it is never seen.
        let reply = match (snat, service.mode) {
            (Some((addr, port)), _) => FlowKey {
                src: endpoint.addr,
                dst: addr,
                src_port: endpoint.port,
                dst_port: port,
                proto: k.proto,
            },
            (None, NatMode::Dsr) => FlowKey {
                src: endpoint.addr,
                dst: k.src,
                src_port: k.dst_port,
                dst_port: k.src_port,
                proto: k.proto,
            },
            (None, _) => FlowKey {
                src: endpoint.addr,
                dst: k.src,
                src_port: endpoint.port,
                dst_port: k.src_port,
                proto: k.proto,
            },
        };
        let flow = NewFlow {
            original: k,
            reply,
            mode: service.mode,
            endpoint,
            client: ClientL2 {
                ifindex: ingress_ifindex,
                peer_mac: pkt.eth_src,
                own_mac: pkt.eth_dst,
            },
            expires_at: now_ms + NEW_FLOW_TIMEOUT_MS,
            idle_ms: service.inactive_timeout.as_millis() as u64,
            stats_slot: self.accounting.slot(service.key, endpoint.into()),
        };
        let stats_slot = flow.stats_slot;
        // A full table may evict an embryonic flow here: its port and its endpoint's count are
        // released with the other removals when the packet is settled.
        let slot = self.conntrack.insert(flow, now_ms).map_err(|e| {
            if let Some((addr, port)) = snat {
                self.ports.release(addr, k.proto, port);
            }
            match e {
                InsertError::Full => DropReason::ConntrackFull,
                InsertError::Collision => DropReason::TupleCollision,
            }
        })?;
        if let Some(state) = self.selectors.get_mut(&service.key) {
            state.on_flow_open(&service.selector, chosen);
        }
        self.accounting.opened(stats_slot);
        self.counters.flows_created += 1;
        Ok((slot, Direction::Original))
    }

    /// A SNAT port for a new flow; when all are taken, the oldest embryonic flow holding one
    /// gives it up (as a full table does its slot), so a flood cannot starve real clients.
    fn allocate_port(
        &mut self,
        addr: std::net::Ipv4Addr,
        proto: Proto,
        snap: &Snapshot,
        now_ms: u64,
    ) -> Result<u16, DropReason> {
        if let Some(port) = self.ports.allocate(addr, proto) {
            return Ok(port);
        }
        if !self
            .conntrack
            .evict_for_port(addr, proto, now_ms, PORT_RECLAIM_LOOK)
        {
            return Err(DropReason::SnatPortsExhausted);
        }
        // Releases the evicted flow's port (and its endpoint's flow count) now.
        self.settle(snap);
        self.ports
            .allocate(addr, proto)
            .ok_or(DropReason::SnatPortsExhausted)
    }

    /// Answers an ICMP echo request to a VIP in place: addresses and MACs swapped, type set to
    /// reply, sent back out where it came in.
    fn answer_echo(
        &mut self,
        frame: &mut [u8],
        ingress_ifindex: u32,
        snap: &Snapshot,
    ) -> Result<Verdict, DropReason> {
        let ip_buf = &mut frame[ethernet::HEADER_LEN..];
        let mut ip = ipv4::Packet::new_checked(&mut *ip_buf).map_err(wire_drop)?;
        if ip.is_fragment() {
            return Err(DropReason::Fragment);
        }
        let (src, dst) = (ip.src(), ip.dst());
        if !snap.vips.contains(&dst) {
            return Err(DropReason::NoFlowNoService);
        }
        let (_, l4) = ip.split_l4_mut();
        let mut msg = icmp::Message::new_checked(&mut *l4).map_err(wire_drop)?;
        if msg.msg_type() != icmp::TYPE_ECHO_REQUEST || msg.code() != 0 {
            return Err(DropReason::IcmpNotEcho);
        }
        msg.set_type(icmp::TYPE_ECHO_REPLY);
        let c = update16(
            msg.checksum(),
            u16::from(icmp::TYPE_ECHO_REQUEST) << 8,
            u16::from(icmp::TYPE_ECHO_REPLY) << 8,
        );
        msg.set_checksum(c);
        ip.set_src(dst);
        ip.set_dst(src);
        ip.set_ttl(64);
        ip.set_checksum(0);
        let c = ipv4_header(ip.header());
        ip.set_checksum(c);
        let mut eth = ethernet::Frame::new_checked(&mut *frame).map_err(wire_drop)?;
        let (peer, own) = (eth.src(), eth.dst());
        eth.set_dst(peer);
        eth.set_src(own);
        self.counters.icmp_echo_replies += 1;
        Ok(Verdict::Transmit {
            ifindex: ingress_ifindex,
        })
    }

    /// Picks the endpoint of a new flow; returns it and its index in the service's list.
    fn select(
        &mut self,
        service: &Service,
        k: &FlowKey,
        now_ms: u64,
    ) -> Result<(Endpoint, usize), DropReason> {
        let shared = &self.shared;
        let state = self
            .selectors
            .entry(service.key)
            .or_insert_with(|| match shared {
                Some(s) => SelectorState::with_shared(
                    &service.selector,
                    PERSIST_CAPACITY,
                    s.of(service.key),
                ),
                None => SelectorState::new(&service.selector, PERSIST_CAPACITY),
            });
        let tuple = FlowTuple::v4(k.src, k.src_port, k.dst, k.dst_port, k.proto as u8);
        // An endpoint without a health verdict (a shorter `live`) counts as live.
        let i = state
            .pick(
                &service.selector,
                &tuple,
                |i| service.live.get(i).copied().unwrap_or(true),
                now_ms,
                service.inactive_timeout.as_millis() as u64,
            )
            .ok_or(DropReason::NoEndpoint)?;
        let ep = *service.endpoints.get(i).ok_or(DropReason::NoEndpoint)?;
        Ok((ep, i))
    }
}

/// The phase and expiry of `flow` after a packet in direction `dir`.
fn advance(flow: &Flow, dir: Direction, proto: Proto, tcp_flags: u8, now_ms: u64) -> (Phase, u64) {
    let phase = next_phase(flow.phase(), flow.mode(), dir, proto, tcp_flags);
    let timeout = match phase {
        Phase::Opening | Phase::Answered => NEW_FLOW_TIMEOUT_MS,
        Phase::Established => flow.idle_ms(),
        Phase::HalfClosed(_) => HALF_CLOSED_TIMEOUT_MS.min(flow.idle_ms()),
        Phase::Closing | Phase::Aborted => CLOSING_TIMEOUT_MS,
    };
    (phase, now_ms.saturating_add(timeout))
}

/// TCP is established only once the client acknowledges the endpoint's SYN-ACK, so SYNs from
/// spoofed sources (whose SYN-ACK nobody acknowledges) stay embryonic, short-lived and
/// evictable. A DSR balancer never sees the endpoint's packets: the client's ACK alone
/// establishes. UDP is established by the first answer.
fn next_phase(phase: Phase, mode: NatMode, dir: Direction, proto: Proto, flags: u8) -> Phase {
    match proto {
        Proto::Udp => {
            return match phase {
                Phase::Opening if dir == Direction::Reply => Phase::Established,
                p => p,
            }
        }
        Proto::Sctp => return next_sctp_phase(phase, mode, dir, flags),
        Proto::Tcp => {}
    }
    if flags & tcp::FLAG_RST != 0 {
        return if phase.is_embryonic() {
            Phase::Aborted
        } else {
            Phase::Closing
        };
    }
    if flags & tcp::FLAG_FIN != 0 {
        return match phase {
            Phase::Opening | Phase::Answered | Phase::Aborted => Phase::Aborted,
            Phase::Established => Phase::HalfClosed(dir),
            Phase::HalfClosed(first) if first != dir => Phase::Closing,
            p => p,
        };
    }
    let client_ack =
        dir == Direction::Original && flags & (tcp::FLAG_SYN | tcp::FLAG_ACK) == tcp::FLAG_ACK;
    match phase {
        Phase::Opening if dir == Direction::Reply => Phase::Answered,
        Phase::Opening if client_ack && mode == NatMode::Dsr => Phase::Established,
        Phase::Answered if client_ack => Phase::Established,
        p => p,
    }
}

/// SCTP's four-way handshake mirrors TCP's rule: INIT, INIT ACK, then the client's COOKIE
/// ECHO establishes (a spoofed INIT never gets that far). ABORT ends at once; SHUTDOWN from
/// one side half-closes, SHUTDOWN ACK and SHUTDOWN COMPLETE close.
fn next_sctp_phase(phase: Phase, mode: NatMode, dir: Direction, chunk: u8) -> Phase {
    match chunk {
        sctp::CHUNK_ABORT if phase.is_embryonic() => Phase::Aborted,
        sctp::CHUNK_ABORT => Phase::Closing,
        sctp::CHUNK_SHUTDOWN => match phase {
            Phase::Established => Phase::HalfClosed(dir),
            p => p,
        },
        sctp::CHUNK_SHUTDOWN_ACK | sctp::CHUNK_SHUTDOWN_COMPLETE if !phase.is_embryonic() => {
            Phase::Closing
        }
        sctp::CHUNK_INIT_ACK if phase == Phase::Opening && dir == Direction::Reply => {
            Phase::Answered
        }
        sctp::CHUNK_COOKIE_ECHO if dir == Direction::Original => match phase {
            Phase::Answered => Phase::Established,
            Phase::Opening if mode == NatMode::Dsr => Phase::Established,
            p => p,
        },
        _ => phase,
    }
}

/// An IPv4 frame carrying ICMP (checked cheaply before the TCP/UDP parse).
fn is_icmp_v4(frame: &[u8]) -> bool {
    frame.len() > ethernet::HEADER_LEN + 9
        && frame[12..14] == ethernet::ETHERTYPE_IPV4.to_be_bytes()
        && frame[ethernet::HEADER_LEN + 9] == ipv4::PROTO_ICMP
}

/// A TCP SYN without ACK or RST, or an SCTP INIT: the only packets allowed to open a flow of
/// a connection-oriented protocol.
fn is_opening(pkt: &PacketRepr) -> bool {
    match pkt.key.proto {
        Proto::Tcp => {
            pkt.tcp_flags & (tcp::FLAG_SYN | tcp::FLAG_ACK | tcp::FLAG_RST) == tcp::FLAG_SYN
        }
        Proto::Sctp => pkt.tcp_flags == sctp::CHUNK_INIT,
        Proto::Udp => false,
    }
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
        // SCTP's control bits are its first chunk's type (INIT, ABORT, SHUTDOWN, ...).
        Proto::Sctp => {
            let p = sctp::Packet::new_checked(l4).map_err(wire_drop)?;
            (p.src_port(), p.dst_port(), p.first_chunk())
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
        dont_fragment: ip.dont_fragment(),
    })
}
