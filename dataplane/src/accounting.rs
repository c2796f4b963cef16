//! Per service and endpoint traffic counters, kept by each worker.
//!
//! A flow carries a small slot number into this worker's table of (service, endpoint)
//! counters, chosen when the flow opens, so counting a packet is two additions at a known
//! index: no hashing on the per-packet path. The map from (service, endpoint) to slot is
//! consulted only when a flow opens or ends. Slots of a deleted service are reused.
//!
//! The same slot carries whether the pair's flows end now (their endpoint is down and the
//! service says so): marked once per snapshot, read per packet at the same known index.

use crate::snapshot::{Endpoint, ServiceKey};
use hashbrown::HashMap;
use std::net::IpAddr;

/// A flow whose pair found no slot (the table is full): its packets are not counted here.
pub const NO_SLOT: u16 = u16::MAX;

/// An endpoint as the counters know it: address and port, not weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointId {
    pub addr: IpAddr,
    pub port: u16,
}

impl From<Endpoint> for EndpointId {
    fn from(e: Endpoint) -> Self {
        EndpointId {
            addr: e.addr,
            port: e.port,
        }
    }
}

/// Traffic of one endpoint of one service through one worker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndpointCounters {
    /// Packets and IP bytes from the client toward the endpoint ([0]) and back ([1]).
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    pub flows_created: u64,
    pub flows_active: u64,
}

impl EndpointCounters {
    pub fn add(&mut self, o: &EndpointCounters) {
        for d in 0..2 {
            self.packets[d] += o.packets[d];
            self.bytes[d] += o.bytes[d];
        }
        self.flows_created += o.flows_created;
        self.flows_active += o.flows_active;
    }
}

/// One worker's counters by (service, endpoint).
#[derive(Debug, Default)]
pub struct Accounting {
    slots: HashMap<(ServiceKey, EndpointId), u16>,
    counters: Vec<EndpointCounters>,
    owners: Vec<Option<(ServiceKey, EndpointId)>>,
    /// Per slot: flows of the pair end at their next packet.
    ending: Vec<bool>,
    free: Vec<u16>,
}

impl Accounting {
    /// The slot of a new flow of `service` to `endpoint`, counted as created and active.
    pub fn open(&mut self, service: ServiceKey, endpoint: EndpointId) -> u16 {
        let slot = self.slot(service, endpoint);
        self.opened(slot);
        slot
    }

    /// The slot for flows of `service` to `endpoint` (taken now if the pair has none), or
    /// [`NO_SLOT`] when every slot is taken. Counts nothing.
    pub fn slot(&mut self, service: ServiceKey, endpoint: EndpointId) -> u16 {
        match self.slots.get(&(service, endpoint)) {
            Some(&s) => s,
            None => {
                let Some(s) = self.free.pop().or_else(|| {
                    let next = u16::try_from(self.counters.len()).ok()?;
                    (next != NO_SLOT).then(|| {
                        self.counters.push(EndpointCounters::default());
                        self.owners.push(None);
                        self.ending.push(false);
                        next
                    })
                }) else {
                    return NO_SLOT;
                };
                self.counters[usize::from(s)] = EndpointCounters::default();
                self.owners[usize::from(s)] = Some((service, endpoint));
                // A flow opens only toward a live endpoint; the next marking says otherwise.
                self.ending[usize::from(s)] = false;
                self.slots.insert((service, endpoint), s);
                s
            }
        }
    }

    /// A flow with this slot was opened.
    pub fn opened(&mut self, slot: u16) {
        if let Some(c) = self.counters.get_mut(usize::from(slot)) {
            c.flows_created += 1;
            c.flows_active += 1;
        }
    }

    /// Counts one packet of `ip_len` bytes in direction `dir` (0 toward the endpoint).
    #[inline]
    pub fn packet(&mut self, slot: u16, dir: usize, ip_len: usize) {
        if let Some(c) = self.counters.get_mut(usize::from(slot)) {
            c.packets[dir] += 1;
            c.bytes[dir] += ip_len as u64;
        }
    }

    /// Whether flows with this slot end at their next packet; false for [`NO_SLOT`].
    #[inline]
    pub fn ending(&self, slot: u16) -> bool {
        self.ending.get(usize::from(slot)).copied().unwrap_or(false)
    }

