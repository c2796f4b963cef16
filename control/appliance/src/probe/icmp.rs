//! The `ping` probe: one ICMP (or, to an IPv6 endpoint, ICMPv6) echo request to an endpoint,
//! answered by the echo reply that carries its identifier and sequence number.
//!
//! Several probes run at once, and a raw ICMP socket receives a copy of every ICMP message the
//! host gets (other probes' replies, an operator's `ping`, our own requests looped back when
//! probing a local address). So a reply counts only when it is an echo reply, from the probed
//! address, with a valid checksum and with this probe's (identifier, sequence) pair.

use super::ProbeError;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::sync::atomic::{AtomicU32, Ordering};

pub const TYPE_ECHO_REPLY: u8 = 0;
pub const TYPE_ECHO_REQUEST: u8 = 8;
pub const TYPE_ECHO_REPLY_V6: u8 = 129;
pub const TYPE_ECHO_REQUEST_V6: u8 = 128;
/// Type, code, checksum, identifier, sequence number.
pub const HEADER_LEN: usize = 8;
/// What every request carries; replies echo it, which helps when reading a capture.
const PAYLOAD: &[u8; 16] = b"oxlb health ping";
/// Large enough for an IPv4 header with options and our echoed request.
const RECV_BUF: usize = 512;

/// Field offsets of an ICMP echo message.
mod field {
    use std::ops::Range;
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Range<usize> = 2..4;
    pub const IDENT: Range<usize> = 4..6;
    pub const SEQ: Range<usize> = 6..8;
}

/// Field offsets of the IPv4 header a raw socket delivers in front of the ICMP message.
mod ip_field {
    use std::ops::Range;
    pub const VERSION_IHL: usize = 0;
    pub const PROTOCOL: usize = 9;
    pub const SRC: Range<usize> = 12..16;
    pub const MIN_LEN: usize = 20;
    pub const PROTO_ICMP: u8 = 1;
}

/// Which echo request a message belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Echo {
    pub ident: u16,
    pub seq: u16,
}

impl Echo {
    /// Writes an echo request carrying `payload` to the start of `buf`, checksum included;
    /// returns its length.
    ///
    /// Panics if `buf` is shorter than `HEADER_LEN + payload.len()`: callers pass a buffer
    /// they sized for it.
    pub fn emit_request(self, payload: &[u8], buf: &mut [u8]) -> usize {
        let len = self.emit_request_v6(payload, buf);
        let msg = &mut buf[..len];
        msg[field::TYPE] = TYPE_ECHO_REQUEST;
        msg[field::CODE] = 0;
        msg[field::CHECKSUM].copy_from_slice(&[0, 0]);
        msg[field::IDENT].copy_from_slice(&self.ident.to_be_bytes());
        msg[field::SEQ].copy_from_slice(&self.seq.to_be_bytes());
        msg[HEADER_LEN..].copy_from_slice(payload);
        let sum = checksum(msg);
        msg[field::CHECKSUM].copy_from_slice(&sum.to_be_bytes());
        len
    }

    /// Writes an ICMPv6 echo request as [`Echo::emit_request`] does, with the checksum left
    /// 0: it covers a pseudo-header with our source address, which the kernel fills in (an
    /// ICMPv6 socket always computes it).
    pub fn emit_request_v6(self, payload: &[u8], buf: &mut [u8]) -> usize {
        let len = HEADER_LEN + payload.len();
        let msg = &mut buf[..len];
        msg[field::TYPE] = TYPE_ECHO_REQUEST_V6;
        msg[field::CODE] = 0;
        msg[field::CHECKSUM].copy_from_slice(&[0, 0]);
        msg[field::IDENT].copy_from_slice(&self.ident.to_be_bytes());
        msg[field::SEQ].copy_from_slice(&self.seq.to_be_bytes());
        msg[HEADER_LEN..].copy_from_slice(payload);
        len
    }
}

/// What `recv` returns on the socket: raw sockets deliver the IPv4 header too, ping sockets
/// only the ICMP message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    WithIpHeader,
    IcmpOnly,
    /// An ICMPv6 message alone, as every ICMPv6 socket delivers it; the kernel has checked
    /// its checksum (which covers a pseudo-header `recv` does not show).
    Icmpv6,
}

