//! Connection tracking: a fixed-capacity table of flows, found from either direction, that a
//! flood of new flows can neither grow nor empty of established connections.
//!
//! Everything is allocated when the table is made and nothing grows afterwards:
//!
//! - a slab of compact [`Flow`] records (104 bytes each: the two IPv4 tuples once, the
//!   endpoint, the client's L2 return path, the timers, the counters and three list links);
//! - an open-addressing index of `u32` entries, two per flow (the tuple the client sends and
//!   the tuple the endpoint answers with), at most three quarters full: 11 to 22 bytes per
//!   flow depending on how the capacity rounds to a power of two. An entry is the flow's slot
//!   and direction plus the high bits of the key's hash as a tag, so a probe rarely reads a
//!   flow that is not the one sought; keys are not stored twice, they are read from the slab.
//!   Deletion shifts entries back (no tombstones), so the index never needs a rehash.
//!
//! About 120 bytes per flow in all (see `allocated_bytes`).
//!
//! When the table is full, a new flow takes the slot of an expired flow, or else of the oldest
//! flow that never got established (a SYN nobody completed, a UDP datagram nobody answered):
//! those sit in a first-in first-out list, so finding the victim costs the same whatever the
//! table holds. An established flow is never evicted; if there is no other victim, the new flow
//! is refused and the caller counts it.
//!
//! The table is generic over the address type of its records: IPv4 flows live in a
//! `Conntrack<Ipv4Addr>` (the 104-byte record above), IPv6 flows in a `Conntrack<Ipv6Addr>`
//! whose record is 48 bytes wider. A NAT64 flow (an IPv6 client, an IPv4 endpoint) lives in
//! the IPv6 table with its IPv4 addresses written IPv4-mapped (`::ffff:a.b.c.d`); reports
//! show them as IPv4 again ([`FlowAddr::to_ip`]).

use crate::snapshot::{Endpoint, NatMode, Proto, ServiceKey};
use hashbrown::DefaultHashBuilder;
use std::fmt::Debug;
use std::hash::{BuildHasher, Hash};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The address type a table's records hold.
pub trait FlowAddr: Copy + Eq + Hash + Debug + 'static {
    const UNSPECIFIED: Self;
    /// The address as reports and the rest of the engine know it (IPv4-mapped IPv6 as IPv4).
    fn to_ip(self) -> IpAddr;
    /// `ip` in this table's type: IPv4 in an IPv6 table is IPv4-mapped; IPv6 in an IPv4
    /// table does not fit.
    fn from_ip(ip: IpAddr) -> Option<Self>;
    /// The key's hash under the table's seeded `hasher`, packed for one call.
    fn hash_key(k: &FlowKey<Self>, hasher: &DefaultHashBuilder) -> u64;
}

impl FlowAddr for Ipv4Addr {
    const UNSPECIFIED: Self = Ipv4Addr::UNSPECIFIED;

    fn to_ip(self) -> IpAddr {
        IpAddr::V4(self)
    }

    fn from_ip(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        }
    }

    fn hash_key(k: &FlowKey<Self>, hasher: &DefaultHashBuilder) -> u64 {
        let addrs = u64::from(u32::from(k.src)) << 32 | u64::from(u32::from(k.dst));
        let rest =
            u64::from(k.src_port) << 24 | u64::from(k.dst_port) << 8 | u64::from(k.proto as u8);
        hasher.hash_one(u128::from(addrs) << 64 | u128::from(rest))
    }
}

impl FlowAddr for Ipv6Addr {
    const UNSPECIFIED: Self = Ipv6Addr::UNSPECIFIED;

    fn to_ip(self) -> IpAddr {
        match self.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(self),
        }
    }

    fn from_ip(ip: IpAddr) -> Option<Self> {
        Some(match ip {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        })
    }

    fn hash_key(k: &FlowKey<Self>, hasher: &DefaultHashBuilder) -> u64 {
        let rest =
            u64::from(k.src_port) << 24 | u64::from(k.dst_port) << 8 | u64::from(k.proto as u8);
        hasher.hash_one((u128::from(k.src), u128::from(k.dst), rest))
    }
}

/// The 5-tuple of a packet as seen on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey<A = Ipv4Addr> {
    pub src: A,
    pub dst: A,
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: Proto,
}

impl<A: FlowAddr> FlowKey<A> {
    /// The same tuple with addresses as reports show them.
    pub fn to_ip(&self) -> FlowKey<IpAddr> {
        FlowKey {
            src: self.src.to_ip(),
            dst: self.dst.to_ip(),
            src_port: self.src_port,
            dst_port: self.dst_port,
            proto: self.proto,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to service.
    Original,
    /// Endpoint back to client.
    Reply,
}

/// Where the client side of a flow is, learnt from the first packet: replies go back out the
/// interface the request came in, to the MAC it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientL2 {
    pub ifindex: u32,
    pub peer_mac: [u8; 6],
    pub own_mac: [u8; 6],
}

/// A flow's progress as reports show it (the API's conntrack listing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowState {
    /// Not established yet: a TCP handshake not completed, or a UDP flow not answered.
    New,
    /// The handshake completed (TCP), or the endpoint answered (UDP).
    Established,
    /// A FIN or RST was seen: the flow lingers briefly for the last packets.
    Closing,
}

/// Where a flow is in its life: decides its timeout (the engine's policy) and whether the table
/// may evict it for a new flow ([`Phase::is_embryonic`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Only the client has spoken: a SYN, or UDP datagrams without an answer.
    Opening,
    /// The endpoint answered a SYN; the client's ACK that completes the handshake is not seen.
    Answered,
    /// The TCP handshake completed, or the endpoint answered a UDP flow.
    Established,
    /// Established, then a FIN from the side given: the other side may still send.
    HalfClosed(Direction),
    /// Established, then FINs from both sides or a RST.
    Closing,
    /// A FIN or RST before the connection was ever established.
    Aborted,
}

