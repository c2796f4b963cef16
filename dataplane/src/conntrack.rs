//! Connection tracking: a fixed-capacity table of flows, found from either direction.
//!
//! Each flow is stored once in a slab and indexed twice in a hashbrown map: by the tuple the
//! client sends (original direction) and by the tuple the endpoint answers with (reply
//! direction). The table never grows past its capacity: a new flow is refused (and counted by
//! the caller) instead. Expired flows are removed lazily on lookup and by a bounded sweep.

use crate::snapshot::{Endpoint, NatMode, Proto, ServiceKey};
use hashbrown::HashMap;
use std::net::Ipv4Addr;

/// The 5-tuple of a packet as seen on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: Proto,
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

/// TCP progress as far as timeouts care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowState {
    /// Only the client has spoken.
    New,
    /// Both directions have carried packets.
    Established,
    /// A FIN or RST was seen: the flow lingers briefly for the last packets.
    Closing,
}

#[derive(Debug, Clone)]
pub struct Flow {
    pub original: FlowKey,
    pub reply: FlowKey,
    pub service: ServiceKey,
    pub mode: NatMode,
    pub endpoint: Endpoint,
    /// Source-translating modes: the address and port requests leave with.
    pub snat: Option<(Ipv4Addr, u16)>,
    pub client: ClientL2,
    pub state: FlowState,
    /// Milliseconds on the worker's clock after which the flow is gone.
    pub expires_at: u64,
    /// Idle time allowed once established, from the service.
    pub idle_ms: u64,
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
}

/// A copy of one flow for reports (the API's conntrack listing): plain values, nothing that
/// points back into a worker's table, so it can cross to the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowInfo {
    pub original: FlowKey,
    pub reply: FlowKey,
    pub service: ServiceKey,
    pub mode: NatMode,
    pub endpoint: Endpoint,
    pub snat: Option<(Ipv4Addr, u16)>,
    pub state: FlowState,
    /// Per direction, indexed by `Direction as usize`.
    pub packets: [u64; 2],
    /// IP bytes (header included) per direction, indexed by `Direction as usize`.
    pub bytes: [u64; 2],
}

impl From<&Flow> for FlowInfo {
    fn from(f: &Flow) -> FlowInfo {
        FlowInfo {
            original: f.original,
            reply: f.reply,
            service: f.service,
            mode: f.mode,
            endpoint: f.endpoint,
            snat: f.snat,
            state: f.state,
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
    pub snat: Option<(Ipv4Addr, u16)>,
    pub proto: Proto,
}

pub struct Conntrack {
    index: HashMap<FlowKey, (Slot, Direction)>,
    slab: Vec<Option<Flow>>,
    free: Vec<Slot>,
    sweep_cursor: usize,
    /// Flows removed since the owner last drained this (bounded by the table's capacity).
    removed: Vec<Removed>,
}

/// Why a flow could not be inserted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertError {
    /// The table holds `capacity` flows already.
    Full,
    /// Another flow already owns the original or reply tuple.
    Collision,
}

impl Conntrack {
    pub fn with_capacity(capacity: usize) -> Self {
        Conntrack {
            index: HashMap::with_capacity(capacity * 2),
            slab: Vec::with_capacity(capacity),
            free: Vec::new(),
            sweep_cursor: 0,
            removed: Vec::with_capacity(capacity.min(4096)),
        }
        .filled(capacity)
    }

    fn filled(mut self, capacity: usize) -> Self {
        self.slab.resize_with(capacity, || None);
        self.free = (0..capacity as Slot).rev().collect();
        self
    }

    pub fn capacity(&self) -> usize {
        self.slab.len()
    }

    /// Bytes the table holds allocated for its capacity: the slab of flows plus the index.
    /// Fixed at creation (nothing grows), so this is the memory cost of `capacity()` flows.
    pub fn allocated_bytes(&self) -> usize {
        self.slab.capacity() * std::mem::size_of::<Option<Flow>>()
            + self.free.capacity() * std::mem::size_of::<Slot>()
            + self.index.allocation_size()
    }

    pub fn len(&self) -> usize {
        self.slab.len() - self.free.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Finds the live flow a packet belongs to; an expired flow is removed and not returned.
    pub fn lookup(&mut self, key: &FlowKey, now: u64) -> Option<(Slot, Direction)> {
        let (slot, dir) = *self.index.get(key)?;
        let expired = self.slab[slot as usize]
            .as_ref()
            .is_none_or(|f| f.expires_at <= now);
        if expired {
            self.remove(slot);
            return None;
        }
        Some((slot, dir))
    }

    /// The flow in `slot`, which must come from `lookup` or `insert` with no removal since.
    pub fn flow_mut(&mut self, slot: Slot) -> &mut Flow {
        self.slab[slot as usize]
            .as_mut()
            .expect("slot handed out by lookup/insert is occupied")
    }

    pub fn insert(&mut self, flow: Flow) -> Result<Slot, InsertError> {
        if self.index.contains_key(&flow.original) || self.index.contains_key(&flow.reply) {
            return Err(InsertError::Collision);
        }
        let slot = self.free.pop().ok_or(InsertError::Full)?;
        self.index
            .insert(flow.original, (slot, Direction::Original));
        self.index.insert(flow.reply, (slot, Direction::Reply));
        self.slab[slot as usize] = Some(flow);
        Ok(slot)
    }

    /// Removes the flow in `slot` (if any) and frees the slot.
    pub fn remove(&mut self, slot: Slot) -> Option<Flow> {
        let flow = self.slab[slot as usize].take()?;
        self.index.remove(&flow.original);
        self.index.remove(&flow.reply);
        self.free.push(slot);
        self.removed.push(Removed {
            service: flow.service,
            endpoint: flow.endpoint,
            snat: flow.snat,
            proto: flow.original.proto,
        });
        Some(flow)
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
            if self.slab[slot]
                .as_ref()
                .is_some_and(|f| f.expires_at <= now)
            {
                self.remove(slot as Slot);
                removed += 1;
            }
        }
        removed
    }

