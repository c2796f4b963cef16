//! SCTP common headers (RFC 9260) and their CRC32c checksum.
//!
//! Unlike TCP and UDP, SCTP's checksum covers no pseudo-header and cannot be updated
//! incrementally: any rewrite of a port means computing the CRC over the whole packet again.
//! Addresses are not covered at all, so rewriting only them leaves it valid.

use super::{get_u16, set_u16, WireError};

pub const HEADER_LEN: usize = 12;
/// Common header plus the first chunk's header (type, flags, length).
pub const MIN_LEN: usize = HEADER_LEN + 4;

const SRC_PORT: usize = 0;
const DST_PORT: usize = 2;
const CHECKSUM: usize = 8;
const FIRST_CHUNK_TYPE: usize = 12;

// Chunk types the connection tracking cares about.
pub const CHUNK_INIT: u8 = 1;
pub const CHUNK_INIT_ACK: u8 = 2;
pub const CHUNK_ABORT: u8 = 6;
pub const CHUNK_SHUTDOWN: u8 = 7;
pub const CHUNK_SHUTDOWN_ACK: u8 = 8;
pub const CHUNK_COOKIE_ECHO: u8 = 10;
pub const CHUNK_SHUTDOWN_COMPLETE: u8 = 14;

/// A view over an SCTP packet: `new_checked` guarantees the common header and one chunk
/// header are present.
pub struct Packet<T> {
    buf: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        if buf.as_ref().len() < MIN_LEN {
            return Err(WireError::Truncated);
        }
        Ok(Packet { buf })
    }

    pub fn src_port(&self) -> u16 {
        get_u16(self.buf.as_ref(), SRC_PORT)
    }

    pub fn dst_port(&self) -> u16 {
        get_u16(self.buf.as_ref(), DST_PORT)
    }

    /// The type of the packet's first chunk (INIT, ABORT, ... must come first or alone).
    pub fn first_chunk(&self) -> u8 {
        self.buf.as_ref()[FIRST_CHUNK_TYPE]
    }

    /// A zero CRC field: what a sender that offloads the CRC leaves before the NIC fills it.
    pub fn checksum_is_zero(&self) -> bool {
        self.buf.as_ref()[CHECKSUM..CHECKSUM + 4] == [0; 4]
    }

    /// Whether the CRC32c field matches the packet.
    pub fn checksum_ok(&self) -> bool {
        let b = self.buf.as_ref();
        let stored = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        stored == crc_of(b)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_src_port(&mut self, p: u16) {
        set_u16(self.buf.as_mut(), SRC_PORT, p);
    }

    pub fn set_dst_port(&mut self, p: u16) {
        set_u16(self.buf.as_mut(), DST_PORT, p);
    }

    /// Computes the CRC32c of the whole packet into its checksum field.
    pub fn fill_checksum(&mut self) {
        let crc = crc_of(self.buf.as_ref());
        self.buf.as_mut()[CHECKSUM..CHECKSUM + 4].copy_from_slice(&crc.to_le_bytes());
    }
}

/// The packet's CRC32c with its checksum field taken as zero. The result goes on the wire in
/// little-endian byte order (RFC 9260 appendix A's reflected CRC).
fn crc_of(packet: &[u8]) -> u32 {
    let crc = crc32c_update(!0, &packet[..CHECKSUM]);
    let crc = crc32c_update(crc, &[0; 4]);
    !crc32c_update(crc, &packet[CHECKSUM + 4..])
}

/// The reflected CRC32c (Castagnoli, polynomial 0x1EDC6F41) table, built at compile time.
const TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82f6_3b78
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// Byte-at-a-time: SCTP is rare next to TCP and UDP, and a table lookup per byte keeps the
/// code small; a hardware (SSE4.2) version would pay off only for bulk SCTP.
fn crc32c_update(mut crc: u32, data: &[u8]) -> u32 {
    for &b in data {
        crc = TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // The CRC-32C check value: CRC of the ASCII digits "123456789".
        assert_eq!(!crc32c_update(!0, b"123456789"), 0xe306_9283);
    }

    #[test]
    fn a_short_packet_is_truncated() {
        assert!(Packet::new_checked(&[0u8; MIN_LEN - 1][..]).is_err());
    }
}