impl Phase {
    /// Never established: such a flow may be evicted when the table is full. Spoofed SYNs end
    /// here (their SYN-ACK is never acknowledged), so a flood cannot pin slots.
    pub fn is_embryonic(self) -> bool {
        matches!(self, Phase::Opening | Phase::Answered | Phase::Aborted)
    }

    /// The connection is over (FINs both ways, a RST, an abort) and only lingers for the last
    /// packets: it no longer loads its endpoint.
    pub fn has_ended(self) -> bool {
        matches!(self, Phase::Closing | Phase::Aborted)
    }

    pub fn state(self) -> FlowState {
        match self {
            Phase::Opening | Phase::Answered => FlowState::New,
            Phase::Established => FlowState::Established,
            Phase::HalfClosed(_) | Phase::Closing | Phase::Aborted => FlowState::Closing,
        }
    }
}

/// Why a flow left the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// Its timeout passed.
    Expired,
    /// A new flow needed its slot while it was not established.
    Evicted,
    /// Its owner removed it (e.g. a new connection reusing a closing flow's ports).
    Ended,
    /// Its service was deleted.
    Forgotten,
}

/// What the owner gives to open a flow; it starts in [`Phase::Opening`] with zero counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewFlow<A = Ipv4Addr> {
    /// The tuple the client sends; its destination is the service.
    pub original: FlowKey<A>,
    /// The tuple the endpoint answers with. Its source is the endpoint's address; in the
    /// source-translating modes its destination is the SNAT address and port.
    pub reply: FlowKey<A>,
    pub mode: NatMode,
    pub endpoint: Endpoint,
    pub client: ClientL2,
    /// Milliseconds on the owner's clock after which the flow is gone.
    pub expires_at: u64,
    /// Idle time allowed once established (kept to 49 days, `u32` milliseconds).
    pub idle_ms: u64,
    /// The flow's slot in the worker's per-endpoint counters.
    pub stats_slot: u16,
}

/// Whether a slab slot holds a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    /// On the free list.
    Free,
    Live,
    /// Removed from the index, waiting in the zombie list until the owner drains it (only when
    /// the queue of removal events was full: see `drain_removed`).
    Zombie(Removal),
}

/// One tracked flow, stored once. The service is the original tuple's destination and the SNAT
/// address and port are the reply tuple's destination, so neither is stored again.
#[derive(Debug, Clone)]
pub struct Flow<A = Ipv4Addr> {
    client: A,
    vip: A,
    endpoint_addr: A,
    reply_dst: A,
    client_port: u16,
    vip_port: u16,
    reply_src_port: u16,
    reply_dst_port: u16,
    endpoint_port: u16,
    /// The flow's slot in the worker's per-endpoint counters (`accounting`).
    stats_slot: u16,
    proto: Proto,
    mode: NatMode,
    phase: Phase,
    status: Status,
    weight: u8,
    ifindex: u32,
    peer_mac: [u8; 6],
    own_mac: [u8; 6],
    idle_ms: u32,
    /// Free and zombie lists use `next` only; the list of embryonic flows uses both.
    next: u32,
    prev: u32,
    expires_at: u64,
    packets: [u64; 2],
    bytes: [u64; 2],
}

/// No slot: the end of a list.
const NIL: u32 = u32::MAX;

impl<A: FlowAddr> Flow<A> {
    const VACANT: Flow<A> = Flow {
        client: A::UNSPECIFIED,
        vip: A::UNSPECIFIED,
        endpoint_addr: A::UNSPECIFIED,
        reply_dst: A::UNSPECIFIED,
        client_port: 0,
        vip_port: 0,
        reply_src_port: 0,
        reply_dst_port: 0,
        endpoint_port: 0,
        stats_slot: 0,
        proto: Proto::Tcp,
        mode: NatMode::Dnat,
        phase: Phase::Opening,
        status: Status::Free,
        weight: 0,
        ifindex: 0,
        peer_mac: [0; 6],
        own_mac: [0; 6],
        idle_ms: 0,
        next: NIL,
        prev: NIL,
        expires_at: 0,
        packets: [0; 2],
        bytes: [0; 2],
    };

    pub fn stats_slot(&self) -> u16 {
        self.stats_slot
    }

    pub fn original(&self) -> FlowKey<A> {
        FlowKey {
            src: self.client,
            dst: self.vip,
            src_port: self.client_port,
            dst_port: self.vip_port,
            proto: self.proto,
        }
    }

    pub fn reply(&self) -> FlowKey<A> {
        FlowKey {
            src: self.endpoint_addr,
            dst: self.reply_dst,
            src_port: self.reply_src_port,
            dst_port: self.reply_dst_port,
            proto: self.proto,
        }
    }

    fn key(&self, dir: Direction) -> FlowKey<A> {
        match dir {
            Direction::Original => self.original(),
            Direction::Reply => self.reply(),
        }
    }

