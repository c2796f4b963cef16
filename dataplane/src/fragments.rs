//! IPv4 and IPv6 fragments: only the first fragment of a datagram carries the ports that
//! decide its flow, so the later ones follow the first.
//!
//! - The first fragment is handled like any packet of its flow; what was done to it (the
//!   addresses it left with, the MACs and the interface) is remembered under the datagram's
//!   identity (source, destination, identification, protocol) for a short while.
//! - A later fragment gets the same addresses and MACs (the transport checksum is in the
//!   first fragment only, so nothing else changes) and leaves the same way.
//!
//! An IPv6 fragment is one with a Fragment header anywhere in its chain of extension headers
//! (see `ipv6::Packet::upper_layer`); an atomic fragment (offset 0, no more to come, RFC
//! 6946) is a whole packet and not a fragment here.
//!
//! With several workers, every fragment of a datagram reaches the same queue (RSS hashes
//! fragments on their addresses only), but the first fragment may belong to another worker's
//! flow. The receiving worker then remembers where it passed the first fragment and passes
//! the later ones the same way, through the same ring, so they arrive after it, in order.
//!
//! A later fragment seen before its first, or after the first was forgotten, is dropped and
//! counted (`fragment`). Reassembly is not done: fragments leave as they came.

use crate::wire::{ethernet, ipv4, ipv6, WireError};
use hashbrown::HashMap;
use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// How long the first fragment's decision is kept for its followers: a datagram's fragments
/// travel back to back, and the IP id wraps slowly.
pub const FOLLOW_MS: u64 = 2_000;
/// Datagrams remembered at once per worker; the oldest is forgotten beyond that.
pub const CAPACITY: usize = 4096;

/// A datagram's identity, shared by all its fragments. One variant per family keeps the
/// IPv4 key as small as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FragKey {
    V4 {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        id: u16,
        proto: u8,
    },
    /// `proto` is the Fragment header's next header: the same in every fragment.
    V6 {
        src: Ipv6Addr,
        dst: Ipv6Addr,
        id: u32,
        proto: u8,
    },
}

impl FragKey {
    /// The datagram's destination.
    pub fn dst(&self) -> IpAddr {
        match *self {
            FragKey::V4 { dst, .. } => dst.into(),
            FragKey::V6 { dst, .. } => dst.into(),
        }
    }
}

/// Which fragment a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    /// Offset zero with more to come: it carries the transport header.
    First,
    /// A non-zero offset: no transport header.
    Later,
}

/// The datagram and piece of an IPv4 or IPv6 fragment; `None` for anything else (whole
/// packets, atomic fragments, frames that do not parse).
pub fn fragment_of(frame: &[u8]) -> Option<(FragKey, Piece)> {
    let eth = ethernet::Frame::new_checked(frame).ok()?;
    let ip_buf = &frame[ethernet::HEADER_LEN..];
    match eth.ethertype() {
        ethernet::ETHERTYPE_IPV4 => fragment_of_v4(ip_buf),
        ethernet::ETHERTYPE_IPV6 => fragment_of_v6(ip_buf),
        _ => None,
    }
}

