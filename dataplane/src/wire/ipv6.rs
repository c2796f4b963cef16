//! IPv6 fixed headers (RFC 8200).
//!
//! Extension headers (hop-by-hop, routing, destination options, fragment) are walked in
//! place by [`Packet::upper_layer`]; nothing is copied and they stay where they are when
//! addresses or ports are rewritten.

use super::{get_u16, set_u16, WireError};
use core::ops::Range;
use std::net::Ipv6Addr;

pub const HEADER_LEN: usize = 40;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_SCTP: u8 = 132;
pub const PROTO_ICMPV6: u8 = 58;
/// The Fragment extension header's next-header value.
pub const PROTO_FRAGMENT: u8 = 44;
pub const PROTO_HOP_BY_HOP: u8 = 0;
pub const PROTO_ROUTING: u8 = 43;
pub const PROTO_DEST_OPTIONS: u8 = 60;
/// More extension headers than this ahead of the transport header is not a packet worth
/// walking: it bounds the work a crafted packet can make us do.
pub const MAX_EXTENSION_HEADERS: usize = 8;
/// A Fragment header's fixed length.
const FRAGMENT_HEADER_LEN: usize = 8;

const VER_TC_FLOW: usize = 0;
const PAYLOAD_LEN: usize = 4;
const NEXT_HEADER: usize = 6;
const HOP_LIMIT: usize = 7;
const SRC: Range<usize> = 8..24;
const DST: Range<usize> = 24..40;

/// Where the upper-layer header of a packet starts and what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpperLayer {
    /// Offset from the start of the IPv6 header.
    pub offset: usize,
    /// Its next-header value (TCP, UDP, ...).
    pub proto: u8,
    /// True when extension headers precede it.
    pub extended: bool,
    /// The Fragment header of a first fragment (offset 0, more to come): the upper-layer
    /// header describes the whole datagram, longer than this packet. `None` for a whole
    /// packet, an atomic fragment (RFC 6946) included.
    pub fragment: Option<Fragment>,
}

/// A Fragment header (RFC 8200 section 4.5), as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment {
    /// The header's next-header value: the first header of the fragmentable part, the same
    /// in every fragment of a datagram.
    pub next_header: u8,
    /// Where this fragment's data starts in the datagram, in 8-byte units.
    pub offset: u16,
    /// The M flag: more fragments follow.
    pub more: bool,
    /// The identification shared by every fragment of a datagram.
    pub id: u32,
}

impl Fragment {
    /// Offset zero with more to come: the fragment holding the transport header.
    pub fn is_first(&self) -> bool {
        self.offset == 0 && self.more
    }

    /// Offset zero and nothing to come (RFC 6946): a whole packet with a Fragment header.
    pub fn is_atomic(&self) -> bool {
        self.offset == 0 && !self.more
    }
}

/// Why a packet's upper-layer header cannot be used as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtensionError {
    /// An extension header runs past the payload.
    Truncated,
    /// A Fragment header with a non-zero offset: a later fragment, without an upper-layer
    /// header.
    LaterFragment(Fragment),
    /// A Routing header with segments left: the destination address is not the final one,
    /// which the transport checksum is computed with.
    SegmentsLeft,
    /// More than [`MAX_EXTENSION_HEADERS`].
    TooMany,
}