/// Why a received message is not the reply a probe waits for. Not an error of the probe: it
/// keeps waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotOurs {
    /// Shorter than its headers, or not an IPv4 packet carrying ICMP.
    #[error("not a whole ICMP message")]
    Malformed,
    /// From another address than the probed one.
    #[error("from {0}")]
    OtherSource(IpAddr),
    /// Another ICMP type (a request, ours looped back or someone's; an error; ...).
    #[error("ICMP type {0}, code {1}")]
    NotEchoReply(u8, u8),
    #[error("bad checksum")]
    BadChecksum,
    /// The reply to another probe's request.
    #[error("the reply to {0:?}")]
    OtherEcho(Echo),
}

/// Whether `packet`, as received with `framing`, is the echo reply from `from` to `want`.
pub fn is_reply_to(
    framing: Framing,
    packet: &[u8],
    from: IpAddr,
    want: Echo,
) -> Result<(), NotOurs> {
    let icmp = match framing {
        Framing::IcmpOnly | Framing::Icmpv6 => packet,
        Framing::WithIpHeader => {
            let first = *packet
                .get(ip_field::VERSION_IHL)
                .ok_or(NotOurs::Malformed)?;
            let ihl = usize::from(first & 0x0f) * 4;
            if first >> 4 != 4
                || ihl < ip_field::MIN_LEN
                || packet.len() < ihl
                || packet[ip_field::PROTOCOL] != ip_field::PROTO_ICMP
            {
                return Err(NotOurs::Malformed);
            }
            let src = IpAddr::V4(Ipv4Addr::from(read_u32(&packet[ip_field::SRC])));
            if src != from {
                return Err(NotOurs::OtherSource(src));
            }
            &packet[ihl..]
        }
    };
    if icmp.len() < HEADER_LEN {
        return Err(NotOurs::Malformed);
    }
    let reply = if framing == Framing::Icmpv6 {
        TYPE_ECHO_REPLY_V6
    } else {
        TYPE_ECHO_REPLY
    };
    if icmp[field::TYPE] != reply || icmp[field::CODE] != 0 {
        return Err(NotOurs::NotEchoReply(icmp[field::TYPE], icmp[field::CODE]));
    }
    // The sum over a message including its checksum field is 0 (0xffff before inversion).
    if framing != Framing::Icmpv6 && checksum(icmp) != 0 {
        return Err(NotOurs::BadChecksum);
    }
    let got = Echo {
        ident: read_u16(icmp, field::IDENT),
        seq: read_u16(icmp, field::SEQ),
    };
    if got == want {
        Ok(())
    } else {
        Err(NotOurs::OtherEcho(got))
    }
}

fn read_u16(bytes: &[u8], at: Range<usize>) -> u16 {
    u16::from_be_bytes([bytes[at.start], bytes[at.start + 1]])
}

