//! IPv6 fixed headers (RFC 8200).
//!
//! Extension headers are not walked: the engine handles a packet whose next header is TCP,
//! UDP, SCTP or ICMPv6 and treats any other as unsupported. A Fragment header has its own
//! check, [`Packet::is_fragment_header`], so it can be counted apart.

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

const VER_TC_FLOW: usize = 0;
const PAYLOAD_LEN: usize = 4;
const NEXT_HEADER: usize = 6;
const HOP_LIMIT: usize = 7;
const SRC: Range<usize> = 8..24;
const DST: Range<usize> = 24..40;

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

    /// Fixed header and payload (without Ethernet padding), split so both can be edited.
    pub fn split_l4_mut(&mut self) -> (&mut [u8], &mut [u8]) {
        let total = self.total_len();
        self.buf.as_mut()[..total].split_at_mut(HEADER_LEN)
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