/// A view over an IPv6 packet. `new_checked` guarantees: version 6, the 40-byte header and the
/// payload length within the buffer (Ethernet padding may follow it).
pub struct Packet<T> {
    buf: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        let b = buf.as_ref();
        if b.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if b[VER_TC_FLOW] >> 4 != 6 {
            return Err(WireError::Malformed);
        }
        if HEADER_LEN + usize::from(get_u16(b, PAYLOAD_LEN)) > b.len() {
            return Err(WireError::Truncated);
        }
        Ok(Packet { buf })
    }

    /// A view over a packet quoted in an ICMPv6 error: truncated by design, so only the
    /// version and the fixed header are checked, not the payload length.
    pub fn new_quoted(buf: T) -> Result<Self, WireError> {
        let b = buf.as_ref();
        if b.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if b[VER_TC_FLOW] >> 4 != 6 {
            return Err(WireError::Malformed);
        }
        Ok(Packet { buf })
    }

    pub fn traffic_class(&self) -> u8 {
        let b = self.buf.as_ref();
        (b[0] << 4) | (b[1] >> 4)
    }

    pub fn flow_label(&self) -> u32 {
        let b = self.buf.as_ref();
        u32::from_be_bytes([0, b[1] & 0x0f, b[2], b[3]])
    }

    /// Bytes after the fixed header, extension headers included.
    pub fn payload_len(&self) -> usize {
        usize::from(get_u16(self.buf.as_ref(), PAYLOAD_LEN))
    }

    /// The fixed header plus the payload: the packet without Ethernet padding.
    pub fn total_len(&self) -> usize {
        HEADER_LEN + self.payload_len()
    }

    pub fn next_header(&self) -> u8 {
        self.buf.as_ref()[NEXT_HEADER]
    }

    /// True when a Fragment header follows the fixed header (the packet is a fragment, or an
    /// atomic fragment; either way its transport header may not be where we would look).
    pub fn is_fragment_header(&self) -> bool {
        self.next_header() == PROTO_FRAGMENT
    }

    pub fn hop_limit(&self) -> u8 {
        self.buf.as_ref()[HOP_LIMIT]
    }

    /// Walks the hop-by-hop, routing, destination options and Fragment headers to the
    /// upper-layer header. A first fragment's upper layer is found behind its Fragment header
    /// (and reported in [`UpperLayer::fragment`]); a later fragment has none. Only one
    /// Fragment header is walked: a second one is taken as the upper layer, which no caller
    /// knows. Any other next header is taken as the upper layer (the caller decides whether
    /// it knows it). Never panics on a view made by `new_checked`: every length is checked
    /// against the payload.
    pub fn upper_layer(&self) -> Result<UpperLayer, ExtensionError> {
        let b = &self.buf.as_ref()[..self.total_len().min(self.buf.as_ref().len())];
        let mut proto = self.next_header();
        let mut offset = HEADER_LEN;
        let mut fragment = None;
        let mut fragment_seen = false;
        for _ in 0..=MAX_EXTENSION_HEADERS {
            match proto {
                PROTO_HOP_BY_HOP | PROTO_ROUTING | PROTO_DEST_OPTIONS => {
                    // Next header, then the length in 8-byte units not counting the first.
                    let ext = b.get(offset..offset + 2).ok_or(ExtensionError::Truncated)?;
                    let len = (usize::from(ext[1]) + 1) * 8;
                    if offset + len > b.len() {
                        return Err(ExtensionError::Truncated);
                    }
                    // Segments left is the routing header's fourth byte.
                    if proto == PROTO_ROUTING && b[offset + 3] != 0 {
                        return Err(ExtensionError::SegmentsLeft);
                    }
                    proto = ext[0];
                    offset += len;
                }
                PROTO_FRAGMENT if !fragment_seen => {
                    let h = b
                        .get(offset..offset + FRAGMENT_HEADER_LEN)
                        .ok_or(ExtensionError::Truncated)?;
                    let bits = u16::from_be_bytes([h[2], h[3]]);
                    let f = Fragment {
                        next_header: h[0],
                        offset: bits >> 3,
                        more: bits & 1 != 0,
                        id: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
                    };
                    if f.offset != 0 {
                        return Err(ExtensionError::LaterFragment(f));
                    }
                    fragment_seen = true;
                    fragment = f.is_first().then_some(f);
                    proto = f.next_header;
                    offset += FRAGMENT_HEADER_LEN;
                }
                _ => {
                    return Ok(UpperLayer {
                        offset,
                        proto,
                        extended: offset != HEADER_LEN,
                        fragment,
                    })
                }
            }
        }
        Err(ExtensionError::TooMany)
    }

    pub fn src(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.src_octets())
    }

    pub fn dst(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.dst_octets())
    }

    pub(crate) fn src_octets(&self) -> [u8; 16] {
        self.buf.as_ref()[SRC].try_into().expect("16-byte range")
    }

    pub(crate) fn dst_octets(&self) -> [u8; 16] {
        self.buf.as_ref()[DST].try_into().expect("16-byte range")
    }

    /// The fixed header's bytes.
    pub fn header(&self) -> &[u8] {
        &self.buf.as_ref()[..HEADER_LEN]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_src(&mut self, a: Ipv6Addr) {
        self.buf.as_mut()[SRC].copy_from_slice(&a.octets());
    }

    pub fn set_dst(&mut self, a: Ipv6Addr) {
        self.buf.as_mut()[DST].copy_from_slice(&a.octets());
    }

    pub fn set_hop_limit(&mut self, h: u8) {
        self.buf.as_mut()[HOP_LIMIT] = h;
    }

    pub fn set_next_header(&mut self, p: u8) {
        self.buf.as_mut()[NEXT_HEADER] = p;
    }

    /// Sets the payload length; the caller keeps it within the buffer (a later view is
    /// checked again, this one is not).
    pub fn set_payload_len(&mut self, len: u16) {
        set_u16(self.buf.as_mut(), PAYLOAD_LEN, len);
    }

    /// Headers (the fixed one and any extension headers) and the upper-layer header with
    /// its payload (without Ethernet padding), split so both can be edited. A packet whose
    /// extension headers cannot be walked is split after the fixed header, as its callers
    /// refuse it before they get here.
    pub fn split_l4_mut(&mut self) -> (&mut [u8], &mut [u8]) {
        let total = self.total_len();
        let at = self.upper_layer().map_or(HEADER_LEN, |u| u.offset);
        self.buf.as_mut()[..total].split_at_mut(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(payload_len: u16) -> Vec<u8> {
        let mut h = vec![0u8; HEADER_LEN];
        // Version 6, traffic class 0xb8, flow label 0x12345.
        h[0..4].copy_from_slice(&[0x6b, 0x81, 0x23, 0x45]);
        h[4..6].copy_from_slice(&payload_len.to_be_bytes());
        h[6] = PROTO_TCP;
        h[7] = 61;
        h[8] = 0x20;
        h[24] = 0xfe;
        h.resize(HEADER_LEN + usize::from(payload_len), 0xaa);
        h
    }

    #[test]
    fn the_fields_of_a_header_are_read_where_rfc_8200_puts_them() {
        let b = header(4);
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.traffic_class(), 0xb8);
        assert_eq!(p.flow_label(), 0x12345);
        assert_eq!(p.payload_len(), 4);
        assert_eq!(p.total_len(), 44);
        assert_eq!(p.next_header(), PROTO_TCP);
        assert_eq!(p.hop_limit(), 61);
        assert_eq!(p.src(), "2000::".parse::<Ipv6Addr>().unwrap());
        assert_eq!(p.dst(), "fe00::".parse::<Ipv6Addr>().unwrap());
        assert!(!p.is_fragment_header());
    }

    #[test]
    fn a_payload_longer_than_the_buffer_is_truncated_and_padding_is_allowed() {
        let b = header(4);
        assert_eq!(
            Packet::new_checked(&b[..43]).err(),
            Some(WireError::Truncated)
        );
        let mut padded = b.clone();
        padded.extend_from_slice(&[0; 6]);
        let mut padded_view = Packet::new_checked(&mut padded[..]).unwrap();
        let (h, l4) = padded_view.split_l4_mut();
        assert_eq!((h.len(), l4.len()), (40, 4));
    }

    #[test]
    fn a_version_other_than_6_is_malformed_and_a_short_buffer_truncated() {
        let mut b = header(0);
        b[0] = 0x45;
        assert_eq!(
            Packet::new_checked(&b[..]).err(),
            Some(WireError::Malformed)
        );
        assert_eq!(
            Packet::new_checked(&b[..39]).err(),
            Some(WireError::Truncated)
        );
    }

    /// A packet whose extension headers are `exts` (next header, length in 8-byte units
    /// after the first, byte 3), in order, followed by 8 bytes of UDP. A Fragment header's
    /// length byte is its reserved byte: give it 0.
    fn extended(exts: &[(u8, u8, u8)]) -> Vec<u8> {
        let mut b = header(0);
        b[6] = exts.first().map_or(PROTO_UDP, |e| e.0);
        for (i, &(_, units, third)) in exts.iter().enumerate() {
            let next = exts.get(i + 1).map_or(PROTO_UDP, |e| e.0);
            let mut h = vec![0u8; (usize::from(units) + 1) * 8];
            h[0] = next;
            h[1] = units;
            h[3] = third;
            b.extend_from_slice(&h);
        }
        b.extend_from_slice(&[0; 8]);
        let payload = (b.len() - HEADER_LEN) as u16;
        b[4..6].copy_from_slice(&payload.to_be_bytes());
        b
    }

    #[test]
    fn the_upper_layer_is_found_after_hop_by_hop_routing_and_destination_options() {
        let b = extended(&[
            (PROTO_HOP_BY_HOP, 0, 0),
            (PROTO_ROUTING, 2, 0),
            (PROTO_DEST_OPTIONS, 1, 0),
        ]);
        let u = Packet::new_checked(&b[..]).unwrap().upper_layer().unwrap();
        assert_eq!(u.offset, HEADER_LEN + 8 + 24 + 16);
        assert_eq!(u.proto, PROTO_UDP);
        assert!(u.extended);
        let plain = extended(&[]);
        let u = Packet::new_checked(&plain[..])
            .unwrap()
            .upper_layer()
            .unwrap();
        assert_eq!((u.offset, u.extended), (HEADER_LEN, false));
    }

    #[test]
    fn routing_with_segments_left_and_overlong_headers_are_refused() {
        let check = |b: &[u8]| Packet::new_checked(b).unwrap().upper_layer();
        let seg = extended(&[(PROTO_ROUTING, 0, 1)]);
        assert_eq!(check(&seg), Err(ExtensionError::SegmentsLeft));
        let mut long = extended(&[(PROTO_HOP_BY_HOP, 0, 0)]);
        // A length reaching past the payload.
        long[HEADER_LEN + 1] = 9;
        assert_eq!(check(&long), Err(ExtensionError::Truncated));
        let many = extended(&[(PROTO_DEST_OPTIONS, 0, 0); MAX_EXTENSION_HEADERS + 1]);
        assert_eq!(check(&many), Err(ExtensionError::TooMany));
        let enough = extended(&[(PROTO_DEST_OPTIONS, 0, 0); MAX_EXTENSION_HEADERS]);
        assert!(check(&enough).is_ok());
    }

    /// `exts` with a Fragment header after them (offset in 8-byte units, M flag, id 0x01020304)
    /// and 8 bytes of UDP.
    fn fragment(exts: &[(u8, u8, u8)], offset: u16, more: bool) -> Vec<u8> {
        let mut all = exts.to_vec();
        all.push((PROTO_FRAGMENT, 0, 0));
        let mut b = extended(&all);
        let at = b.len() - 8 - FRAGMENT_HEADER_LEN;
        let bits = offset << 3 | u16::from(more);
        b[at + 2..at + 4].copy_from_slice(&bits.to_be_bytes());
        b[at + 4..at + 8].copy_from_slice(&0x0102_0304u32.to_be_bytes());
        b
    }

    #[test]
    fn a_first_fragments_upper_layer_is_found_behind_its_fragment_header() {
        let b = fragment(&[(PROTO_DEST_OPTIONS, 0, 0)], 0, true);
        let u = Packet::new_checked(&b[..]).unwrap().upper_layer().unwrap();
        assert_eq!((u.offset, u.proto), (HEADER_LEN + 8 + 8, PROTO_UDP));
        let f = u.fragment.expect("a first fragment");
        assert_eq!((f.offset, f.more, f.id), (0, true, 0x0102_0304));
        assert_eq!(f.next_header, PROTO_UDP);
        assert!(f.is_first() && !f.is_atomic());
    }

    #[test]
    fn a_later_fragment_has_no_upper_layer_and_says_which_datagram_it_belongs_to() {
        let b = fragment(&[(PROTO_HOP_BY_HOP, 0, 0)], 185, false);
        let u = Packet::new_checked(&b[..]).unwrap().upper_layer();
        let Err(ExtensionError::LaterFragment(f)) = u else {
            panic!("{u:?}");
        };
        assert_eq!(
            (f.offset, f.more, f.id, f.next_header),
            (185, false, 0x0102_0304, PROTO_UDP)
        );
    }

    #[test]
    fn an_atomic_fragment_is_a_whole_packet() {
        let b = fragment(&[], 0, false);
        let u = Packet::new_checked(&b[..]).unwrap().upper_layer().unwrap();
        assert_eq!(
            (u.offset, u.proto, u.extended),
            (HEADER_LEN + 8, PROTO_UDP, true)
        );
        assert_eq!(u.fragment, None);
    }

    #[test]
    fn a_cut_fragment_header_or_a_second_one_is_not_walked() {
        let b = fragment(&[], 0, true);
        let cut = Packet::new_checked(&b[..HEADER_LEN + 4]);
        // The payload length says more: the view itself refuses it.
        assert!(cut.is_err());
        let mut short = b[..HEADER_LEN + 4].to_vec();
        short[4..6].copy_from_slice(&4u16.to_be_bytes());
        let u = Packet::new_checked(&short[..]).unwrap().upper_layer();
        assert_eq!(u, Err(ExtensionError::Truncated));
        let mut nested = fragment(&[], 0, true);
        nested[HEADER_LEN] = PROTO_FRAGMENT;
        let u = Packet::new_checked(&nested[..])
            .unwrap()
            .upper_layer()
            .unwrap();
        assert_eq!((u.offset, u.proto), (HEADER_LEN + 8, PROTO_FRAGMENT));
    }

    #[test]
    fn setters_write_in_place() {
        let mut b = header(0);
        let mut p = Packet::new_checked(&mut b[..]).unwrap();
        let a: Ipv6Addr = "2001:db8::1".parse().unwrap();
        p.set_src(a);
        p.set_dst(a);
        p.set_hop_limit(1);
        p.set_next_header(PROTO_FRAGMENT);
        assert_eq!((p.src(), p.dst(), p.hop_limit()), (a, a, 1));
        assert!(p.is_fragment_header());
    }
}
