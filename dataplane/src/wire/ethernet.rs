//! Ethernet II frames.

use super::{get_u16, WireError};

pub const HEADER_LEN: usize = 14;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;

const DST: core::ops::Range<usize> = 0..6;
const SRC: core::ops::Range<usize> = 6..12;
const ETHERTYPE: usize = 12;

/// A view over an Ethernet frame.
pub struct Frame<T> {
    buf: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        if buf.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(Frame { buf })
    }

    pub fn dst(&self) -> [u8; 6] {
        self.buf.as_ref()[DST].try_into().expect("6-byte range")
    }

    pub fn src(&self) -> [u8; 6] {
        self.buf.as_ref()[SRC].try_into().expect("6-byte range")
    }

    pub fn ethertype(&self) -> u16 {
        get_u16(self.buf.as_ref(), ETHERTYPE)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    pub fn set_dst(&mut self, mac: [u8; 6]) {
        self.buf.as_mut()[DST].copy_from_slice(&mac);
    }

    pub fn set_src(&mut self, mac: [u8; 6]) {
        self.buf.as_mut()[SRC].copy_from_slice(&mac);
    }

    /// The bytes after the Ethernet header.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buf.as_mut()[HEADER_LEN..]
    }
}
