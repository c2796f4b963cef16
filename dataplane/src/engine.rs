//! The per-packet decision: parse, find or create the flow, pick an endpoint, rewrite.
//!
//! The engine is pure with respect to I/O: it takes a frame in place, the current snapshot and
//! the time, and returns a verdict. The worker does the sockets; tests and benchmarks drive
//! the engine with byte arrays.

use crate::accounting::{Accounting, EndpointCounters, EndpointId, NO_SLOT};
use crate::checksum::{ipv4_header, update16};
use crate::conntrack::{
    ClientL2, Conntrack, Direction, Flow, FlowAddr, FlowInfo, FlowKey, FlowState, InsertError,
    NewFlow, Phase, Removal, Slot,
};
use crate::fragments::{self, FragKey, Piece, Recent, Treatment};
use crate::icmp6_error;
use crate::icmp_error::{self, Quote, Translation};
use crate::nat::{
    complete_checksum_v4, complete_checksum_v6, rewrite_v4, rewrite_v6, Rewrite, Rewrite6,
};
use crate::nat64::{four_to_six, six_to_four};
use crate::ports::PortPools;
use crate::sctp_multihome::Associations;
use crate::select::{EndpointKey, FlowTuple, SelectorState, SharedSelection};
use crate::snapshot::{
    Endpoint, NatMode, NextHop, OnEndpointDown, PortRange, Proto, Service, ServiceKey, Snapshot,
};
use crate::stats::{Counters, DropReason};
use crate::tcp_reset;
use crate::wire::{ethernet, icmp, icmpv6, ipv4, ipv6, sctp, tcp, udp, WireError};
use hashbrown::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
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
    /// Send the first `len` bytes of the buffer out of this interface: the engine built a
    /// packet of another length in its place (an ICMP error, a NAT64 translation).
    TransmitFirst {
        ifindex: u32,
        len: usize,
    },
    /// The next hop's MAC is unknown: hand the IP packet (the frame minus its Ethernet header)
    /// to the kernel, which resolves the neighbour and queues the packet meanwhile.
    Kernel,
    Drop(DropReason),
}

/// What a parsed packet looks like, for decisions; `A` is the address type of the table
/// its flow is in.
#[derive(Debug, Clone, Copy)]
struct PacketRepr<A> {
    key: FlowKey<A>,
    tcp_flags: u8,
    eth_src: [u8; 6],
    eth_dst: [u8; 6],
    ip_len: usize,
    dont_fragment: bool,
    /// The frame is IPv6 (a NAT64 reply is IPv4 in the IPv6 table).
    is_v6: bool,
    /// IPv6 extension headers precede the transport header (kept in place by NAT66).
    extended: bool,
}

/// What an engine is given at start and keeps for its life.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    pub conntrack_capacity: usize,
    /// Flows of the IPv6 table (IPv6 and NAT64 services), whose records are wider.
    pub conntrack_capacity_v6: usize,
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
    tables: Tables,
    /// Selection state per service (rotation, weights, persistence, flow counts), owned by
    /// this worker: each worker rotates on its own.
    selectors: HashMap<ServiceKey, SelectorState>,
    ports: PortPools,
    /// Traffic per service and endpoint.
    accounting: Accounting,
    /// Present with several workers.
    shared: Option<Arc<SharedSelections>>,
    /// What was done to recent first fragments, for their later fragments.
    fragments: Recent<Treatment>,
    /// Multi-homed SCTP associations, for their paths not seen yet.
    associations: Associations,
    /// The snapshot generation the accounting's ending marks were taken from.
    ending_marked: Option<u64>,
    pub counters: Counters,
}

impl Engine {
    /// An engine for a single worker with the default SNAT port range, `conntrack_capacity`
    /// IPv4 flows and a quarter of that for IPv6.
    pub fn new(conntrack_capacity: usize) -> Self {
        Self::with_config(EngineConfig {
            conntrack_capacity,
            // As the appliance's default: IPv6 flows are the minority, and their records wider.
            conntrack_capacity_v6: conntrack_capacity / 4,
            worker: 0,
            workers: 1,
            snat_ports: PortRange::default(),
        })
    }

