//! TCP headers.

use super::{get_u16, set_u16, WireError};

pub const MIN_HEADER_LEN: usize = 20;
pub const CHECKSUM: usize = 16;

pub const FLAG_FIN: u8 = 0x01;
pub const FLAG_SYN: u8 = 0x02;
pub const FLAG_RST: u8 = 0x04;
pub const FLAG_ACK: u8 = 0x10;

const SRC_PORT: usize = 0;
const DST_PORT: usize = 2;
const DATA_OFF: usize = 12;
const FLAGS: usize = 13;

/// A view over a TCP segment; `new_checked` guarantees the data offset lies inside the buffer.
pub struct Segment<T> {
    buf: T,
}

impl<T: AsRef<[u8]>> Segment<T> {
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        let b = buf.as_ref();
        if b.len() < MIN_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let off = usize::from(b[DATA_OFF] >> 4) * 4;
        if off < MIN_HEADER_LEN || off > b.len() {
            return Err(WireError::Malformed);
        }
        Ok(Segment { buf })
    }

    pub fn src_port(&self) -> u16 {
        get_u16(self.buf.as_ref(), SRC_PORT)
    }

    pub fn dst_port(&self) -> u16 {
        get_u16(self.buf.as_ref(), DST_PORT)
    }

    pub fn flags(&self) -> u8 {
        self.buf.as_ref()[FLAGS]
    }

    pub fn checksum(&self) -> u16 {
        get_u16(self.buf.as_ref(), CHECKSUM)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Segment<T> {
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
