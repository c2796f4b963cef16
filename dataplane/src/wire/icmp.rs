//! ICMPv4 headers.

use super::{get_u16, set_u16, WireError};

pub const HEADER_LEN: usize = 8;
pub const TYPE_ECHO_REPLY: u8 = 0;
pub const TYPE_ECHO_REQUEST: u8 = 8;

const TYPE: usize = 0;
const CODE: usize = 1;
const CHECKSUM: usize = 2;

/// A view over an ICMPv4 message.
pub struct Message<T> {
    buf: T,
}

impl<T: AsRef<[u8]>> Message<T> {
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        if buf.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(Message { buf })
    }

    pub fn msg_type(&self) -> u8 {
        self.buf.as_ref()[TYPE]
    }

    pub fn code(&self) -> u8 {
        self.buf.as_ref()[CODE]
    }

    pub fn checksum(&self) -> u16 {
        get_u16(self.buf.as_ref(), CHECKSUM)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Message<T> {
    pub fn set_type(&mut self, t: u8) {
        self.buf.as_mut()[TYPE] = t;
    }

    pub fn set_checksum(&mut self, c: u16) {
        set_u16(self.buf.as_mut(), CHECKSUM, c);
    }
}
