//! IPv4 fragments: only the first fragment of a datagram carries the ports that decide its
//! flow, so the later ones follow the first.
//!
//! - The first fragment is handled like any packet of its flow; what was done to it (the
//!   addresses it left with, the MACs and the interface) is remembered under the datagram's
//!   identity (source, destination, IP id, protocol) for a short while.
//! - A later fragment gets the same addresses and MACs (the transport checksum is in the
//!   first fragment only, so nothing else changes) and leaves the same way.
//!
//! With several workers, every fragment of a datagram reaches the same queue (RSS hashes
//! fragments on their addresses only), but the first fragment may belong to another worker's
//! flow. The receiving worker then remembers where it passed the first fragment and passes
//! the later ones the same way, through the same ring, so they arrive after it, in order.
//!
//! A later fragment seen before its first, or after the first was forgotten, is dropped and
//! counted (`fragment`). Reassembly is not done: fragments leave as they came.

use crate::wire::{ethernet, ipv4};
use hashbrown::HashMap;
use std::collections::VecDeque;
use std::net::Ipv4Addr;

/// How long the first fragment's decision is kept for its followers: a datagram's fragments
/// travel back to back, and the IP id wraps slowly.
pub const FOLLOW_MS: u64 = 2_000;
/// Datagrams remembered at once per worker; the oldest is forgotten beyond that.
pub const CAPACITY: usize = 4096;

/// A datagram's identity, shared by all its fragments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub id: u16,
    pub proto: u8,
}

/// Which fragment a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    /// Offset zero with more to come: it carries the transport header.
    First,
    /// A non-zero offset: no transport header.
    Later,
}

/// The datagram and piece of an IPv4 fragment; `None` for anything else (IPv6, whole packets,
/// frames that do not parse).
pub fn fragment_of(frame: &[u8]) -> Option<(FragKey, Piece)> {
    let eth = ethernet::Frame::new_checked(frame).ok()?;
    if eth.ethertype() != ethernet::ETHERTYPE_IPV4 {
        return None;
    }
    let ip = ipv4::Packet::new_checked(&frame[ethernet::HEADER_LEN..]).ok()?;
    if !ip.is_fragment() {
        return None;
    }
    let key = FragKey {
        src: ip.src(),
        dst: ip.dst(),
        id: ip.ident(),
        proto: ip.protocol(),
    };
    let piece = if ip.fragment_offset() == 0 {
        Piece::First
    } else {
        Piece::Later
    };
    Some((key, piece))
}

/// A bounded map of recent datagrams: entries expire after [`FOLLOW_MS`] and the oldest is
/// forgotten when [`CAPACITY`] is reached, so a flood of fragments cannot grow it.
#[derive(Debug)]
pub struct Recent<V> {
    map: HashMap<FragKey, (V, u64)>,
    /// Keys in insertion order with their expiry; as every entry lives equally long, the
    /// front is always the next to expire.
    order: VecDeque<(FragKey, u64)>,
}

impl<V: Copy> Default for Recent<V> {
    fn default() -> Self {
        Recent {
            map: HashMap::with_capacity(CAPACITY),
            order: VecDeque::with_capacity(CAPACITY),
        }
    }
}

impl<V: Copy> Recent<V> {
    pub fn insert(&mut self, key: FragKey, value: V, now_ms: u64) {
        while let Some(&(front, expires)) = self.order.front() {
            if expires > now_ms && self.order.len() < CAPACITY {
                break;
            }
            self.order.pop_front();
            // A key inserted again since has a later expiry: only its own entry removes it.
            if self.map.get(&front).is_some_and(|&(_, e)| e == expires) {
                self.map.remove(&front);
            }
        }
        let expires = now_ms + FOLLOW_MS;
        self.map.insert(key, (value, expires));
        self.order.push_back((key, expires));
    }

    pub fn get(&self, key: &FragKey, now_ms: u64) -> Option<V> {
        self.map
            .get(key)
            .filter(|&&(_, expires)| expires > now_ms)
            .map(|&(v, _)| v)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// What was done to a first fragment, to do again to the later ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Treatment {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub eth_src: [u8; 6],
    pub eth_dst: [u8; 6],
    /// `None`: the first fragment went to the kernel (unresolved next hop).
    pub ifindex: Option<u32>,
}

/// Gives the later fragment in `frame` the addresses and MACs of `t` (the IP header checksum
/// follows; there is no transport header to touch).
pub fn apply(frame: &mut [u8], t: &Treatment) -> Result<(), crate::wire::WireError> {
    let mut ip = ipv4::Packet::new_checked(&mut frame[ethernet::HEADER_LEN..])?;
    let (src, dst) = (ip.src(), ip.dst());
    let mut check = ip.checksum();
    check = crate::checksum::update32(check, src.octets(), t.src.octets());
    check = crate::checksum::update32(check, dst.octets(), t.dst.octets());
    ip.set_src(t.src);
    ip.set_dst(t.dst);
    ip.set_checksum(check);
    let mut eth = ethernet::Frame::new_checked(frame)?;
    eth.set_src(t.eth_src);
    eth.set_dst(t.eth_dst);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: u16) -> FragKey {
        FragKey {
            src: Ipv4Addr::new(198, 18, 0, 2),
            dst: Ipv4Addr::new(198, 18, 100, 1),
            id,
            proto: 17,
        }
    }

    #[test]
    fn a_remembered_datagram_is_found_until_it_expires() {
        let mut r = Recent::default();
        r.insert(key(1), 7u8, 100);
        assert_eq!(r.get(&key(1), 100 + FOLLOW_MS - 1), Some(7));
        assert_eq!(r.get(&key(1), 100 + FOLLOW_MS), None);
        assert_eq!(r.get(&key(2), 100), None);
    }

    #[test]
    fn the_map_never_holds_more_than_its_capacity() {
        let mut r = Recent::default();
        for i in 0..(CAPACITY as u32 * 3) {
            r.insert(key(i as u16), i, 0);
            assert!(r.len() <= CAPACITY);
        }
        // The newest survive, the oldest went.
        let last = CAPACITY as u32 * 3 - 1;
        assert_eq!(r.get(&key(last as u16), 0), Some(last));
    }

    #[test]
    fn a_datagram_id_seen_again_keeps_its_newer_decision() {
        let mut r = Recent::default();
        r.insert(key(1), 1u8, 0);
        r.insert(key(1), 2u8, FOLLOW_MS + 1);
        // The first entry expired and was cleaned up without taking the second with it.
        r.insert(key(2), 3u8, FOLLOW_MS + 2);
        assert_eq!(r.get(&key(1), FOLLOW_MS + 2), Some(2));
    }
}