    /// Removes every flow of a service; returns how many.
    pub fn forget_service(&mut self, service: &ServiceKey) -> usize {
        let slots: Vec<Slot> = self
            .slab
            .iter()
            .enumerate()
            .filter(|(_, f)| f.as_ref().is_some_and(|f| f.service == *service))
            .map(|(i, _)| i as Slot)
            .collect();
        for &s in &slots {
            self.remove(s);
        }
        slots.len()
    }

    /// Hands over the flows removed since the last call, for releasing what they held.
    pub fn drain_removed(&mut self) -> std::vec::Drain<'_, Removed> {
        self.removed.drain(..)
    }

    /// Whether some flow owns this tuple (in either direction).
    pub fn contains(&self, key: &FlowKey) -> bool {
        self.index.contains_key(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Flow> {
        self.slab.iter().flatten()
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(client_port: u16, expires_at: u64) -> Flow {
        let client = Ipv4Addr::new(198, 18, 0, 2);
        let vip = Ipv4Addr::new(198, 18, 100, 1);
        let ep = Ipv4Addr::new(198, 18, 31, 1);
        Flow {
            original: FlowKey {
                src: client,
                dst: vip,
                src_port: client_port,
                dst_port: 2020,
                proto: Proto::Tcp,
            },
            reply: FlowKey {
                src: ep,
                dst: client,
                src_port: 8080,
                dst_port: client_port,
                proto: Proto::Tcp,
            },
            service: ServiceKey {
                vip,
                port: 2020,
                proto: Proto::Tcp,
            },
            mode: NatMode::Dnat,
            endpoint: Endpoint {
                addr: ep,
                port: 8080,
                weight: 1,
            },
            snat: None,
            client: ClientL2 {
                ifindex: 1,
                peer_mac: [2; 6],
                own_mac: [3; 6],
            },
            state: FlowState::New,
            expires_at,
            idle_ms: 1000,
            packets: [0; 2],
            bytes: [0; 2],
        }
    }

    #[test]
    fn a_flow_is_found_from_both_directions() {
        let mut ct = Conntrack::with_capacity(4);
        let f = flow(40000, 100);
        let (o, r) = (f.original, f.reply);
        ct.insert(f).unwrap();
        assert_eq!(ct.lookup(&o, 0).unwrap().1, Direction::Original);
        assert_eq!(ct.lookup(&r, 0).unwrap().1, Direction::Reply);
    }

    #[test]
    fn a_full_table_refuses_new_flows_instead_of_growing() {
        let mut ct = Conntrack::with_capacity(2);
        ct.insert(flow(1, 100)).unwrap();
        ct.insert(flow(2, 100)).unwrap();
        assert_eq!(ct.insert(flow(3, 100)).unwrap_err(), InsertError::Full);
        assert_eq!(ct.len(), 2);
    }

    #[test]
    fn an_expired_flow_is_gone_on_lookup_and_its_slot_reused() {
        let mut ct = Conntrack::with_capacity(1);
        let f = flow(1, 10);
        let o = f.original;
        ct.insert(f).unwrap();
        assert!(ct.lookup(&o, 10).is_none());
        assert!(ct.is_empty());
        ct.insert(flow(2, 100)).unwrap();
    }

    #[test]
    fn the_sweep_removes_expired_flows_within_its_budget() {
        let mut ct = Conntrack::with_capacity(8);
        for p in 0..8 {
            ct.insert(flow(p, if p % 2 == 0 { 5 } else { 500 }))
                .unwrap();
        }
        assert_eq!(ct.sweep(10, 8), 4);
        assert_eq!(ct.len(), 4);
    }

    #[test]
    fn copied_flows_leave_out_expired_ones_and_stop_at_the_cap() {
        let mut ct = Conntrack::with_capacity(8);
        for p in 0..6 {
            ct.insert(flow(p, if p < 2 { 5 } else { 500 })).unwrap();
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
        ct.insert(flow(1, 100)).unwrap();
        assert_eq!(ct.insert(flow(1, 100)).unwrap_err(), InsertError::Collision);
    }
}