fn fragment_of_v4(ip_buf: &[u8]) -> Option<(FragKey, Piece)> {
    let ip = ipv4::Packet::new_checked(ip_buf).ok()?;
    if !ip.is_fragment() {
        return None;
    }
    let key = FragKey::V4 {
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

fn fragment_of_v6(ip_buf: &[u8]) -> Option<(FragKey, Piece)> {
    // Checked first so that the common packet (straight to its transport header) costs no
    // walk: a Fragment header can only be behind one of these.
    if !ip_buf.get(6).is_some_and(|&next| is_extension(next)) {
        return None;
    }
    let ip = ipv6::Packet::new_checked(ip_buf).ok()?;
    let (f, piece) = match ip.upper_layer() {
        Ok(ipv6::UpperLayer {
            fragment: Some(f), ..
        }) => (f, Piece::First),
        Err(ipv6::ExtensionError::LaterFragment(f)) => (f, Piece::Later),
        _ => return None,
    };
    let key = FragKey::V6 {
        src: ip.src(),
        dst: ip.dst(),
        id: f.id,
        proto: f.next_header,
    };
    Some((key, piece))
}

/// A next-header value that `ipv6::Packet::upper_layer` walks past.
fn is_extension(next: u8) -> bool {
    matches!(
        next,
        ipv6::PROTO_HOP_BY_HOP
            | ipv6::PROTO_ROUTING
            | ipv6::PROTO_DEST_OPTIONS
            | ipv6::PROTO_FRAGMENT
    )
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

/// What was done to a first fragment, to do again to the later ones. The addresses are of
/// the fragment's own family (a fragment is never translated between families).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Treatment {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub eth_src: [u8; 6],
    pub eth_dst: [u8; 6],
    /// `None`: the first fragment went to the kernel (unresolved next hop).
    pub ifindex: Option<u32>,
}

/// Gives the later fragment in `frame` the addresses and MACs of `t` (the IPv4 header
/// checksum follows; IPv6 has none, and there is no transport header to touch). Addresses of
/// the other family than the frame's are `Malformed`, and the frame is left as it came.
pub fn apply(frame: &mut [u8], t: &Treatment) -> Result<(), WireError> {
    let ip_buf = frame
        .get_mut(ethernet::HEADER_LEN..)
        .ok_or(WireError::Truncated)?;
    match (t.src, t.dst) {
        (IpAddr::V4(new_src), IpAddr::V4(new_dst)) => {
            let mut ip = ipv4::Packet::new_checked(ip_buf)?;
            let (src, dst) = (ip.src(), ip.dst());
            let mut check = ip.checksum();
            check = crate::checksum::update32(check, src.octets(), new_src.octets());
            check = crate::checksum::update32(check, dst.octets(), new_dst.octets());
            ip.set_src(new_src);
            ip.set_dst(new_dst);
            ip.set_checksum(check);
        }
        (IpAddr::V6(new_src), IpAddr::V6(new_dst)) if ip_buf.first().map(|b| b >> 4) == Some(6) => {
            let mut ip = ipv6::Packet::new_checked(ip_buf)?;
            ip.set_src(new_src);
            ip.set_dst(new_dst);
        }
        _ => return Err(WireError::Malformed),
    }
    let mut eth = ethernet::Frame::new_checked(frame)?;
    eth.set_src(t.eth_src);
    eth.set_dst(t.eth_dst);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: u16) -> FragKey {
        FragKey::V4 {
            src: Ipv4Addr::new(198, 18, 0, 2),
            dst: Ipv4Addr::new(198, 18, 100, 1),
            id,
            proto: 17,
        }
    }

    /// An Ethernet frame of an IPv6 packet to fd00:100::1 whose extension headers are a
    /// destination options header then a Fragment header (`offset`, `more`, id 7), carrying
    /// 8 bytes of UDP.
    fn v6_fragment(offset: u16, more: bool) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&ethernet::ETHERTYPE_IPV6.to_be_bytes());
        let mut ip = vec![0x60, 0, 0, 0, 0, 24, ipv6::PROTO_DEST_OPTIONS, 64];
        ip.extend_from_slice(&"fd00::2".parse::<Ipv6Addr>().unwrap().octets());
        ip.extend_from_slice(&"fd00:100::1".parse::<Ipv6Addr>().unwrap().octets());
        ip.extend_from_slice(&[ipv6::PROTO_FRAGMENT, 0, 1, 4, 0, 0, 0, 0]);
        let bits = offset << 3 | u16::from(more);
        ip.extend_from_slice(&[ipv6::PROTO_UDP, 0]);
        ip.extend_from_slice(&bits.to_be_bytes());
        ip.extend_from_slice(&7u32.to_be_bytes());
        ip.extend_from_slice(&[0xc3, 0x50, 0x07, 0xe4, 0, 40, 0, 0]);
        f.extend_from_slice(&ip);
        f
    }

    #[test]
    fn ipv6_fragments_behind_other_extension_headers_are_recognised_as_first_or_later() {
        let first = fragment_of(&v6_fragment(0, true));
        let later = fragment_of(&v6_fragment(3, false));
        let (Some((k1, Piece::First)), Some((k2, Piece::Later))) = (first, later) else {
            panic!("{first:?} {later:?}");
        };
        assert_eq!(k1, k2, "one datagram");
        let FragKey::V6 { id, proto, .. } = k1 else {
            panic!("{k1:?}");
        };
        assert_eq!((id, proto), (7, ipv6::PROTO_UDP));
        // An atomic fragment is a whole packet.
        assert_eq!(fragment_of(&v6_fragment(0, false)), None);
    }

    #[test]
    fn a_later_ipv6_fragment_gets_the_addresses_and_macs_of_its_treatment_and_nothing_else() {
        let mut f = v6_fragment(3, false);
        let before = f.clone();
        let t = Treatment {
            src: "fd00:100::1".parse::<Ipv6Addr>().unwrap().into(),
            dst: "fd00:31::1".parse::<Ipv6Addr>().unwrap().into(),
            eth_src: [2, 0, 0, 0, 1, 0xfe],
            eth_dst: [2, 0, 0, 0, 1, 1],
            ifindex: Some(3),
        };
        apply(&mut f, &t).unwrap();
        assert_eq!(f[0..6], t.eth_dst);
        assert_eq!(f[6..12], t.eth_src);
        let ip = ipv6::Packet::new_checked(&f[14..]).unwrap();
        assert_eq!(
            (IpAddr::from(ip.src()), IpAddr::from(ip.dst())),
            (t.src, t.dst)
        );
        assert_eq!(f[14..22], before[14..22]);
        assert_eq!(f[54..], before[54..]);
        // A treatment of the other family leaves the frame as it came.
        let mut g = before.clone();
        let t4 = Treatment {
            src: Ipv4Addr::new(198, 18, 0, 2).into(),
            ..t
        };
        assert_eq!(apply(&mut g, &t4), Err(WireError::Malformed));
        assert_eq!(g, before);
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