    pub fn service(&self) -> ServiceKey {
        ServiceKey {
            vip: self.vip.to_ip(),
            port: self.vip_port,
            proto: self.proto,
        }
    }

    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            addr: self.endpoint_addr.to_ip(),
            port: self.endpoint_port,
            weight: self.weight,
        }
    }

    /// Source-translating modes: the address and port requests leave with.
    pub fn snat(&self) -> Option<(IpAddr, u16)> {
        self.mode
            .translates_source()
            .then_some((self.reply_dst.to_ip(), self.reply_dst_port))
    }

    pub fn client(&self) -> ClientL2 {
        ClientL2 {
            ifindex: self.ifindex,
            peer_mac: self.peer_mac,
            own_mac: self.own_mac,
        }
    }

    pub fn mode(&self) -> NatMode {
        self.mode
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn state(&self) -> FlowState {
        self.phase.state()
    }

    /// Milliseconds on the owner's clock after which the flow is gone.
    pub fn expires_at(&self) -> u64 {
        self.expires_at
    }

    /// Idle time allowed once established, from the service.
    pub fn idle_ms(&self) -> u64 {
        u64::from(self.idle_ms)
    }

    /// Per direction, indexed by `Direction as usize`.
    pub fn packets(&self) -> [u64; 2] {
        self.packets
    }

    /// IP bytes (header included) per direction, indexed by `Direction as usize`.
    pub fn bytes(&self) -> [u64; 2] {
        self.bytes
    }

    fn removed(&self, cause: Removal) -> Removed {
        Removed {
            service: self.service(),
            endpoint: self.endpoint(),
            snat: self.snat(),
            proto: self.proto,
            cause,
            ended: self.phase.has_ended(),
        }
    }
}

/// A copy of one flow for reports (the API's conntrack listing): plain values, nothing that
/// points back into a worker's table, so it can cross to the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowInfo {
    pub original: FlowKey<IpAddr>,
    pub reply: FlowKey<IpAddr>,
    pub service: ServiceKey,
    pub mode: NatMode,
    pub endpoint: Endpoint,
    pub snat: Option<(IpAddr, u16)>,
    pub state: FlowState,
    /// Per direction, indexed by `Direction as usize`.
    pub packets: [u64; 2],
    /// IP bytes (header included) per direction, indexed by `Direction as usize`.
    pub bytes: [u64; 2],
}

impl<A: FlowAddr> From<&Flow<A>> for FlowInfo {
    fn from(f: &Flow<A>) -> FlowInfo {
        FlowInfo {
            original: f.original().to_ip(),
            reply: f.reply().to_ip(),
            service: f.service(),
            mode: f.mode,
            endpoint: f.endpoint(),
            snat: f.snat(),
            state: f.state(),
            packets: f.packets,
            bytes: f.bytes,
        }
    }
}

/// Index of a flow in the slab.
pub type Slot = u32;

/// What the owner must undo when a flow goes: its SNAT port and its share of the endpoint's load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    pub service: ServiceKey,
    pub endpoint: Endpoint,
    pub snat: Option<(IpAddr, u16)>,
    pub proto: Proto,
    pub cause: Removal,
    /// The connection had ended (closing or aborted) before it left the table: its owner
    /// released its share of the endpoint's load then (see [`Phase::has_ended`]).
    pub ended: bool,
}

/// Why a flow could not be inserted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertError {
    /// The table holds `capacity` flows already, all of them established (or the owner has not
    /// drained the removal events of earlier ones).
    Full,
    /// Another live flow already owns the original or reply tuple.
    Collision,
}

/// Removal events kept for the owner between drains. The engine drains after every packet
/// (at most two removals) and every sweep (at most its budget); more (a deleted service's
/// flows) wait as zombies in the slab instead, so this never grows.
const REMOVED_QUEUE: usize = 256;
/// Slots looked at for an expired flow before a live embryonic flow is evicted.
const RECLAIM_SCAN: usize = 8;
/// The largest capacity: slot and direction must leave a bit of tag in a 32-bit index entry.
pub const MAX_CAPACITY: usize = 1 << 29;

pub struct Conntrack<A = Ipv4Addr> {
    slab: Vec<Flow<A>>,
    index: Index,
    live: usize,
    /// Head of the free list.
    free: Slot,
    /// Head of the list of removed flows whose event did not fit the queue.
    zombies: Slot,
    /// Embryonic flows, oldest first: the eviction candidates.
    young_head: Slot,
    young_tail: Slot,
    sweep_cursor: usize,
    /// Flows removed since the owner last drained this; never grows past `REMOVED_QUEUE`.
    removed: Vec<Removed>,
}

impl<A: FlowAddr> Conntrack<A> {
    /// A table for `capacity` flows, all of its memory allocated (and written) now.
    ///
    /// Panics if `capacity` exceeds [`MAX_CAPACITY`].
    pub fn with_capacity(capacity: usize) -> Self {
        assert!(
            capacity <= MAX_CAPACITY,
            "conntrack capacity {capacity} exceeds {MAX_CAPACITY}"
        );
        let mut slab = vec![Flow::VACANT; capacity];
        for (i, f) in slab.iter_mut().enumerate() {
            f.next = if i + 1 < capacity { i as u32 + 1 } else { NIL };
        }
        Conntrack {
            slab,
            index: Index::new(2 * capacity),
            live: 0,
            free: if capacity > 0 { 0 } else { NIL },
            zombies: NIL,
            young_head: NIL,
            young_tail: NIL,
            sweep_cursor: 0,
            removed: Vec::with_capacity(REMOVED_QUEUE.min(capacity.max(1))),
        }
    }

    pub fn capacity(&self) -> usize {
        self.slab.len()
    }

