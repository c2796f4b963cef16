//! IPv4 headers.

use super::{get_u16, set_u16, WireError};
use std::net::Ipv4Addr;

pub const MIN_HEADER_LEN: usize = 20;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_SCTP: u8 = 132;

const VER_IHL: usize = 0;
const TOTAL_LEN: usize = 2;
const IDENT: usize = 4;
const FRAG: usize = 6;
const TTL: usize = 8;
const PROTO: usize = 9;
const CHECKSUM: usize = 10;
const SRC: usize = 12;
const DST: usize = 16;

/// A view over an IPv4 packet. `new_checked` guarantees: version 4, header length within
/// [20, total length], total length within the buffer (Ethernet padding may follow it).
pub struct Packet<T> {
    buf: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        let b = buf.as_ref();
        if b.len() < MIN_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let ihl = usize::from(b[VER_IHL] & 0x0f) * 4;
        let total = usize::from(get_u16(b, TOTAL_LEN));
        if b[VER_IHL] >> 4 != 4 || ihl < MIN_HEADER_LEN || total < ihl {
            return Err(WireError::Malformed);
        }
        if total > b.len() {
            return Err(WireError::Truncated);
        }
        Ok(Packet { buf })
    }

    /// A view over a packet quoted in an ICMP error: truncated by design, so only the version
    /// and a header length within the buffer are checked, not the total length.
    pub fn new_quoted(buf: T) -> Result<Self, WireError> {
        let b = buf.as_ref();
        if b.len() < MIN_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let ihl = usize::from(b[VER_IHL] & 0x0f) * 4;
        if b[VER_IHL] >> 4 != 4 || ihl < MIN_HEADER_LEN {
            return Err(WireError::Malformed);
        }
        if ihl > b.len() {
            return Err(WireError::Truncated);
        }
        Ok(Packet { buf })
    }

    pub fn header_len(&self) -> usize {
        usize::from(self.buf.as_ref()[VER_IHL] & 0x0f) * 4
    }

    pub fn total_len(&self) -> usize {
        usize::from(get_u16(self.buf.as_ref(), TOTAL_LEN))
    }

    /// True for any fragment: more-fragments set or a non-zero offset.
    pub fn is_fragment(&self) -> bool {
        get_u16(self.buf.as_ref(), FRAG) & 0x3fff != 0
    }

    /// More fragments follow this one.
    pub fn more_fragments(&self) -> bool {
        get_u16(self.buf.as_ref(), FRAG) & 0x2000 != 0
    }

    /// Where this fragment's data starts in the datagram, in 8-byte units.
    pub fn fragment_offset(&self) -> u16 {
        get_u16(self.buf.as_ref(), FRAG) & 0x1fff
    }

    /// The identification shared by every fragment of a datagram.
    pub fn ident(&self) -> u16 {
        get_u16(self.buf.as_ref(), IDENT)
    }

    /// The DF bit: the sender wants an ICMP error rather than fragmentation.
    pub fn dont_fragment(&self) -> bool {
        get_u16(self.buf.as_ref(), FRAG) & 0x4000 != 0
    }

    pub fn ttl(&self) -> u8 {
        self.buf.as_ref()[TTL]
    }

    pub fn protocol(&self) -> u8 {
        self.buf.as_ref()[PROTO]
    }

    pub fn checksum(&self) -> u16 {
        get_u16(self.buf.as_ref(), CHECKSUM)
    }

    pub fn src(&self) -> Ipv4Addr {
        let b = self.buf.as_ref();
        Ipv4Addr::new(b[SRC], b[SRC + 1], b[SRC + 2], b[SRC + 3])
    }

    pub fn dst(&self) -> Ipv4Addr {
        let b = self.buf.as_ref();
        Ipv4Addr::new(b[DST], b[DST + 1], b[DST + 2], b[DST + 3])
    }

    /// The header bytes, options included.
    pub fn header(&self) -> &[u8] {
        &self.buf.as_ref()[..self.header_len()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_src(&mut self, a: Ipv4Addr) {
        self.buf.as_mut()[SRC..SRC + 4].copy_from_slice(&a.octets());
    }

    pub fn set_dst(&mut self, a: Ipv4Addr) {
        self.buf.as_mut()[DST..DST + 4].copy_from_slice(&a.octets());
    }

    pub fn set_ttl(&mut self, ttl: u8) {
        self.buf.as_mut()[TTL] = ttl;
    }

    pub fn set_checksum(&mut self, c: u16) {
        set_u16(self.buf.as_mut(), CHECKSUM, c);
    }

    /// Header and L4 segment (without Ethernet padding), split so both can be edited.
    pub fn split_l4_mut(&mut self) -> (&mut [u8], &mut [u8]) {
        let (ihl, total) = (self.header_len(), self.total_len());
        self.buf.as_mut()[..total].split_at_mut(ihl)
    }
}