fn read_u32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// The Internet checksum (RFC 1071) of `bytes`: the one's complement of the one's complement
/// sum of its 16-bit words, an odd last byte padded with zero.
pub fn checksum(bytes: &[u8]) -> u16 {
    let mut chunks = bytes.chunks_exact(2);
    let mut sum: u32 = chunks
        .by_ref()
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The (identifier, sequence) of the next request of this process. Consecutive probes get
/// distinct pairs (unique for 2^32 probes), so probes running at once never take each other's
/// replies; the identifier starts from the process id so that two processes on one host (two
/// oxlb, or oxlb and an operator's `ping`) rarely share one.
fn next_echo() -> Echo {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    Echo {
        ident: (std::process::id() as u16).wrapping_add((n >> 16) as u16),
        seq: n as u16,
    }
}

/// Opens an ICMP socket. A raw socket first: the appliance runs with CAP_NET_RAW, and the
/// unprivileged ping socket (`SOCK_DGRAM`, `IPPROTO_ICMP`) is refused unless the group is in
/// `net.ipv4.ping_group_range`, which is "1 0" (nobody, root included) by default and in every
/// new network namespace. The ping socket is the fallback for a process without
/// CAP_NET_RAW on a host that allows it.
/// For an IPv6 `addr`, the same with ICMPv6 sockets (the ping group range is shared).
/// Returns the socket, its framing, and whether it is a ping socket.
fn open(addr: IpAddr) -> Result<(Socket, Framing, bool), ProbeError> {
    let (domain, protocol, raw_framing, ping_framing) = match addr {
        IpAddr::V4(_) => (
            Domain::IPV4,
            Protocol::ICMPV4,
            Framing::WithIpHeader,
            Framing::IcmpOnly,
        ),
        IpAddr::V6(_) => (
            Domain::IPV6,
            Protocol::ICMPV6,
            Framing::Icmpv6,
            Framing::Icmpv6,
        ),
    };
    let raw = match Socket::new(domain, Type::RAW, Some(protocol)) {
        Ok(s) => return Ok((s, raw_framing, false)),
        Err(e) => e,
    };
    match Socket::new(domain, Type::DGRAM, Some(protocol)) {
        Ok(s) => Ok((s, ping_framing, true)),
        Err(ping) => Err(ProbeError::NoIcmpSocket { raw, ping }),
    }
}

/// Sends one echo request to `addr` and waits for its reply, without a time limit of its own
/// (`probe_once` bounds it with the probe's timeout, which drops this future and its socket).
pub async fn ping(addr: IpAddr) -> Result<(), ProbeError> {
    let (socket, framing, ping_socket) = open(addr)?;
    socket.set_nonblocking(true)?;
    // Connected, a raw socket only receives messages from `addr`: fewer foreign ones to skip.
    socket.connect(&SockAddr::from(SocketAddr::new(addr, 0)))?;
    // Tokio's UDP socket only issues send(2), recv(2) and getsockname(2), which mean the same
    // on an ICMP socket; it gives readiness without registering the descriptor by hand (which
    // needs `unsafe`, kept out of this crate).
    let socket = tokio::net::UdpSocket::from_std(socket.into())?;
    let mut want = next_echo();
    let mut request = [0u8; HEADER_LEN + PAYLOAD.len()];
    let len = if addr.is_ipv4() {
        want.emit_request(PAYLOAD, &mut request)
    } else {
        want.emit_request_v6(PAYLOAD, &mut request)
    };
    socket.send(&request[..len]).await?;
    if ping_socket {
        // A ping socket replaces the identifier with its own (its local "port") and hands it
        // only the replies carrying it.
        want.ident = socket.local_addr()?.port();
    }
    let mut buf = [0u8; RECV_BUF];
    loop {
        let n = socket.recv(&mut buf).await?;
        match is_reply_to(framing, &buf[..n], addr, want) {
            Ok(()) => return Ok(()),
            Err(why) => log::trace!("ping {addr}: skipping a message: {why}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FROM: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 31, 2));
    const WANT: Echo = Echo {
        ident: 0x1234,
        seq: 7,
    };

    /// An echo reply to `echo` as a raw socket receives it, from `from`.
    fn reply(from: IpAddr, echo: Echo) -> Vec<u8> {
        let IpAddr::V4(from) = from else {
            unreachable!("an IPv4 header")
        };
        let mut icmp = [0u8; HEADER_LEN + 16];
        let len = echo.emit_request(PAYLOAD, &mut icmp);
        icmp[field::TYPE] = TYPE_ECHO_REPLY;
        icmp[field::CHECKSUM].copy_from_slice(&[0, 0]);
        let sum = checksum(&icmp[..len]);
        icmp[field::CHECKSUM].copy_from_slice(&sum.to_be_bytes());
        let mut packet = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, ip_field::PROTO_ICMP, 0, 0];
        packet.extend_from_slice(&from.octets());
        packet.extend_from_slice(&[198, 18, 31, 254]);
        packet.extend_from_slice(&icmp[..len]);
        packet
    }

    #[test]
    fn the_reply_with_our_identifier_and_sequence_from_the_endpoint_matches() {
        let p = reply(FROM, WANT);
        assert_eq!(is_reply_to(Framing::WithIpHeader, &p, FROM, WANT), Ok(()));
        assert_eq!(
            is_reply_to(Framing::IcmpOnly, &p[20..], FROM, WANT),
            Ok(()),
            "a ping socket delivers the ICMP message alone"
        );
    }

    #[test]
    fn a_reply_to_another_probe_does_not_match() {
        let other_seq = Echo { seq: 8, ..WANT };
        let other_ident = Echo {
            ident: 0x1235,
            ..WANT
        };
        for other in [other_seq, other_ident] {
            assert_eq!(
                is_reply_to(Framing::WithIpHeader, &reply(FROM, other), FROM, WANT),
                Err(NotOurs::OtherEcho(other))
            );
        }
        let elsewhere = IpAddr::V4(Ipv4Addr::new(198, 18, 31, 3));
        assert_eq!(
            is_reply_to(Framing::WithIpHeader, &reply(elsewhere, WANT), FROM, WANT),
            Err(NotOurs::OtherSource(elsewhere))
        );
    }

    #[test]
    fn our_own_request_looped_back_is_not_a_reply() {
        let mut p = reply(FROM, WANT);
        let mut request = [0u8; HEADER_LEN + 16];
        let len = WANT.emit_request(PAYLOAD, &mut request);
        p.truncate(20);
        p.extend_from_slice(&request[..len]);
        assert_eq!(
            is_reply_to(Framing::WithIpHeader, &p, FROM, WANT),
            Err(NotOurs::NotEchoReply(TYPE_ECHO_REQUEST, 0))
        );
    }

    #[test]
    fn a_reply_with_a_bad_checksum_does_not_match() {
        let mut p = reply(FROM, WANT);
        let last = p.len() - 1;
        p[last] ^= 0x01;
        assert_eq!(
            is_reply_to(Framing::WithIpHeader, &p, FROM, WANT),
            Err(NotOurs::BadChecksum)
        );
    }

    #[test]
    fn truncated_or_non_icmp_packets_are_skipped_without_panicking() {
        let p = reply(FROM, WANT);
        for len in [0, 1, 19, 20, 27] {
            assert_eq!(
                is_reply_to(Framing::WithIpHeader, &p[..len], FROM, WANT),
                Err(NotOurs::Malformed),
                "{len} bytes"
            );
        }
        let mut udp = p.clone();
        udp[ip_field::PROTOCOL] = 17;
        assert_eq!(
            is_reply_to(Framing::WithIpHeader, &udp, FROM, WANT),
            Err(NotOurs::Malformed)
        );
        let mut long_ihl = p;
        long_ihl[ip_field::VERSION_IHL] = 0x4f;
        assert_eq!(
            is_reply_to(Framing::WithIpHeader, &long_ihl, FROM, WANT),
            Err(NotOurs::Malformed)
        );
    }

    #[test]
    fn an_ip_header_with_options_is_skipped_by_its_length() {
        let p = reply(FROM, WANT);
        let mut with_options = p[..20].to_vec();
        with_options[ip_field::VERSION_IHL] = 0x46;
        with_options.extend_from_slice(&[1, 1, 1, 0]); // NOP NOP NOP EOL
        with_options.extend_from_slice(&p[20..]);
        assert_eq!(
            is_reply_to(Framing::WithIpHeader, &with_options, FROM, WANT),
            Ok(())
        );
    }

    #[test]
    fn the_checksum_is_the_rfc_1071_example() {
        // RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2 (checksum 220d).
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0x220d
        );
        // An odd length pads the last byte with zero on the right.
        assert_eq!(checksum(&[0x01]), !0x0100);
    }

    #[test]
    fn an_emitted_request_checks_out_and_carries_its_identifier_and_sequence() {
        let mut buf = [0xaau8; 64];
        let len = WANT.emit_request(PAYLOAD, &mut buf);
        assert_eq!(len, HEADER_LEN + PAYLOAD.len());
        assert_eq!(checksum(&buf[..len]), 0);
        assert_eq!(
            &buf[..HEADER_LEN],
            &[TYPE_ECHO_REQUEST, 0, buf[2], buf[3], 0x12, 0x34, 0, 7]
        );
    }

    #[test]
    fn consecutive_probes_get_distinct_identifier_and_sequence_pairs() {
        let pairs: std::collections::HashSet<(u16, u16)> = (0..1000)
            .map(|_| next_echo())
            .map(|e| (e.ident, e.seq))
            .collect();
        assert_eq!(pairs.len(), 1000);
    }

    #[test]
    fn an_icmpv6_echo_reply_matches_and_our_own_looped_back_request_does_not() {
        let mut msg = [0u8; HEADER_LEN + 16];
        let len = WANT.emit_request_v6(PAYLOAD, &mut msg);
        assert_eq!(msg[field::TYPE], TYPE_ECHO_REQUEST_V6);
        let from: IpAddr = "fd00:31::1".parse().unwrap();
        assert_eq!(
            is_reply_to(Framing::Icmpv6, &msg[..len], from, WANT),
            Err(NotOurs::NotEchoReply(TYPE_ECHO_REQUEST_V6, 0))
        );
        msg[field::TYPE] = TYPE_ECHO_REPLY_V6;
        assert_eq!(
            is_reply_to(Framing::Icmpv6, &msg[..len], from, WANT),
            Ok(())
        );
        // An ICMPv4 echo reply's type means nothing in ICMPv6.
        msg[field::TYPE] = TYPE_ECHO_REPLY;
        assert_eq!(
            is_reply_to(Framing::Icmpv6, &msg[..len], from, WANT),
            Err(NotOurs::NotEchoReply(TYPE_ECHO_REPLY, 0))
        );
    }
}