    /// Bytes the table holds allocated for its capacity: the slab of flows, the index and the
    /// queue of removal events. Fixed at creation (nothing grows), so this is the memory cost
    /// of `capacity()` flows.
    pub fn allocated_bytes(&self) -> usize {
        self.slab.capacity() * std::mem::size_of::<Flow<A>>()
            + self.index.allocated_bytes()
            + self.removed.capacity() * std::mem::size_of::<Removed>()
    }

    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Finds the live flow a packet belongs to; an expired flow is removed and not returned.
    pub fn lookup(&mut self, key: &FlowKey<A>, now: u64) -> Option<(Slot, Direction)> {
        let (slot, dir) = self.find(key)?;
        if self.slab[slot as usize].expires_at <= now {
            self.remove_as(slot, Removal::Expired);
            return None;
        }
        Some((slot, dir))
    }

    /// The flow in `slot`, which must come from `lookup` or `insert` with no removal since.
    pub fn flow(&self, slot: Slot) -> &Flow<A> {
        let f = &self.slab[slot as usize];
        debug_assert_eq!(f.status, Status::Live, "slot handed out by lookup/insert");
        f
    }

    /// Counts a packet of `ip_len` bytes in direction `dir` of the flow in `slot` and moves it
    /// to `phase` with a new expiry; returns the flow. A flow that becomes established leaves
    /// the eviction candidates here.
    pub fn update(
        &mut self,
        slot: Slot,
        dir: Direction,
        ip_len: usize,
        phase: Phase,
        expires_at: u64,
    ) -> &Flow<A> {
        let f = &mut self.slab[slot as usize];
        debug_assert_eq!(f.status, Status::Live, "slot handed out by lookup/insert");
        let d = dir as usize;
        f.packets[d] += 1;
        f.bytes[d] += ip_len as u64;
        let was_embryonic = f.phase.is_embryonic();
        f.phase = phase;
        f.expires_at = expires_at;
        match (was_embryonic, phase.is_embryonic()) {
            (true, false) => self.unlink_young(slot),
            (false, true) => self.push_young(slot),
            _ => {}
        }
        &self.slab[slot as usize]
    }

    /// Adds a flow. When the table is full it takes the slot of an expired flow, or else
    /// evicts the oldest embryonic flow (its removal event says `Evicted`); an established flow
    /// is never evicted. Constant time: at most [`RECLAIM_SCAN`] slots are looked at.
    pub fn insert(&mut self, flow: NewFlow<A>, now: u64) -> Result<Slot, InsertError> {
        debug_assert_eq!(
            flow.reply.src.to_ip(),
            flow.endpoint.addr,
            "replies come from the endpoint"
        );
        debug_assert_eq!(flow.original.proto, flow.reply.proto);
        let hashes = [
            self.index.hash(&flow.original),
            self.index.hash(&flow.reply),
        ];
        for (key, h) in [&flow.original, &flow.reply].into_iter().zip(hashes) {
            if let Some((slot, _)) = self.index.find_hashed(&self.slab, h, key) {
                // A flow past its timeout that no packet or sweep has reached yet is gone.
                if self.slab[slot as usize].expires_at > now {
                    return Err(InsertError::Collision);
                }
                self.remove_as(slot, Removal::Expired);
                if self.index.find_hashed(&self.slab, h, key).is_some() {
                    return Err(InsertError::Collision);
                }
            }
        }
        let slot = self.take_slot(now).ok_or(InsertError::Full)?;
        let (o, r, e, c) = (flow.original, flow.reply, flow.endpoint, flow.client);
        self.slab[slot as usize] = Flow {
            client: o.src,
            vip: o.dst,
            endpoint_addr: r.src,
            reply_dst: r.dst,
            client_port: o.src_port,
            vip_port: o.dst_port,
            reply_src_port: r.src_port,
            reply_dst_port: r.dst_port,
            endpoint_port: e.port,
            stats_slot: flow.stats_slot,
            proto: o.proto,
            mode: flow.mode,
            phase: Phase::Opening,
            status: Status::Live,
            weight: e.weight,
            ifindex: c.ifindex,
            peer_mac: c.peer_mac,
            own_mac: c.own_mac,
            idle_ms: u32::try_from(flow.idle_ms).unwrap_or(u32::MAX),
            next: NIL,
            prev: NIL,
            expires_at: flow.expires_at,
            packets: [0; 2],
            bytes: [0; 2],
        };
        self.index.insert(hashes[0], slot, Direction::Original);
        self.index.insert(hashes[1], slot, Direction::Reply);
        self.push_young(slot);
        self.live += 1;
        Ok(slot)
    }

    /// A free slot, reclaiming one from an expired or embryonic flow when there is none.
    fn take_slot(&mut self, now: u64) -> Option<Slot> {
        if self.free == NIL {
            // The victim's event must be queued (not left as a zombie) for its slot to be free.
            if self.removed.len() == self.removed.capacity() {
                return None;
            }
            let oldest = self.young_head;
            if oldest != NIL && self.slab[oldest as usize].expires_at <= now {
                self.remove_as(oldest, Removal::Expired);
            } else if let Some(slot) = self.find_expired(now) {
                self.remove_as(slot, Removal::Expired);
            } else if oldest != NIL {
                self.remove_as(oldest, Removal::Evicted);
            } else {
                return None;
            }
        }
        let slot = self.free;
        if slot == NIL {
            return None;
        }
        self.free = self.slab[slot as usize].next;
        Some(slot)
    }

    /// Removes the oldest embryonic flow among the `look` oldest whose SNAT address is `addr`
    /// for `proto`, so that its port can serve a new flow; returns whether there was one. A
    /// flood through a source-translating service would otherwise hold every port for the
    /// new-flow timeout, long before the table is full.
    pub fn evict_for_port(&mut self, addr: IpAddr, proto: Proto, now: u64, look: usize) -> bool {
        if self.removed.len() == self.removed.capacity() {
            return false;
        }
        let mut slot = self.young_head;
        for _ in 0..look {
            if slot == NIL {
                return false;
            }
            let f = &self.slab[slot as usize];
            if f.proto == proto && f.snat().is_some_and(|(a, _)| a == addr) {
                let cause = if f.expires_at <= now {
                    Removal::Expired
                } else {
                    Removal::Evicted
                };
                return self.remove_as(slot, cause);
            }
            slot = f.next;
        }
        false
    }

