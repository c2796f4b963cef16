//! UDP headers.

use super::{get_u16, set_u16, WireError};

pub const HEADER_LEN: usize = 8;
pub const CHECKSUM: usize = 6;

const SRC_PORT: usize = 0;
const DST_PORT: usize = 2;
const LEN: usize = 4;

/// A view over a UDP datagram; `new_checked` guarantees the length field fits the buffer.
pub struct Datagram<T> {
    buf: T,
}

impl<T: AsRef<[u8]>> Datagram<T> {
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        let b = buf.as_ref();
        if b.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let len = usize::from(get_u16(b, LEN));
        if len < HEADER_LEN || len > b.len() {
            return Err(WireError::Malformed);
        }
        Ok(Datagram { buf })
    }

    /// A view over the head of a fragmented datagram: the length field covers the whole
    /// datagram, longer than this first fragment, so only the header's own bytes are checked.
    pub fn new_head(buf: T) -> Result<Self, WireError> {
        if buf.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(Datagram { buf })
    }

    pub fn src_port(&self) -> u16 {
        get_u16(self.buf.as_ref(), SRC_PORT)
    }

    pub fn dst_port(&self) -> u16 {
        get_u16(self.buf.as_ref(), DST_PORT)
    }

    pub fn checksum(&self) -> u16 {
        get_u16(self.buf.as_ref(), CHECKSUM)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Datagram<T> {
    pub fn set_src_port(&mut self, p: u16) {
        set_u16(self.buf.as_mut(), SRC_PORT, p);
    }

    pub fn set_dst_port(&mut self, p: u16) {
        set_u16(self.buf.as_mut(), DST_PORT, p);
    }

    pub fn set_checksum(&mut self, c: u16) {
        set_u16(self.buf.as_mut(), CHECKSUM, c);
    }
}