    pub fn with_config(cfg: EngineConfig) -> Self {
        Engine {
            tables: Tables {
                v4: Conntrack::with_capacity(cfg.conntrack_capacity),
                v6: Conntrack::with_capacity(cfg.conntrack_capacity_v6),
            },
            selectors: HashMap::new(),
            ports: PortPools::new(cfg.snat_ports, cfg.worker, cfg.workers),
            accounting: Accounting::default(),
            shared: None,
            fragments: Recent::default(),
            associations: Associations::default(),
            ending_marked: None,
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
    pub fn free_snat_ports(&self, addr: IpAddr, proto: Proto) -> usize {
        self.ports.free(addr, proto)
    }

    /// This worker's traffic per service and endpoint.
    pub fn endpoint_counters(&self) -> Vec<(ServiceKey, EndpointId, EndpointCounters)> {
        self.accounting.snapshot()
    }

    /// The table of IPv4 flows.
    pub fn conntrack(&self) -> &Conntrack<Ipv4Addr> {
        &self.tables.v4
    }

    /// The table of IPv6 and NAT64 flows.
    pub fn conntrack_v6(&self) -> &Conntrack<Ipv6Addr> {
        &self.tables.v6
    }

    /// Copies of up to `max` flows live at `now_ms` (IPv4 first), and whether the cap left
    /// some out.
    pub fn flows(&self, now_ms: u64, max: usize) -> (Vec<FlowInfo>, bool) {
        let (mut flows, truncated) = self.tables.v4.copy_flows(now_ms, max);
        if truncated {
            return (flows, true);
        }
        let (v6, truncated) = self.tables.v6.copy_flows(now_ms, max - flows.len());
        flows.extend(v6);
        (flows, truncated)
    }

    /// Decides about one frame received on `ingress_ifindex` and rewrites it in place.
    pub fn process(
        &mut self,
        frame: &mut [u8],
        ingress_ifindex: u32,
        snap: &Snapshot,
        now_ms: u64,
    ) -> Verdict {
        let len = frame.len();
        self.process_with_room(frame, len, ingress_ifindex, snap, now_ms)
    }

    /// [`Engine::process`] for a frame in `buf[..len]` whose buffer has room after it: a
    /// NAT64 reply grows by 20 bytes (an IPv6 header is longer than an IPv4 one), which
    /// needs `buf.len() >= len + 20`; without the room it is dropped as truncated.
    pub fn process_with_room(
        &mut self,
        buf: &mut [u8],
        len: usize,
        ingress_ifindex: u32,
        snap: &Snapshot,
        now_ms: u64,
    ) -> Verdict {
        self.counters.rx_packets += 1;
        if self.ending_marked != Some(snap.generation) {
            self.mark_ending(snap);
        }
        let len = len.min(buf.len());
        let verdict = match self.process_inner(buf, len, ingress_ifindex, snap, now_ms) {
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
        self.tables.v4.sweep(now_ms, budget);
        self.tables.v6.sweep(now_ms, budget);
        self.settle(snap);
    }

    /// Marks which (service, endpoint) pairs' flows end at their next packet: those whose
    /// endpoint `snap` has down, in a service that ends them. Once per snapshot, so that a
    /// packet reads one flag at its flow's counter slot.
    fn mark_ending(&mut self, snap: &Snapshot) {
        self.ending_marked = Some(snap.generation);
        self.accounting.mark_ending(|service, endpoint| {
            snap.services.get(&service).is_some_and(|svc| {
                svc.on_endpoint_down == OnEndpointDown::Reset
                    && svc
                        .endpoints
                        .iter()
                        .zip(&svc.live)
                        .any(|(e, &live)| !live && EndpointId::from(*e) == endpoint)
            })
        });
    }

    /// Whether the flow in `slot` ends now (see [`Engine::mark_ending`]).
    fn ends_now<A: Family>(&mut self, slot: Slot, snap: &Snapshot) -> bool {
        let flow = A::table(&mut self.tables).flow(slot);
        let stats_slot = flow.stats_slot();
        if stats_slot != NO_SLOT {
            return self.accounting.ending(stats_slot);
        }
        // A flow whose pair found no counter slot (every slot taken): looked up instead.
        let (service, endpoint) = (flow.service(), flow.endpoint());
        snap.services.get(&service).is_some_and(|svc| {
            svc.on_endpoint_down == OnEndpointDown::Reset
                && endpoint_index(svc, endpoint).is_some_and(|i| svc.live.get(i) == Some(&false))
        })
    }

    /// Ends the flow in `slot`, whose endpoint is down, at this packet of it (in `frame`):
    /// the answer to send, or `None` when the packet is to open a new flow (a UDP datagram,
    /// a TCP SYN or SCTP INIT reusing the tuple). The endpoint's own packets are dropped and
    /// the flow kept for the client's next packet, which ends it: the client is the one to
    /// tell.
    fn end_for_down_endpoint<A: Family>(
        &mut self,
        frame: &mut [u8],
        pkt: &PacketRepr<A>,
        slot: Slot,
        dir: Direction,
        ingress_ifindex: u32,
    ) -> Result<Option<Verdict>, DropReason> {
        if dir == Direction::Reply {
            return Err(DropReason::EndpointDown);
        }
        // Its SNAT port and its endpoint's connection count are released by `settle`.
        A::table(&mut self.tables).remove(slot);
        self.counters.flows_ended_endpoint_down += 1;
        match pkt.key.proto {
            Proto::Udp => Ok(None),
            Proto::Tcp | Proto::Sctp if is_opening(pkt) => Ok(None),
            Proto::Tcp if pkt.tcp_flags & tcp::FLAG_RST == 0 => {
                let len = tcp_reset::answer_in_place(frame).map_err(wire_drop)?;
                Ok(Some(Verdict::TransmitFirst {
                    ifindex: ingress_ifindex,
                    len,
                }))
            }
            // A client's RST ends the connection itself; SCTP restarts with an INIT.
            Proto::Tcp | Proto::Sctp => Err(DropReason::EndpointDown),
        }
    }

    /// Ends every flow of a service (it was deleted) and forgets its selection state. A flow
    /// is tracked under the port it came to, so the flows of a port range's other ports are
    /// those to `key`'s address and protocol whose port no rule of `snap` (the snapshot
    /// without the service) covers any more.
    pub fn forget_service(&mut self, key: &ServiceKey, snap: &Snapshot) {
        forget_in(&mut self.tables.v4, key, snap);
        forget_in(&mut self.tables.v6, key, snap);
        self.selectors.remove(key);
        self.associations.forget(key);
        self.settle(snap);
        self.accounting.forget(key);
    }

    /// Takes a flow of `endpoint` off its service's least-connections count.
    fn release_load(&mut self, snap: &Snapshot, service: ServiceKey, endpoint: Endpoint) {
        let Some(svc) = snap.services.get(&service) else {
            return;
        };
        let index = endpoint_index(svc, endpoint);
        if let (Some(state), Some(i)) = (self.selectors.get_mut(&svc.key), index) {
            state.on_flow_close(&svc.selector, i);
        }
    }

    /// Releases what removed flows held (their SNAT ports, their endpoint's flow count) and
    /// refreshes the flow gauge.
    fn settle(&mut self, snap: &Snapshot) {
        // Borrowed field by field: the tables are drained while the rest is updated, with no
        // copy of the events (this runs after every packet).
        let Engine {
            tables,
            ports,
            accounting,
            selectors,
            counters,
            ..
        } = self;
        let removed = tables.v4.drain_removed().chain(tables.v6.drain_removed());
        for r in removed {
            match r.cause {
                Removal::Expired => counters.flows_expired += 1,
                Removal::Evicted => counters.flows_evicted += 1,
                Removal::Ended | Removal::Forgotten => {}
            }
            if let Some((addr, port)) = r.snat {
                ports.release(addr, r.proto, port);
            }
            // A flow knows the port it came to; its rule's key is the first port of the range.
            let svc = snap.services.get(&r.service);
            let rule = svc.map_or(r.service, |svc| svc.key);
            let index = svc.and_then(|svc| endpoint_index(svc, r.endpoint));
            let configured = match (svc, index) {
                (Some(svc), Some(i)) => svc.endpoints.get(i).copied().unwrap_or(r.endpoint),
                _ => r.endpoint,
            };
            accounting.close(rule, configured.into());
            // A connection that ended released its endpoint's count when it did.
            if r.ended {
                continue;
            }
            if let (Some(state), Some(svc), Some(i)) = (selectors.get_mut(&rule), svc, index) {
                state.on_flow_close(&svc.selector, i);
            }
        }
        counters.flows_active = (tables.v4.len() + tables.v6.len()) as u64;
    }

    fn process_inner(
        &mut self,
        buf: &mut [u8],
        len: usize,
        ingress_ifindex: u32,
        snap: &Snapshot,
        now_ms: u64,
    ) -> Result<Verdict, DropReason> {
        let frame = &mut buf[..len];
        let eth = ethernet::Frame::new_checked(&*frame).map_err(wire_drop)?;
        match eth.ethertype() {
            ethernet::ETHERTYPE_IPV4 => {}
            ethernet::ETHERTYPE_IPV6 => {
                if is_icmp_v6(frame) {
                    return match icmp6_error::try_quote(&frame[ethernet::HEADER_LEN..]) {
                        Ok(Some(quote)) => self.translate_icmp6_error(frame, &quote, snap, now_ms),
                        Ok(None) => self.answer_echo_v6(frame, ingress_ifindex, snap),
                        Err(icmp6_error::QuoteError::CutInExtensionHeaders) => {
                            Err(DropReason::IcmpQuoteTruncated)
                        }
                    };
                }
                // Looked for only behind extension headers, where a Fragment header can be.
                let piece = fragments::fragment_of(frame);
                if let Some((key, Piece::Later)) = piece {
                    return self.follow_fragment(frame, &key, snap, now_ms);
                }
                let pkt = parse_v6(frame)?;
                let verdict = self.forward(buf, len, &pkt, ingress_ifindex, snap, now_ms)?;
                if let Some((key, Piece::First)) = piece {
                    self.remember_fragment(key, &buf[..len], verdict, now_ms);
                }
                return Ok(verdict);
            }
            _ => return Err(DropReason::NotIp),
        }
        // Looked at closely only for the rare fragment.
        let piece = is_fragment_v4(frame)
            .then(|| fragments::fragment_of(frame))
            .flatten();
        if let Some((key, Piece::Later)) = piece {
            return self.follow_fragment(frame, &key, snap, now_ms);
        }
        if is_icmp_v4(frame) {
            if let Some(quote) = icmp_error::quote(&frame[ethernet::HEADER_LEN..]) {
                // A NAT64 flow's IPv4 side is in the IPv6 table (as for its packets, below).
                // Errors are rare enough for the IPv4 table to be looked at twice.
                let in_v4 = self.tables.v4.lookup(&quote.key, now_ms).is_some();
                if !in_v4 && !self.tables.v6.is_empty() {
                    return self.translate_icmp_error_64(buf, len, &quote, snap, now_ms);
                }
                return self.translate_icmp_error(frame, &quote, snap, now_ms);
            }
            return self.answer_echo(frame, ingress_ifindex, snap);
        }
        let pkt = parse(frame)?;
        // An IPv4 packet of a NAT64 flow (an endpoint's reply) is tracked in the IPv6 table
        // under its IPv4-mapped tuple; looked for only when no IPv4 flow has the tuple.
        let found = self.tables.v4.lookup(&pkt.key, now_ms);
        if found.is_none() && !self.tables.v6.is_empty() {
            let mapped = pkt.mapped();
            if let Some(found) = self.tables.v6.lookup(&mapped.key, now_ms) {
                return self.forward_found(
                    buf,
                    len,
                    &mapped,
                    Some(found),
                    ingress_ifindex,
                    snap,
                    now_ms,
                );
            }
        }
        let verdict = self.forward_found(buf, len, &pkt, found, ingress_ifindex, snap, now_ms)?;
        if let Some((key, Piece::First)) = piece {
            self.remember_fragment(key, &buf[..len], verdict, now_ms);
        }
        Ok(verdict)
    }

    /// Remembers how the first fragment of a datagram left (read back from the rewritten
    /// frame), for its later fragments.
    fn remember_fragment(&mut self, key: FragKey, frame: &[u8], verdict: Verdict, now_ms: u64) {
        let ifindex = match verdict {
            Verdict::Transmit { ifindex } => Some(ifindex),
            Verdict::Kernel => None,
            // An ICMP error built in its place, or a drop: nothing for the others to follow.
            Verdict::TransmitFirst { .. } | Verdict::Drop(_) => return,
        };
        let Ok(eth) = ethernet::Frame::new_checked(frame) else {
            return;
        };
        let ip_buf = &frame[ethernet::HEADER_LEN..];
        let addrs: Option<(IpAddr, IpAddr)> = match key {
            FragKey::V4 { .. } => ipv4::Packet::new_checked(ip_buf)
                .ok()
                .map(|ip| (ip.src().into(), ip.dst().into())),
            FragKey::V6 { .. } => ipv6::Packet::new_checked(ip_buf)
                .ok()
                .map(|ip| (ip.src().into(), ip.dst().into())),
        };
        let Some((src, dst)) = addrs else {
            return;
        };
        let t = Treatment {
            src,
            dst,
            eth_src: eth.src(),
            eth_dst: eth.dst(),
            ifindex,
        };
        self.fragments.insert(key, t, now_ms);
    }

    /// A later fragment leaves as its first fragment did. Without a first fragment seen, it
    /// is the host's own (to one of our addresses: the kernel reassembles it) or dropped.
    fn follow_fragment(
        &mut self,
        frame: &mut [u8],
        key: &FragKey,
        snap: &Snapshot,
        now_ms: u64,
    ) -> Result<Verdict, DropReason> {
        let Some(t) = self.fragments.get(key, now_ms) else {
            if snap.own_addrs.contains(&key.dst()) {
                return Ok(Verdict::Kernel);
            }
            return Err(DropReason::Fragment);
        };
        fragments::apply(frame, &t).map_err(wire_drop)?;
        self.counters.fragments_followed += 1;
        Ok(match t.ifindex {
            Some(ifindex) => Verdict::Transmit { ifindex },
            None => Verdict::Kernel,
        })
    }

    /// Finds or creates the flow of a TCP, UDP or SCTP packet in the table of `A` and
    /// forwards the packet in `buf[..len]` (rewritten, translated between families for
    /// NAT64) toward the endpoint or back to the client.
    fn forward<A: Family>(
        &mut self,
        buf: &mut [u8],
        len: usize,
        pkt: &PacketRepr<A>,
        ingress_ifindex: u32,
        snap: &Snapshot,
        now_ms: u64,
    ) -> Result<Verdict, DropReason> {
        let found = A::table(&mut self.tables).lookup(&pkt.key, now_ms);
        self.forward_found(buf, len, pkt, found, ingress_ifindex, snap, now_ms)
    }

    /// [`Engine::forward`] with the packet's flow already looked up (`found`), by a caller
    /// that had to look anyway.
    #[allow(clippy::too_many_arguments)]
    fn forward_found<A: Family>(
        &mut self,
        buf: &mut [u8],
        len: usize,
        pkt: &PacketRepr<A>,
        found: Option<(crate::conntrack::Slot, Direction)>,
        ingress_ifindex: u32,
        snap: &Snapshot,
        now_ms: u64,
    ) -> Result<Verdict, DropReason> {
        let found = match found {
            Some((slot, dir)) if self.ends_now::<A>(slot, snap) => {
                let frame = &mut buf[..len];
                match self.end_for_down_endpoint(frame, pkt, slot, dir, ingress_ifindex)? {
                    Some(answer) => return Ok(answer),
                    // The flow is gone: the packet opens a new one below.
                    None => None,
                }
            }
            found => found,
        };
        let table = A::table(&mut self.tables);
        let (slot, dir) = match found {
            // A client reusing the ports of a connection that is closing opens a new one: it
            // gets a fresh endpoint choice instead of the lingering flow's.
            Some((slot, Direction::Original))
                if is_opening(pkt) && table.flow(slot).state() == FlowState::Closing =>
            {
                table.remove(slot);
                self.new_flow(pkt, ingress_ifindex, snap, now_ms)?
            }
            Some(found) => found,
            // In DNAT mode an endpoint's packets are steered here by their source; those to
            // our own address are the appliance's connections (health probes, an operator's
            // session), which belong to the kernel.
            None if snap.own_addrs.contains(&pkt.key.dst.to_ip()) => {
                let ip_buf = &mut buf[ethernet::HEADER_LEN..len];
                complete_checksum(ip_buf, pkt.key.proto)?;
                return Ok(Verdict::Kernel);
            }
            None => self.new_flow_or_path(&buf[..len], pkt, ingress_ifindex, snap, now_ms)?,
        };

        let table = A::table(&mut self.tables);
        let was = table.flow(slot).phase();
        let (phase, expires_at) =
            advance(table.flow(slot), dir, pkt.key.proto, pkt.tcp_flags, now_ms);
        let flow = table.update(slot, dir, pkt.ip_len, phase, expires_at);
        if phase.has_ended() && !was.has_ended() {
            // Least connections counts connections, not the seconds a closed one lingers.
            let (service, endpoint) = (flow.service(), flow.endpoint());
            self.release_load(snap, service, endpoint);
        }
        let flow = A::table(&mut self.tables).flow(slot);
        self.accounting
            .packet(flow.stats_slot(), dir as usize, pkt.ip_len);
        let (endpoint, service, client, mode, snat, original) = (
            flow.endpoint(),
            flow.service(),
            flow.client(),
            flow.mode(),
            flow.snat(),
            flow.original().to_ip(),
        );

        // Where the packet goes, and the addresses it must carry there. The family of those
        // addresses may differ from the packet's own (NAT64): it is then translated first.
        let to = match dir {
            Direction::Original => Rewrites {
                src: snat,
                dst: (mode != NatMode::Dsr).then_some((endpoint.addr, endpoint.port)),
                family_of: endpoint.addr,
            },
            Direction::Reply => Rewrites {
                src: Some((service.vip, service.port)),
                dst: snat.map(|_| (original.src, original.src_port)),
                family_of: service.vip,
            },
        };
        let translate = pkt.is_v6 != to.family_of.is_ipv6();
        if translate && pkt.extended {
            return Err(DropReason::Nat64ExtensionHeaders);
        }
        let out_len = match (translate, pkt.is_v6) {
            (false, _) => pkt.ip_len,
            (true, true) => pkt.ip_len - IP_HEADER_GROWTH,
            (true, false) => pkt.ip_len + IP_HEADER_GROWTH,
        };

        // The egress link must take the packet as it will leave; checked before rewriting,
        // so an error quotes the packet as its sender sent it. The endpoint's next hop is
        // looked up once, for the MTU and for the MACs below.
        let next_hop = match dir {
            Direction::Original => snap.next_hops.get(&endpoint.addr).copied(),
            Direction::Reply => None,
        };
        let egress = match dir {
            Direction::Original => next_hop.map(|nh| nh.ifindex),
            Direction::Reply => Some(client.ifindex),
        };
        if let Some(&mtu) = egress.and_then(|ifindex| snap.link_mtus.get(&ifindex)) {
            if out_len > usize::from(mtu) {
                // The sender learns the path MTU from the address it spoke to, in its own
                // family, as the link looks from its side of a NAT64 translation.
                let growth = IP_HEADER_GROWTH as u16;
                let (from, sender_mtu) = match (translate, dir, snat) {
                    (false, _, _) => (service.vip, mtu),
                    // An IPv6 client's packet loses 20 bytes as IPv4. An IPv6 path MTU below
                    // 1280 does not exist (RFC 8200): such a link would need the IPv4 side
                    // fragmented (RFC 7915), which is not done here.
                    (true, Direction::Original, _)
                        if mtu.saturating_add(growth) >= IPV6_MIN_MTU =>
                    {
                        (service.vip, mtu.saturating_add(growth))
                    }
                    // An IPv4 endpoint's reply gains 20 bytes as IPv6; it spoke to our SNAT
                    // address.
                    (true, Direction::Reply, Some((addr, _))) => (addr, mtu.saturating_sub(growth)),
                    _ => return Err(DropReason::TooBigToForward),
                };
                let frame = &mut buf[..len];
                return self.too_big(frame, pkt.dont_fragment, from, sender_mtu, ingress_ifindex);
            }
        }

        let proto = pkt.key.proto;
        let mut frame_len = len;
        if translate {
            frame_len = translate_family(buf, len, &to)?;
        }
        let ip_buf = &mut buf[ethernet::HEADER_LEN..frame_len];
        if let Some((addr, port)) = to.dst {
            rewrite_side(ip_buf, proto, Side::Destination, addr, port)?;
        } else {
            // DSR forwards the client's packet as it is: only an offloaded checksum is
            // completed, as no rewrite does it.
            complete_checksum(ip_buf, proto)?;
        }
        if let Some((addr, port)) = to.src {
            rewrite_side(ip_buf, proto, Side::Source, addr, port)?;
        }
        if dir == Direction::Reply && proto == Proto::Sctp {
            let (client_port, assoc) = (original.src_port, &mut self.associations);
            frame_len = assoc
                .on_reply(buf, frame_len, snap, service, endpoint, client_port, now_ms)
                .map_err(wire_drop)?;
        }
        let (dst_mac, src_mac, ifindex) = match dir {
            Direction::Original => {
                let Some(nh) = next_hop else {
                    // The kernel can deliver a packet addressed to the endpoint while it learns
                    // the MAC; a DSR packet is still addressed to the VIP, which it cannot.
                    if mode == NatMode::Dsr {
                        return Err(DropReason::NextHopUnresolved);
                    }
                    return Ok(Verdict::Kernel);
                };
                (nh.dst_mac, nh.src_mac, nh.ifindex)
            }
            Direction::Reply => (client.peer_mac, client.own_mac, client.ifindex),
        };
        let mut eth = ethernet::Frame::new_checked(&mut buf[..frame_len]).map_err(wire_drop)?;
        eth.set_dst(dst_mac);
        eth.set_src(src_mac);
        Ok(sized(Verdict::Transmit { ifindex }, frame_len, len))
    }

    /// A packet bigger than its egress link: with DF (always, for IPv6), its sender gets
    /// "fragmentation needed" (ICMPv6 "packet too big") from `from` (the VIP, the address it
    /// talks to) back where it came from, and lowers its path MTU; without DF it would need
    /// fragmenting, which is not done here.
    fn too_big(
        &mut self,
        frame: &mut [u8],
        dont_fragment: bool,
        from: IpAddr,
        mtu: u16,
        ingress_ifindex: u32,
    ) -> Result<Verdict, DropReason> {
        if !dont_fragment {
            return Err(DropReason::TooBigToForward);
        }
        let len = match from {
            IpAddr::V4(from) => icmp_error::frag_needed_in_place(frame, from, mtu),
            IpAddr::V6(from) => icmp_error::packet_too_big_in_place(frame, from, mtu),
        }
        .map_err(wire_drop)?;
        self.counters.frag_needed_sent += 1;
        Ok(Verdict::TransmitFirst {
            ifindex: ingress_ifindex,
            len,
        })
    }

    /// An ICMP error quoting a packet of one of our IPv4 flows, rewritten like the flow's
    /// own packets (see `icmp_error`): toward the client as from the VIP when it is about a
    /// request we forwarded, toward the endpoint when it is about a reply. An error about no
    /// flow of ours concerns the host's own connections: the kernel's.
    fn translate_icmp_error(
        &mut self,
        frame: &mut [u8],
        quote: &Quote,
        snap: &Snapshot,
        now_ms: u64,
    ) -> Result<Verdict, DropReason> {
        let Some((slot, dir)) = self.tables.v4.lookup(&quote.key, now_ms) else {
            return Ok(Verdict::Kernel);
        };
        let flow = self.tables.v4.flow(slot);
        // Every address of a flow in the IPv4 table is IPv4.
        let t = icmp_error::translation(flow, dir, Ipv4Addr::from_ip)
            .ok_or(DropReason::AddressFamily)?;
        let to = error_egress(flow, dir, snap)?;
        icmp_error::translate(&mut frame[ethernet::HEADER_LEN..], quote, &t).map_err(wire_drop)?;
        let len = frame.len();
        self.send_translated_error(frame, len, len, to)
    }

    /// [`Engine::translate_icmp_error`] for an ICMPv6 error quoting a packet of one of our
    /// IPv6 flows (see `icmp6_error`); one about a NAT64 flow's answer becomes the ICMPv4
    /// error of its endpoint. An error about no flow of ours is the kernel's.
    fn translate_icmp6_error(
        &mut self,
        frame: &mut [u8],
        quote: &icmp6_error::Quote,
        snap: &Snapshot,
        now_ms: u64,
    ) -> Result<Verdict, DropReason> {
        let Some((slot, dir)) = self.tables.v6.lookup(&quote.key, now_ms) else {
            return Ok(Verdict::Kernel);
        };
        let flow = self.tables.v6.flow(slot);
        if let Some(t) = icmp6_error::translation_to_v4(flow, dir) {
            let (endpoint, client) = (flow.endpoint(), flow.client());
            return self.translate_icmp_error_46(frame, quote, &t, endpoint, client, snap);
        }
        let Some(t) = icmp6_error::translation(flow, dir) else {
            return Ok(Verdict::Kernel);
        };
        let to = error_egress(flow, dir, snap)?;
        icmp6_error::translate(&mut frame[ethernet::HEADER_LEN..], quote, &t).map_err(wire_drop)?;
        let len = frame.len();
        self.send_translated_error(frame, len, len, to)
    }

    /// An ICMPv6 error from the client's side of a NAT64 flow about an answer we sent, in
    /// `frame`: its IPv4 endpoint gets the matching ICMPv4 error from our address it answered
    /// (see `icmp6_error::to_icmpv4`). One RFC 7915 does not translate is dropped: the kernel
    /// knows nothing of the flow either.
    fn translate_icmp_error_46(
        &mut self,
        frame: &mut [u8],
        quote: &icmp6_error::Quote,
        t: &Translation,
        endpoint: Endpoint,
        client: ClientL2,
        snap: &Snapshot,
    ) -> Result<Verdict, DropReason> {
        let to = next_hop(snap, endpoint.addr);
        // Fragmentation needed must fit the IPv4 link toward the endpoint and, 20 bytes
        // longer as IPv6, the client's link.
        let endpoint_link = to.and_then(|nh| snap.link_mtus.get(&nh.ifindex).copied());
        let client_link = snap
            .link_mtus
            .get(&client.ifindex)
            .map(|m| m.saturating_sub(20));
        let mtu_cap = endpoint_link.into_iter().chain(client_link).min();
        let len = frame.len();
        let translated =
            icmp6_error::to_icmpv4(frame, len, quote, t, mtu_cap).map_err(wire_drop)?;
        let frame_len = translated.ok_or(DropReason::IcmpUntranslatable)?;
        self.send_translated_error(frame, frame_len, len, to)
    }

    /// An ICMPv4 error from the IPv4 side of a NAT64 flow about a request we forwarded, in
    /// `buf[..len]` (with room to grow by 40 bytes): the client gets the matching ICMPv6 error
    /// from the VIP (see `icmp6_error::from_icmpv4`). An error about no flow of ours, or one
    /// RFC 7915 does not translate, is the kernel's.
    fn translate_icmp_error_64(
        &mut self,
        buf: &mut [u8],
        len: usize,
        quote: &Quote,
        snap: &Snapshot,
        now_ms: u64,
    ) -> Result<Verdict, DropReason> {
        let key = icmp6_error::mapped(&quote.key);
        let Some((slot, Direction::Reply)) = self.tables.v6.lookup(&key, now_ms) else {
            return Ok(Verdict::Kernel);
        };
        let flow = self.tables.v6.flow(slot);
        let Some(t) = icmp6_error::translation(flow, Direction::Reply) else {
            return Ok(Verdict::Kernel);
        };
        let client = flow.client();
        let link_mtu = snap.link_mtus.get(&client.ifindex).copied();
        let translated = icmp6_error::from_icmpv4(buf, len, &t, link_mtu).map_err(wire_drop)?;
        let Some(frame_len) = translated else {
            return Ok(Verdict::Kernel);
        };
        self.send_translated_error(buf, frame_len, len, Some(toward_client(client)))
    }

    /// Where every ICMP error translation ends: the error rewritten in `buf[..frame_len]`
    /// (received as `len` bytes) leaves toward `to` and is counted; without `to` (a next hop
    /// whose MAC is not known yet) the kernel sends the IP packet, which says its length.
    fn send_translated_error(
        &mut self,
        buf: &mut [u8],
        frame_len: usize,
        len: usize,
        to: Option<NextHop>,
    ) -> Result<Verdict, DropReason> {
        let Some(to) = to else {
            return Ok(Verdict::Kernel);
        };
        let mut eth = ethernet::Frame::new_checked(&mut buf[..frame_len]).map_err(wire_drop)?;
        eth.set_dst(to.dst_mac);
        eth.set_src(to.src_mac);
        self.counters.icmp_errors_translated += 1;
        let sent = Verdict::Transmit {
            ifindex: to.ifindex,
        };
        Ok(sized(sent, frame_len, len))
    }

    fn new_flow<A: Family>(
        &mut self,
        pkt: &PacketRepr<A>,
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
                vip: k.dst.to_ip(),
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
        if !service.allows(k.src.to_ip()) {
            return Err(DropReason::SourceNotAllowed);
        }
        let (configured, chosen) = self.select(service, &k, now_ms)?;
        let opened = self.open_flow(
            pkt,
            ingress_ifindex,
            service,
            configured,
            chosen,
            snap,
            now_ms,
        );
        if opened.is_err() {
            // No flow came of the choice: the endpoint keeps its turn.
            if let Some(state) = self.selectors.get_mut(&service.key) {
                state.unpick(&service.selector, chosen, live_in(service));
            }
        }
        opened
    }

    /// A packet of a multi-homed SCTP association on a path not seen yet opens that path's
    /// flow to the association's endpoint (see `sctp_multihome`); any other packet without a
    /// flow goes to [`Engine::new_flow`].
    fn new_flow_or_path<A: Family>(
        &mut self,
        frame: &[u8],
        pkt: &PacketRepr<A>,
        ingress_ifindex: u32,
        snap: &Snapshot,
        now_ms: u64,
    ) -> Result<(crate::conntrack::Slot, Direction), DropReason> {
        let k = pkt.key;
        let to = ServiceKey {
            vip: k.dst.to_ip(),
            port: k.dst_port,
            proto: k.proto,
        };
        let path = self
            .associations
            .path_of(frame, snap, to, k.src_port, now_ms);
        let Some((rule, endpoint)) = path else {
            return self.new_flow(pkt, ingress_ifindex, snap, now_ms);
        };
        let service = snap.services.get(&to).ok_or(DropReason::NoFlowNoService)?;
        if !service.allows(k.src.to_ip()) {
            return Err(DropReason::SourceNotAllowed);
        }
        let chosen = endpoint_index(service, endpoint).ok_or(DropReason::SctpNotInit)?;
        let configured = service.endpoints[chosen];
        debug_assert_eq!(rule, service.key);
        // Counted as a connection of its endpoint (by `open_flow`), as its closing will be.
        self.open_flow(
            pkt,
            ingress_ifindex,
            service,
            configured,
            chosen,
            snap,
            now_ms,
        )
    }

    /// The flow of a connection's first packet `pkt` to `service`, whose endpoint
    /// `configured` (at index `chosen`) was just picked: its SNAT address and port, its
    /// reply key, its table slot.
    #[allow(clippy::too_many_arguments)]
    fn open_flow<A: Family>(
        &mut self,
        pkt: &PacketRepr<A>,
        ingress_ifindex: u32,
        service: &Service,
        configured: Endpoint,
        chosen: usize,
        snap: &Snapshot,
        now_ms: u64,
    ) -> Result<(crate::conntrack::Slot, Direction), DropReason> {
        let k = pkt.key;
        // Port 0 keeps the port the client came to (loxilb's way for port ranges); counters
        // stay with the endpoint as configured.
        let mut endpoint = configured;
        if endpoint.port == 0 {
            endpoint.port = k.dst_port;
        }
        let cross_family = endpoint.addr.is_ipv6() != service.key.vip.is_ipv6();
        // NAT64 must translate the source too: the endpoint could not answer an IPv6 client.
        // The other way round (NAT46, IPv4 clients to IPv6 endpoints) is not done.
        if cross_family && (service.key.vip.is_ipv4() || !service.mode.translates_source()) {
            return Err(DropReason::AddressFamily);
        }
        // Refused before the flow exists, so that no entry is left behind for it (the check
        // in `forward_found` catches the flow's later packets).
        if cross_family && pkt.extended {
            return Err(DropReason::Nat64ExtensionHeaders);
        }
        let snat = match service.mode {
            NatMode::FullNat if !cross_family => Some(service.snat_addr.unwrap_or(service.key.vip)),
            // A NAT64 full NAT leaves from the configured IPv4 SNAT address, or else from
            // our own address toward the endpoint, as one-arm does.
            NatMode::FullNat if service.snat_addr.is_some_and(|a| a.is_ipv4()) => service.snat_addr,
            NatMode::FullNat | NatMode::OneArm => Some(
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
        let table_addr = |ip: IpAddr| A::from_ip(ip).ok_or(DropReason::AddressFamily);
        let ep_addr = table_addr(endpoint.addr);
        // The tuple the endpoint's answer carries: to our SNAT address and port, or straight
        // to the client. A DSR endpoint answers the client itself; its key only has to be
        // unique, it is never seen.
        let reply = match (snat, service.mode) {
            (Some((addr, port)), _) => table_addr(addr).and_then(|dst| {
                ep_addr.map(|src| FlowKey {
                    src,
                    dst,
                    src_port: endpoint.port,
                    dst_port: port,
                    proto: k.proto,
                })
            }),
            (None, NatMode::Dsr) => ep_addr.map(|src| FlowKey {
                src,
                dst: k.src,
                src_port: k.dst_port,
                dst_port: k.src_port,
                proto: k.proto,
            }),
            (None, _) => ep_addr.map(|src| FlowKey {
                src,
                dst: k.src,
                src_port: endpoint.port,
                dst_port: k.src_port,
                proto: k.proto,
            }),
        };
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) => {
                if let Some((addr, port)) = snat {
                    self.ports.release(addr, k.proto, port);
                }
                return Err(e);
            }
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
            stats_slot: self.accounting.slot(service.key, configured.into()),
        };
        let stats_slot = flow.stats_slot;
        // A full table may evict an embryonic flow here: its port and its endpoint's count are
        // released with the other removals when the packet is settled.
        let slot = A::table(&mut self.tables)
            .insert(flow, now_ms)
            .map_err(|e| {
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
        addr: IpAddr,
        proto: Proto,
        snap: &Snapshot,
        now_ms: u64,
    ) -> Result<u16, DropReason> {
        if let Some(port) = self.ports.allocate(addr, proto) {
            return Ok(port);
        }
        // The port's flows are in both tables when NAT64 and IPv4 services share the address.
        let evicted = self
            .tables
            .v4
            .evict_for_port(addr, proto, now_ms, PORT_RECLAIM_LOOK)
            || self
                .tables
                .v6
                .evict_for_port(addr, proto, now_ms, PORT_RECLAIM_LOOK);
        if !evicted {
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
        if !snap.vips.contains(&IpAddr::V4(dst)) {
            return Err(DropReason::NoFlowNoService);
        }
        let (_, l4) = ip.split_l4_mut();
        echo_to_reply(l4, icmp::TYPE_ECHO_REQUEST, icmp::TYPE_ECHO_REPLY)?;
        ip.set_src(dst);
        ip.set_dst(src);
        ip.set_ttl(64);
        ip.set_checksum(0);
        let c = ipv4_header(ip.header());
        ip.set_checksum(c);
        self.send_echo_reply(frame, ingress_ifindex)
    }

    /// Sends an answer built in place of `frame` back where it came from (MACs swapped).
    fn send_echo_reply(
        &mut self,
        frame: &mut [u8],
        ingress_ifindex: u32,
    ) -> Result<Verdict, DropReason> {
        let mut eth = ethernet::Frame::new_checked(&mut *frame).map_err(wire_drop)?;
        let (peer, own) = (eth.src(), eth.dst());
        eth.set_dst(peer);
        eth.set_src(own);
        self.counters.icmp_echo_replies += 1;
        Ok(Verdict::Transmit {
            ifindex: ingress_ifindex,
        })
    }

    /// Answers an ICMPv6 echo request to an IPv6 VIP in place, as `answer_echo` does for
    /// IPv4 (errors about our flows were translated before this is called).
    fn answer_echo_v6(
        &mut self,
        frame: &mut [u8],
        ingress_ifindex: u32,
        snap: &Snapshot,
    ) -> Result<Verdict, DropReason> {
        let len = frame.len();
        let ip_buf = &mut frame[ethernet::HEADER_LEN..];
        let mut ip = ipv6::Packet::new_checked(&mut *ip_buf).map_err(wire_drop)?;
        let (src, dst) = (ip.src(), ip.dst());
        if !snap.vips.contains(&IpAddr::V6(dst)) {
            return Err(DropReason::NoFlowNoService);
        }
        let (headers, l4) = ip.split_l4_mut();
        let (icmp_at, icmp_len) = (headers.len(), l4.len());
        // ICMPv6 shares ICMP's first four bytes (type, code, checksum) and echo layout; the
        // pseudo-header's sum does not change when source and destination swap, nor when
        // extension headers go (it counts the ICMPv6 message's length only).
        echo_to_reply(l4, icmpv6::TYPE_ECHO_REQUEST, icmpv6::TYPE_ECHO_REPLY)?;
        ip.set_src(dst);
        ip.set_dst(src);
        ip.set_hop_limit(64);
        let mut frame_len = len;
        if icmp_at != ipv6::HEADER_LEN {
            // The reply leaves without the request's extension headers: their options were
            // for the request's way to us and for us, and a reply owes the request only its
            // identifier, sequence and data (RFC 4443 section 4.2). The message moves up to
            // the fixed header, as no frame can start later in its buffer.
            ip.set_next_header(ipv6::PROTO_ICMPV6);
            ip.set_payload_len(icmp_len as u16);
            ip_buf.copy_within(icmp_at..icmp_at + icmp_len, ipv6::HEADER_LEN);
            frame_len = ethernet::HEADER_LEN + ipv6::HEADER_LEN + icmp_len;
        }
        let sent = self.send_echo_reply(frame, ingress_ifindex)?;
        Ok(sized(sent, frame_len, len))
    }

    /// Picks the endpoint of a new flow; returns it and its index in the service's list.
    fn select<A: FlowAddr>(
        &mut self,
        service: &Service,
        k: &FlowKey<A>,
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
        let tuple = FlowTuple::new(
            k.src.to_ip(),
            k.src_port,
            k.dst.to_ip(),
            k.dst_port,
            k.proto as u8,
        );
        let i = state
            .pick(
                &service.selector,
                &tuple,
                live_in(service),
                now_ms,
                service.inactive_timeout.as_millis() as u64,
            )
            .ok_or(DropReason::NoEndpoint)?;
        let ep = *service.endpoints.get(i).ok_or(DropReason::NoEndpoint)?;
        Ok((ep, i))
    }
}

/// The smallest MTU of an IPv6 link (RFC 8200, section 5).
const IPV6_MIN_MTU: u16 = 1280;

/// Whether endpoint `i` of `service` may get new flows; one without a health verdict (a
/// shorter `live`) counts as live.
fn live_in(service: &Service) -> impl Fn(usize) -> bool + '_ {
    |i| service.live.get(i).copied().unwrap_or(true)
}

/// The phase and expiry of `flow` after a packet in direction `dir`.
fn advance<A: FlowAddr>(
    flow: &Flow<A>,
    dir: Direction,
    proto: Proto,
    tcp_flags: u8,
    now_ms: u64,
) -> (Phase, u64) {
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

/// Turns the ICMP or ICMPv6 echo request in `l4` into its reply (type `reply`, checksum
/// updated); anything else is refused.
fn echo_to_reply(l4: &mut [u8], request: u8, reply: u8) -> Result<(), DropReason> {
    let mut msg = icmp::Message::new_checked(l4).map_err(wire_drop)?;
    if msg.msg_type() != request || msg.code() != 0 {
        return Err(DropReason::IcmpNotEcho);
    }
    msg.set_type(reply);
    let c = update16(
        msg.checksum(),
        u16::from(request) << 8,
        u16::from(reply) << 8,
    );
    msg.set_checksum(c);
    Ok(())
}

/// An IPv4 frame (its type checked by the caller) whose fragment bits are set: "more
/// fragments" or an offset.
fn is_fragment_v4(frame: &[u8]) -> bool {
    frame
        .get(ethernet::HEADER_LEN + 6..ethernet::HEADER_LEN + 8)
        .is_some_and(|f| u16::from_be_bytes([f[0], f[1]]) & 0x3fff != 0)
}

/// An IPv6 frame carrying ICMPv6, right after the fixed header or behind hop-by-hop,
/// routing (segments left 0) and destination options headers; not a fragment. Only a frame
/// starting with one of those extension headers is walked: TCP and UDP cost one comparison.
fn is_icmp_v6(frame: &[u8]) -> bool {
    if frame.len() <= ethernet::HEADER_LEN + 6
        || frame[12..14] != ethernet::ETHERTYPE_IPV6.to_be_bytes()
    {
        return false;
    }
    match frame[ethernet::HEADER_LEN + 6] {
        ipv6::PROTO_ICMPV6 => true,
        ipv6::PROTO_HOP_BY_HOP | ipv6::PROTO_ROUTING | ipv6::PROTO_DEST_OPTIONS => {
            ipv6::Packet::new_checked(&frame[ethernet::HEADER_LEN..])
                .ok()
                .and_then(|ip| ip.upper_layer().ok())
                .is_some_and(|u| u.proto == ipv6::PROTO_ICMPV6 && u.fragment.is_none())
        }
        _ => false,
    }
}

/// A TCP SYN without ACK or RST, or an SCTP INIT: the only packets allowed to open a flow of
/// a connection-oriented protocol.
fn is_opening<A>(pkt: &PacketRepr<A>) -> bool {
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

fn parse(frame: &[u8]) -> Result<PacketRepr<Ipv4Addr>, DropReason> {
    let eth = ethernet::Frame::new_checked(frame).map_err(wire_drop)?;
    if eth.ethertype() != ethernet::ETHERTYPE_IPV4 {
        return Err(DropReason::NotIp);
    }
    let ip = ipv4::Packet::new_checked(&frame[ethernet::HEADER_LEN..]).map_err(wire_drop)?;
    // A later fragment has no transport header (see `follow_fragment`).
    if ip.fragment_offset() != 0 {
        return Err(DropReason::Fragment);
    }
    let proto = Proto::from_ip_proto(ip.protocol()).ok_or(DropReason::UnsupportedProtocol)?;
    let l4 = &frame[ethernet::HEADER_LEN + ip.header_len()..ethernet::HEADER_LEN + ip.total_len()];
    let (src_port, dst_port, tcp_flags) = l4_fields(proto, l4, ip.more_fragments())?;
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
        is_v6: false,
        extended: false,
    })
}

/// Ports and control bits (TCP flags, SCTP's first chunk type) of a transport header.
/// `head`: the first fragment of a datagram, whose transport header describes more bytes
/// than the fragment holds.
fn l4_fields(proto: Proto, l4: &[u8], head: bool) -> Result<(u16, u16, u8), DropReason> {
    Ok(match proto {
        Proto::Tcp => {
            let s = tcp::Segment::new_checked(l4).map_err(wire_drop)?;
            (s.src_port(), s.dst_port(), s.flags())
        }
        Proto::Udp => {
            let d = if head {
                udp::Datagram::new_head(l4)
            } else {
                udp::Datagram::new_checked(l4)
            }
            .map_err(wire_drop)?;
            (d.src_port(), d.dst_port(), 0)
        }
        // SCTP's CRC32c covers the whole packet, which a fragment does not hold: a port
        // rewrite could neither check nor recompute it (an offloaded zero would be filled in
        // wrong). SCTP avoids IP fragmentation itself (it fragments chunks), so these are rare.
        Proto::Sctp if head => return Err(DropReason::Fragment),
        // SCTP's control bits are its first chunk's type (INIT, ABORT, SHUTDOWN, ...).
        Proto::Sctp => {
            let p = sctp::Packet::new_checked(l4).map_err(wire_drop)?;
            (p.src_port(), p.dst_port(), p.first_chunk())
        }
    })
}

/// Parses an IPv6 frame carrying TCP, UDP or SCTP, after any hop-by-hop, routing (with no
/// segments left), destination options and Fragment headers. A first fragment is parsed as
/// its datagram's head (see `follow_fragment` for the later ones, which have no transport
/// header and are dropped as fragments here).
fn parse_v6(frame: &[u8]) -> Result<PacketRepr<Ipv6Addr>, DropReason> {
    let eth = ethernet::Frame::new_checked(frame).map_err(wire_drop)?;
    let ip = ipv6::Packet::new_checked(&frame[ethernet::HEADER_LEN..]).map_err(wire_drop)?;
    let upper = ip.upper_layer().map_err(|e| match e {
        ipv6::ExtensionError::Truncated => DropReason::Truncated,
        ipv6::ExtensionError::LaterFragment(_) => DropReason::Fragment,
        ipv6::ExtensionError::SegmentsLeft => DropReason::RoutingSegmentsLeft,
        ipv6::ExtensionError::TooMany => DropReason::UnsupportedProtocol,
    })?;
    let proto = Proto::from_ip_proto(upper.proto).ok_or(DropReason::UnsupportedProtocol)?;
    let head = upper.fragment.is_some();
    // SCTP's CRC covers the whole packet and cannot be updated from a piece of it.
    if head && proto == Proto::Sctp {
        return Err(DropReason::Fragment);
    }
    let l4 = &frame[ethernet::HEADER_LEN + upper.offset..ethernet::HEADER_LEN + ip.total_len()];
    let (src_port, dst_port, tcp_flags) = l4_fields(proto, l4, head)?;
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
        // Routers never fragment IPv6: a packet too big is always reported to its sender.
        dont_fragment: true,
        is_v6: true,
        extended: upper.extended,
    })
}

impl PacketRepr<Ipv4Addr> {
    /// The same packet as the IPv6 table knows it (IPv4-mapped addresses): how the IPv4
    /// replies of NAT64 flows are found.
    fn mapped(&self) -> PacketRepr<Ipv6Addr> {
        let k = self.key;
        PacketRepr {
            key: FlowKey {
                src: k.src.to_ipv6_mapped(),
                dst: k.dst.to_ipv6_mapped(),
                src_port: k.src_port,
                dst_port: k.dst_port,
                proto: k.proto,
            },
            tcp_flags: self.tcp_flags,
            eth_src: self.eth_src,
            eth_dst: self.eth_dst,
            ip_len: self.ip_len,
            dont_fragment: self.dont_fragment,
            is_v6: false,
            extended: false,
        }
    }
}

/// The two connection tables of an engine, one per record width.
struct Tables {
    v4: Conntrack<Ipv4Addr>,
    v6: Conntrack<Ipv6Addr>,
}

/// The address type of a table, and how the engine reaches that table.
trait Family: FlowAddr {
    fn table(tables: &mut Tables) -> &mut Conntrack<Self>;
}

impl Family for Ipv4Addr {
    fn table(tables: &mut Tables) -> &mut Conntrack<Self> {
        &mut tables.v4
    }
}

impl Family for Ipv6Addr {
    fn table(tables: &mut Tables) -> &mut Conntrack<Self> {
        &mut tables.v6
    }
}

/// The index in `svc` of a flow's endpoint; one configured with port 0 (keep the client's
/// port) is found under port 0, not the port its flow used.
fn endpoint_index(svc: &Service, endpoint: Endpoint) -> Option<usize> {
    let sel = &svc.selector;
    sel.index_of(&EndpointKey::new(endpoint.addr, endpoint.port))
        .or_else(|| sel.index_of(&EndpointKey::new(endpoint.addr, 0)))
}

/// Ends the flows of a deleted service in one table (see [`Engine::forget_service`]).
fn forget_in<A: FlowAddr>(table: &mut Conntrack<A>, key: &ServiceKey, snap: &Snapshot) {
    table.forget_service(key);
    let orphans: Vec<_> = table
        .iter()
        .filter(|f| {
            let s = f.service();
            s.vip == key.vip && s.proto == key.proto && !snap.services.contains_key(&s)
        })
        .map(|f| f.original())
        .collect();
    for original in orphans {
        // Time 0: a lookup that must not expire anything, only find the slot.
        if let Some((slot, _)) = table.lookup(&original, 0) {
            table.remove(slot);
        }
    }
}

/// How much longer an IPv6 header is than an option-less IPv4 one.
const IP_HEADER_GROWTH: usize = ipv6::HEADER_LEN - ipv4::MIN_HEADER_LEN;

/// The addresses and ports a forwarded packet must leave with.
struct Rewrites {
    src: Option<(IpAddr, u16)>,
    dst: Option<(IpAddr, u16)>,
    /// An address of the family the packet must leave in.
    family_of: IpAddr,
}

#[derive(Clone, Copy)]
enum Side {
    Source,
    Destination,
}

/// Rewrites one side of the IP packet in `ip_buf` (of `addr`'s family) to `addr`:`port`.
fn rewrite_side(
    ip_buf: &mut [u8],
    proto: Proto,
    side: Side,
    addr: IpAddr,
    port: u16,
) -> Result<(), DropReason> {
    match (addr, side) {
        (IpAddr::V4(a), Side::Source) => rewrite_v4(ip_buf, proto, Rewrite::Source(a, port)),
        (IpAddr::V4(a), Side::Destination) => {
            rewrite_v4(ip_buf, proto, Rewrite::Destination(a, port))
        }
        (IpAddr::V6(a), Side::Source) => rewrite_v6(ip_buf, proto, Rewrite6::Source(a, port)),
        (IpAddr::V6(a), Side::Destination) => {
            rewrite_v6(ip_buf, proto, Rewrite6::Destination(a, port))
        }
    }
    .map_err(wire_drop)
}

/// Completes an offloaded (partial) transport checksum of the IP packet in `ip_buf`.
fn complete_checksum(ip_buf: &mut [u8], proto: Proto) -> Result<(), DropReason> {
    match ip_buf.first().map(|b| b >> 4) {
        Some(6) => complete_checksum_v6(ip_buf, proto),
        _ => complete_checksum_v4(ip_buf, proto),
    }
    .map_err(wire_drop)
}

/// Translates the frame in `buf[..len]` to the other IP family (NAT64) with the addresses
/// of `to` (ports are rewritten afterwards, like any flow's); returns its new length.
fn translate_family(buf: &mut [u8], len: usize, to: &Rewrites) -> Result<usize, DropReason> {
    let (Some((src, _)), Some((dst, _))) = (to.src, to.dst) else {
        return Err(DropReason::AddressFamily);
    };
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => six_to_four(buf, len, s, d),
        (IpAddr::V6(s), IpAddr::V6(d)) => four_to_six(buf, len, s, d),
        _ => return Err(DropReason::AddressFamily),
    }
    .map_err(wire_drop)
}

/// `v` for a frame that left at its received length, else the same sent at `frame_len`.
fn sized(v: Verdict, frame_len: usize, len: usize) -> Verdict {
    match v {
        Verdict::Transmit { ifindex } if frame_len != len => Verdict::TransmitFirst {
            ifindex,
            len: frame_len,
        },
        v => v,
    }
}

/// Where an ICMP error about `flow` travelling in `dir` leaves: back to the client, or
/// toward the endpoint (`None`: through the kernel, while the endpoint's MAC is unknown).
fn error_egress<A: FlowAddr>(
    flow: &Flow<A>,
    dir: Direction,
    snap: &Snapshot,
) -> Result<Option<NextHop>, DropReason> {
    match dir {
        Direction::Reply => Ok(Some(toward_client(flow.client()))),
        // A DSR endpoint's error is addressed to the VIP, which the kernel keeps for itself.
        Direction::Original if flow.mode() == NatMode::Dsr => next_hop(snap, flow.endpoint().addr)
            .map(Some)
            .ok_or(DropReason::NextHopUnresolved),
        Direction::Original => Ok(next_hop(snap, flow.endpoint().addr)),
    }
}

/// Where a packet to `addr` (an endpoint) leaves; `None` while its next hop's MAC is not
/// known, when the kernel must send it.
fn next_hop(snap: &Snapshot, addr: IpAddr) -> Option<NextHop> {
    snap.next_hops.get(&addr).copied()
}

/// Where a packet back to a flow's client leaves: where the flow's first packet came in.
fn toward_client(client: ClientL2) -> NextHop {
    NextHop {
        ifindex: client.ifindex,
        src_mac: client.own_mac,
        dst_mac: client.peer_mac,
    }
}