    /// An expired live flow among the next few slots from the sweep's position.
    fn find_expired(&mut self, now: u64) -> Option<Slot> {
        let n = self.slab.len();
        for _ in 0..RECLAIM_SCAN.min(n) {
            let slot = self.sweep_cursor;
            self.sweep_cursor = (self.sweep_cursor + 1) % n;
            let f = &self.slab[slot];
            if f.status == Status::Live && f.expires_at <= now {
                return Some(slot as Slot);
            }
        }
        None
    }

    /// Removes the flow in `slot` (if any); its removal event says `Ended`.
    pub fn remove(&mut self, slot: Slot) -> bool {
        self.remove_as(slot, Removal::Ended)
    }

    fn remove_as(&mut self, slot: Slot, cause: Removal) -> bool {
        let f = &self.slab[slot as usize];
        if f.status != Status::Live {
            return false;
        }
        let (o, r, embryonic) = (f.original(), f.reply(), f.phase.is_embryonic());
        let h = self.index.hash(&o);
        self.index.remove(&self.slab, h, slot, Direction::Original);
        let h = self.index.hash(&r);
        self.index.remove(&self.slab, h, slot, Direction::Reply);
        if embryonic {
            self.unlink_young(slot);
        }
        self.live -= 1;
        let f = &mut self.slab[slot as usize];
        if self.removed.len() < self.removed.capacity() {
            self.removed.push(f.removed(cause));
            f.status = Status::Free;
            f.next = self.free;
            self.free = slot;
        } else {
            f.status = Status::Zombie(cause);
            f.next = self.zombies;
            self.zombies = slot;
        }
        true
    }

    fn push_young(&mut self, slot: Slot) {
        let tail = self.young_tail;
        let f = &mut self.slab[slot as usize];
        f.prev = tail;
        f.next = NIL;
        if tail == NIL {
            self.young_head = slot;
        } else {
            self.slab[tail as usize].next = slot;
        }
        self.young_tail = slot;
    }

    fn unlink_young(&mut self, slot: Slot) {
        let (prev, next) = {
            let f = &mut self.slab[slot as usize];
            let links = (f.prev, f.next);
            (f.prev, f.next) = (NIL, NIL);
            links
        };
        if prev == NIL {
            self.young_head = next;
        } else {
            self.slab[prev as usize].next = next;
        }
        if next == NIL {
            self.young_tail = prev;
        } else {
            self.slab[next as usize].prev = prev;
        }
    }

    /// Looks at up to `budget` slots from where the last sweep stopped and removes expired
    /// flows; returns how many it removed. Bounded so a worker can call it every batch.
    pub fn sweep(&mut self, now: u64, budget: usize) -> usize {
        let n = self.slab.len();
        if n == 0 {
            return 0;
        }
        let mut removed = 0;
        for _ in 0..budget.min(n) {
            let slot = self.sweep_cursor;
            self.sweep_cursor = (self.sweep_cursor + 1) % n;
            let f = &self.slab[slot];
            if f.status == Status::Live && f.expires_at <= now {
                self.remove_as(slot as Slot, Removal::Expired);
                removed += 1;
            }
        }
        removed
    }

    /// Removes every flow of a service; returns how many.
    pub fn forget_service(&mut self, service: &ServiceKey) -> usize {
        let mut n = 0;
        for slot in 0..self.slab.len() {
            let f = &self.slab[slot];
            if f.status == Status::Live && f.service() == *service {
                self.remove_as(slot as Slot, Removal::Forgotten);
                n += 1;
            }
        }
        n
    }

    /// Hands over the flows removed since the last call, for releasing what they held. Slots
    /// of zombies are freed as their events are taken; events not taken stay for next time.
    pub fn drain_removed(&mut self) -> DrainRemoved<'_, A> {
        DrainRemoved { table: self }
    }

    /// Whether some live flow owns this tuple (in either direction).
    pub fn contains(&self, key: &FlowKey<A>) -> bool {
        self.find(key).is_some()
    }

    /// The live flows (expired ones the sweep has not reached included).
    pub fn iter(&self) -> impl Iterator<Item = &Flow<A>> {
        self.slab.iter().filter(|f| f.status == Status::Live)
    }

    /// Copies up to `max` flows still live at `now` (an expired flow the sweep has not reached
    /// yet is left out); returns them and whether more were left out for the cap.
    pub fn copy_flows(&self, now: u64, max: usize) -> (Vec<FlowInfo>, bool) {
        let mut out = Vec::with_capacity(self.len().min(max));
        let mut live = self.iter().filter(|f| f.expires_at > now);
        out.extend(live.by_ref().take(max).map(FlowInfo::from));
        let truncated = live.next().is_some();
        (out, truncated)
    }

    fn find(&self, key: &FlowKey<A>) -> Option<(Slot, Direction)> {
        self.index.find(&self.slab, key)
    }
}

/// The removal events of a [`Conntrack`], queued ones first, then zombies.
pub struct DrainRemoved<'a, A = Ipv4Addr> {
    table: &'a mut Conntrack<A>,
}

