//! ICMPv6 (RFC 4443): the message layout is ICMPv4's (type, code, checksum), so the view is
//! [`super::icmp::Message`]; what differs is the type numbers and that the checksum covers the
//! IPv6 pseudo-header (see `checksum::pseudo_header_v6`).

pub use super::icmp::{Message, HEADER_LEN};

pub const TYPE_DEST_UNREACHABLE: u8 = 1;
pub const TYPE_PACKET_TOO_BIG: u8 = 2;
pub const TYPE_TIME_EXCEEDED: u8 = 3;
pub const TYPE_PARAMETER_PROBLEM: u8 = 4;
pub const TYPE_ECHO_REQUEST: u8 = 128;
pub const TYPE_ECHO_REPLY: u8 = 129;

/// Whether an ICMPv6 type is an error that quotes the packet it is about (types below 128).
pub fn is_error(icmp_type: u8) -> bool {
    matches!(
        icmp_type,
        TYPE_DEST_UNREACHABLE | TYPE_PACKET_TOO_BIG | TYPE_TIME_EXCEEDED | TYPE_PARAMETER_PROBLEM
    )
}