    /// Marks, for every pair in use, whether its flows end at their next packet.
    pub fn mark_ending(&mut self, mut ends: impl FnMut(ServiceKey, EndpointId) -> bool) {
        for (owner, ending) in self.owners.iter().zip(self.ending.iter_mut()) {
            *ending = owner.is_some_and(|(s, e)| ends(s, e));
        }
    }

    /// A flow of `service` to `endpoint` ended.
    pub fn close(&mut self, service: ServiceKey, endpoint: EndpointId) {
        if let Some(&s) = self.slots.get(&(service, endpoint)) {
            let c = &mut self.counters[usize::from(s)];
            c.flows_active = c.flows_active.saturating_sub(1);
        }
    }

    /// A service was deleted (its flows are gone): its slots are free again and its series
    /// leave the metrics.
    pub fn forget(&mut self, service: &ServiceKey) {
        let gone: Vec<(ServiceKey, EndpointId)> = self
            .slots
            .keys()
            .filter(|(s, _)| s == service)
            .copied()
            .collect();
        for key in gone {
            if let Some(s) = self.slots.remove(&key) {
                self.owners[usize::from(s)] = None;
                self.free.push(s);
            }
        }
    }

    /// Every pair in use with its counters (a copy, for publication).
    pub fn snapshot(&self) -> Vec<(ServiceKey, EndpointId, EndpointCounters)> {
        self.owners
            .iter()
            .zip(&self.counters)
            .filter_map(|(owner, c)| owner.map(|(s, e)| (s, e, *c)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Proto;
    use std::net::Ipv4Addr;

    fn svc(port: u16) -> ServiceKey {
        ServiceKey {
            vip: Ipv4Addr::new(198, 18, 100, 1).into(),
            port,
            proto: Proto::Tcp,
        }
    }

    fn ep(n: u8) -> EndpointId {
        EndpointId {
            addr: Ipv4Addr::new(198, 18, 31, n).into(),
            port: 8080,
        }
    }

    #[test]
    fn packets_and_flows_are_counted_per_service_and_endpoint() {
        let mut a = Accounting::default();
        let s1 = a.open(svc(80), ep(1));
        let s2 = a.open(svc(80), ep(2));
        assert_ne!(s1, s2);
        assert_eq!(a.open(svc(80), ep(1)), s1, "same pair, same slot");
        a.packet(s1, 0, 60);
        a.packet(s1, 1, 1500);
        a.close(svc(80), ep(1));
        let snap = a.snapshot();
        let (_, _, c1) = snap.iter().find(|(_, e, _)| *e == ep(1)).unwrap();
        assert_eq!(c1.packets, [1, 1]);
        assert_eq!(c1.bytes, [60, 1500]);
        assert_eq!((c1.flows_created, c1.flows_active), (2, 1));
    }

    #[test]
    fn only_the_pairs_marked_as_ending_say_so_and_a_reused_slot_starts_unmarked() {
        let mut a = Accounting::default();
        let (s1, s2) = (a.open(svc(80), ep(1)), a.open(svc(80), ep(2)));
        a.mark_ending(|_, e| e == ep(2));
        assert!(!a.ending(s1));
        assert!(a.ending(s2));
        assert!(!a.ending(NO_SLOT));
        a.forget(&svc(80));
        // Both slots are reused, the one that was ending among them.
        let again = [a.open(svc(443), ep(1)), a.open(svc(443), ep(2))];
        assert!(again.contains(&s2));
        assert!(
            again.iter().all(|&s| !a.ending(s)),
            "a reused slot is not ending until marked"
        );
    }

    #[test]
    fn a_forgotten_service_leaves_the_snapshot_and_its_slots_are_reused_from_zero() {
        let mut a = Accounting::default();
        let s = a.open(svc(80), ep(1));
        a.packet(s, 0, 100);
        a.forget(&svc(80));
        assert!(a.snapshot().is_empty());
        let again = a.open(svc(443), ep(1));
        assert_eq!(again, s, "slot reused");
        let snap = a.snapshot();
        assert_eq!(snap.len(), 1);
        assert_eq!(snap[0].2.packets, [0, 0]);
        assert_eq!(snap[0].2.flows_created, 1);
    }
}