impl<A: FlowAddr> Iterator for DrainRemoved<'_, A> {
    type Item = Removed;

    fn next(&mut self) -> Option<Removed> {
        let t = &mut *self.table;
        if let Some(r) = t.removed.pop() {
            return Some(r);
        }
        let slot = t.zombies;
        if slot == NIL {
            return None;
        }
        let f = &mut t.slab[slot as usize];
        let Status::Zombie(cause) = f.status else {
            unreachable!("only zombies are on the zombie list")
        };
        t.zombies = f.next;
        f.status = Status::Free;
        f.next = t.free;
        t.free = slot;
        Some(f.removed(cause))
    }
}

/// An empty index entry (never a valid one: see `Index::new`).
const EMPTY: u32 = u32::MAX;

/// Linear-probing hash index from a tuple to the (slot, direction) holding it.
///
/// An entry is `tag << ref_bits | slot << 1 | direction`, the tag being the hash's top bits.
/// The table stays at most 3/4 full, so a probe always meets an empty entry.
struct Index {
    entries: Box<[u32]>,
    mask: usize,
    ref_bits: u32,
    /// Seeded per table at random: a flood cannot aim its tuples at one probe sequence.
    hasher: DefaultHashBuilder,
}

impl Index {
    /// An index for up to `refs` entries.
    fn new(refs: usize) -> Index {
        // Entries hold values up to `refs - 1` in `ref_bits`, which leaves the all-ones value
        // (EMPTY) unused whatever the tag.
        let ref_bits = usize::BITS - refs.leading_zeros();
        let buckets = (refs * 4).div_ceil(3).max(2).next_power_of_two();
        Index {
            entries: vec![EMPTY; buckets].into_boxed_slice(),
            mask: buckets - 1,
            ref_bits,
            hasher: DefaultHashBuilder::default(),
        }
    }

    fn allocated_bytes(&self) -> usize {
        self.entries.len() * std::mem::size_of::<u32>()
    }

    fn hash<A: FlowAddr>(&self, k: &FlowKey<A>) -> u64 {
        A::hash_key(k, &self.hasher)
    }

    fn tag(&self, h: u64) -> u32 {
        // The top `32 - ref_bits` bits (ref_bits >= 2 whenever an entry exists).
        (h >> (32 + self.ref_bits)) as u32
    }

    fn reference(&self, e: u32) -> (Slot, Direction) {
        let r = e & ((1u32 << self.ref_bits) - 1);
        let dir = if r & 1 == 0 {
            Direction::Original
        } else {
            Direction::Reply
        };
        (r >> 1, dir)
    }

    fn entry(&self, h: u64, slot: Slot, dir: Direction) -> u32 {
        self.tag(h) << self.ref_bits | slot << 1 | dir as u32
    }

    fn find<A: FlowAddr>(&self, slab: &[Flow<A>], key: &FlowKey<A>) -> Option<(Slot, Direction)> {
        self.find_hashed(slab, self.hash(key), key)
    }

