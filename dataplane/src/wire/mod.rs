//! Views over packet bytes, one file per protocol.
//!
//! Panic contract: `*::new_checked` verifies, once, that the buffer is long enough for the fixed
//! header and that length fields stay inside the buffer. After that, accessors index without
//! further checks and cannot panic. Setters write fields in place; nothing copies a payload.

pub mod ethernet;
pub mod icmp;
pub mod icmpv6;
pub mod ipv4;
pub mod ipv6;
pub mod sctp;
pub mod tcp;
pub mod udp;

/// Why a frame could not be parsed. Each variant becomes a drop-counter label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// Shorter than the header it claims to carry.
    Truncated,
    /// A length or version field is inconsistent.
    Malformed,
}

pub(crate) fn get_u16(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}

pub(crate) fn set_u16(buf: &mut [u8], at: usize, v: u16) {
    buf[at..at + 2].copy_from_slice(&v.to_be_bytes());
}