    /// `find` for a key whose hash is `h`.
    fn find_hashed<A: FlowAddr>(
        &self,
        slab: &[Flow<A>],
        h: u64,
        key: &FlowKey<A>,
    ) -> Option<(Slot, Direction)> {
        let tag = self.tag(h);
        let mut i = h as usize & self.mask;
        loop {
            let e = self.entries[i];
            if e == EMPTY {
                return None;
            }
            if e >> self.ref_bits == tag {
                let (slot, dir) = self.reference(e);
                if slab[slot as usize].key(dir) == *key {
                    return Some((slot, dir));
                }
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Adds an entry for a key known to be absent, whose hash is `h`.
    fn insert(&mut self, h: u64, slot: Slot, dir: Direction) {
        let mut i = h as usize & self.mask;
        while self.entries[i] != EMPTY {
            i = (i + 1) & self.mask;
        }
        self.entries[i] = self.entry(h, slot, dir);
    }

    /// Deletes the entry of (`slot`, `dir`), whose key hashes to `h`, and shifts the entries
    /// after it back so that every probe still reaches its key before an empty entry. Reads
    /// the keys of those entries from `slab`.
    fn remove<A: FlowAddr>(&mut self, slab: &[Flow<A>], h: u64, slot: Slot, dir: Direction) {
        let want = self.entry(h, slot, dir);
        let mut hole = h as usize & self.mask;
        loop {
            match self.entries[hole] {
                e if e == want => break,
                EMPTY => {
                    debug_assert!(false, "removing an entry that is not in the index");
                    return;
                }
                _ => hole = (hole + 1) & self.mask,
            }
        }
        let mut j = hole;
        loop {
            j = (j + 1) & self.mask;
            let e = self.entries[j];
            if e == EMPTY {
                break;
            }
            let (s, d) = self.reference(e);
            let home = self.hash(&slab[s as usize].key(d)) as usize & self.mask;
            // The entry may fill the hole if the hole lies between its home and where it sits.
            if j.wrapping_sub(home) & self.mask >= j.wrapping_sub(hole) & self.mask {
                self.entries[hole] = e;
                hole = j;
            }
        }
        self.entries[hole] = EMPTY;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
    const EP: Ipv4Addr = Ipv4Addr::new(198, 18, 31, 1);

    fn flow(client_port: u16, expires_at: u64) -> NewFlow {
        NewFlow {
            original: FlowKey {
                src: CLIENT,
                dst: VIP,
                src_port: client_port,
                dst_port: 2020,
                proto: Proto::Tcp,
            },
            reply: FlowKey {
                src: EP,
                dst: CLIENT,
                src_port: 8080,
                dst_port: client_port,
                proto: Proto::Tcp,
            },
            mode: NatMode::Dnat,
            endpoint: Endpoint {
                addr: IpAddr::from(EP),
                port: 8080,
                weight: 1,
            },
            client: ClientL2 {
                ifindex: 1,
                peer_mac: [2; 6],
                own_mac: [3; 6],
            },
            expires_at,
            idle_ms: 1000,
            stats_slot: 0,
        }
    }

    /// Marks the flow of `client_port` established until `expires_at`.
    fn establish(ct: &mut Conntrack, client_port: u16, expires_at: u64) {
        let (slot, _) = ct.lookup(&flow(client_port, 0).original, 0).unwrap();
        ct.update(
            slot,
            Direction::Original,
            40,
            Phase::Established,
            expires_at,
        );
    }

    fn causes(ct: &mut Conntrack) -> Vec<Removal> {
        ct.drain_removed().map(|r| r.cause).collect()
    }

    #[test]
    fn a_flow_is_found_from_both_directions() {
        let mut ct = Conntrack::with_capacity(4);
        let f = flow(40000, 100);
        let (o, r) = (f.original, f.reply);
        ct.insert(f, 0).unwrap();
        assert_eq!(ct.lookup(&o, 0).unwrap().1, Direction::Original);
        assert_eq!(ct.lookup(&r, 0).unwrap().1, Direction::Reply);
    }

    #[test]
    fn a_stored_flow_gives_back_what_was_inserted() {
        let mut ct = Conntrack::with_capacity(4);
        let mut f = flow(40000, 100);
        f.mode = NatMode::FullNat;
        f.reply.dst = VIP;
        f.reply.dst_port = 45000;
        let slot = ct.insert(f, 0).unwrap();
        let s = ct.flow(slot);
        assert_eq!((s.original(), s.reply()), (f.original, f.reply));
        assert_eq!(
            (s.endpoint(), s.client(), s.mode()),
            (f.endpoint, f.client, f.mode)
        );
        assert_eq!(s.snat(), Some((VIP.into(), 45000)));
        assert_eq!((s.service().vip, s.service().port), (VIP.into(), 2020));
        assert_eq!(
            (s.phase(), s.expires_at(), s.idle_ms()),
            (Phase::Opening, 100, 1000)
        );
    }

    #[test]
    fn a_full_table_of_established_flows_refuses_new_flows_instead_of_growing() {
        let mut ct = Conntrack::with_capacity(2);
        let bytes = ct.allocated_bytes();
        for p in 1..=2 {
            ct.insert(flow(p, 100), 0).unwrap();
            establish(&mut ct, p, 100);
        }
        assert_eq!(ct.insert(flow(3, 100), 0).unwrap_err(), InsertError::Full);
        assert_eq!(ct.len(), 2);
        assert_eq!(ct.allocated_bytes(), bytes);
    }

    #[test]
    fn a_full_table_evicts_its_oldest_embryonic_flow_for_a_new_one() {
        let mut ct = Conntrack::with_capacity(3);
        ct.insert(flow(1, 100), 0).unwrap();
        ct.insert(flow(2, 100), 0).unwrap();
        ct.insert(flow(3, 100), 0).unwrap();
        establish(&mut ct, 1, 100);
        causes(&mut ct);
        ct.insert(flow(4, 100), 0).unwrap();
        assert_eq!(causes(&mut ct), [Removal::Evicted]);
        assert!(
            !ct.contains(&flow(2, 0).original),
            "the oldest embryonic flow went"
        );
        for p in [1, 3, 4] {
            assert!(ct.contains(&flow(p, 0).original));
            assert!(ct.contains(&flow(p, 0).reply));
        }
    }

    #[test]
    fn a_full_table_prefers_an_expired_flow_to_a_live_embryonic_one() {
        let mut ct = Conntrack::with_capacity(2);
        ct.insert(flow(1, 100), 0).unwrap();
        ct.insert(flow(2, 10), 0).unwrap();
        establish(&mut ct, 2, 10);
        ct.insert(flow(3, 100), 50).unwrap();
        assert_eq!(causes(&mut ct), [Removal::Expired]);
        assert!(ct.contains(&flow(1, 0).original));
    }

    #[test]
    fn a_flood_of_new_flows_never_evicts_an_established_flow_nor_grows_the_table() {
        let mut ct = Conntrack::with_capacity(64);
        let bytes = ct.allocated_bytes();
        for p in 0..16 {
            ct.insert(flow(p, u64::MAX), 0).unwrap();
            establish(&mut ct, p, u64::MAX);
        }
        let mut evicted = 0;
        for p in 16..20_000 {
            ct.insert(flow(p, u64::MAX), 0).unwrap();
            evicted += causes(&mut ct)
                .iter()
                .filter(|c| **c == Removal::Evicted)
                .count();
            assert!(ct.len() <= 64);
        }
        assert_eq!(evicted, 20_000 - 64);
        for p in 0..16 {
            assert!(ct.lookup(&flow(p, 0).reply, 0).is_some(), "flow {p} kept");
        }
        assert_eq!(ct.allocated_bytes(), bytes);
    }

    #[test]
    fn an_established_flow_that_closes_is_still_never_evicted() {
        let mut ct = Conntrack::with_capacity(1);
        ct.insert(flow(1, 100), 0).unwrap();
        establish(&mut ct, 1, 100);
        let (slot, _) = ct.lookup(&flow(1, 0).original, 0).unwrap();
        ct.update(slot, Direction::Reply, 40, Phase::Closing, 100);
        assert_eq!(ct.insert(flow(2, 100), 0).unwrap_err(), InsertError::Full);
    }

    #[test]
    fn an_expired_flow_is_gone_on_lookup_and_its_slot_reused() {
        let mut ct = Conntrack::with_capacity(1);
        let f = flow(1, 10);
        let o = f.original;
        ct.insert(f, 0).unwrap();
        assert!(ct.lookup(&o, 10).is_none());
        assert!(ct.is_empty());
        assert_eq!(causes(&mut ct), [Removal::Expired]);
        ct.insert(flow(2, 100), 10).unwrap();
    }

    #[test]
    fn the_sweep_removes_expired_flows_within_its_budget() {
        let mut ct = Conntrack::with_capacity(8);
        for p in 0..8 {
            ct.insert(flow(p, if p % 2 == 0 { 5 } else { 500 }), 0)
                .unwrap();
        }
        assert_eq!(ct.sweep(10, 8), 4);
        assert_eq!(ct.len(), 4);
    }

    #[test]
    fn copied_flows_leave_out_expired_ones_and_stop_at_the_cap() {
        let mut ct = Conntrack::with_capacity(8);
        for p in 0..6 {
            ct.insert(flow(p, if p < 2 { 5 } else { 500 }), 0).unwrap();
        }
        let (all, truncated) = ct.copy_flows(10, 100);
        assert_eq!((all.len(), truncated), (4, false));
        assert!(all.iter().all(|f| f.original.src_port >= 2));
        let (some, truncated) = ct.copy_flows(10, 3);
        assert_eq!((some.len(), truncated), (3, true));
        let (exact, truncated) = ct.copy_flows(10, 4);
        assert_eq!((exact.len(), truncated), (4, false));
    }

    #[test]
    fn a_duplicate_tuple_is_a_collision() {
        let mut ct = Conntrack::with_capacity(4);
        ct.insert(flow(1, 100), 0).unwrap();
        assert_eq!(
            ct.insert(flow(1, 100), 0).unwrap_err(),
            InsertError::Collision
        );
    }

    #[test]
    fn a_tuple_held_by_an_expired_flow_is_taken_over() {
        let mut ct = Conntrack::with_capacity(4);
        ct.insert(flow(1, 10), 0).unwrap();
        ct.insert(flow(1, 100), 20).unwrap();
        assert_eq!(ct.len(), 1);
        assert_eq!(causes(&mut ct), [Removal::Expired]);
    }

    #[test]
    fn a_port_is_freed_from_the_oldest_embryonic_flow_holding_one_for_that_address() {
        let mut ct = Conntrack::with_capacity(8);
        let snat = |p: u16, addr: Ipv4Addr| {
            let mut f = flow(p, 100);
            f.mode = NatMode::FullNat;
            f.reply.dst = addr;
            f.reply.dst_port = 45000 + p;
            f
        };
        ct.insert(flow(1, 100), 0).unwrap();
        ct.insert(snat(2, EP), 0).unwrap();
        ct.insert(snat(3, VIP), 0).unwrap();
        ct.insert(snat(4, VIP), 0).unwrap();
        establish(&mut ct, 3, 100);
        causes(&mut ct);
        assert!(ct.evict_for_port(IpAddr::from(VIP), Proto::Tcp, 0, 8));
        let gone: Vec<_> = ct.drain_removed().collect();
        assert_eq!(gone.len(), 1);
        assert_eq!(
            (gone[0].snat, gone[0].cause),
            (Some((VIP.into(), 45004)), Removal::Evicted)
        );
        assert!(
            !ct.evict_for_port(IpAddr::from(VIP), Proto::Tcp, 0, 8),
            "only an established one is left"
        );
        assert!(!ct.evict_for_port(IpAddr::from(VIP), Proto::Udp, 0, 8));
    }

    #[test]
    fn forgetting_a_service_with_more_flows_than_the_event_queue_reports_every_one() {
        let mut ct = Conntrack::with_capacity(1000);
        for p in 0..1000 {
            ct.insert(flow(p, 100), 0).unwrap();
        }
        let svc = ct.flow(0).service();
        assert_eq!(ct.forget_service(&svc), 1000);
        assert!(ct.is_empty());
        let events = causes(&mut ct);
        assert_eq!(events.len(), 1000);
        assert!(events.iter().all(|c| *c == Removal::Forgotten));
        for p in 0..1000 {
            ct.insert(flow(p, 100), 0).unwrap();
        }
    }

    #[test]
    fn the_index_finds_every_flow_through_heavy_churn() {
        // Small table, many collisions in the index: removals must keep every probe intact.
        let mut ct = Conntrack::with_capacity(48);
        let mut present = std::collections::BTreeSet::new();
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..50_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let p = (x % 200) as u16;
            if present.contains(&p) {
                let (slot, _) = ct.lookup(&flow(p, 0).reply, 0).unwrap();
                assert!(ct.remove(slot));
                present.remove(&p);
            } else if present.len() < 48 {
                ct.insert(flow(p, u64::MAX), 0).unwrap();
                establish(&mut ct, p, u64::MAX);
                present.insert(p);
            }
            causes(&mut ct);
        }
        for p in 0..200 {
            assert_eq!(ct.contains(&flow(p, 0).original), present.contains(&p));
            assert_eq!(ct.contains(&flow(p, 0).reply), present.contains(&p));
        }
        assert_eq!(ct.len(), present.len());
    }

    #[test]
    fn a_flow_costs_at_most_128_bytes_at_realistic_capacities() {
        assert!(
            std::mem::size_of::<Flow>() <= 104,
            "{}",
            std::mem::size_of::<Flow>()
        );
        // 262 144 is the default; the others round badly to a power of two.
        for capacity in [262_144, 196_609, 100_000, 1_000_000] {
            let ct = Conntrack::<Ipv4Addr>::with_capacity(capacity);
            let per_flow = ct.allocated_bytes() as f64 / capacity as f64;
            assert!(per_flow <= 128.0, "{capacity} flows: {per_flow} bytes each");
        }
    }
}
