//! ICMPv6 errors about flows of the IPv6 table, translated for the host they are meant for.
//!
//! The IPv6 counterpart of `icmp_error` (read its module comment first): an ICMPv6 error
//! (RFC 4443: destination unreachable, packet too big, time exceeded, parameter problem)
//! quotes the packet that caused it as it was on the wire, with the addresses and ports we
//! rewrote, and is rewritten like the flow's own packets so the host it concerns can match it
//! to its socket. A "packet too big" about a request we forwarded is what makes the client's
//! path MTU discovery work through the balancer.
//!
//! A NAT64 flow's endpoint speaks IPv4: its ICMPv4 errors about requests we forwarded become
//! the ICMPv6 errors RFC 7915 section 4.2 maps them to ([`from_icmpv4`]). The other way (an
//! ICMPv6 error from the client side about a NAT64 reply, which would become ICMPv4 toward the
//! endpoint) is not translated: [`translation`] declines it and the kernel gets it.
//!
//! Panic contract: every function checks the lengths it relies on and returns `None` or an
//! error for a packet too short; none panics on any input.

use crate::checksum::{
    fold, pseudo_header_v4, pseudo_header_v6, sum, update128, update16, update_pseudo,
};
use crate::conntrack::{Direction, Flow, FlowKey};
use crate::snapshot::{NatMode, Proto};
use crate::wire::{ethernet, get_u16, icmpv6, ipv4, ipv6, set_u16, WireError};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Bytes of the quoted packet's transport header we need: the ports and, for UDP, the
/// checksum (every ICMP error quotes at least 8).
const QUOTED_L4: usize = 8;
const ICMP_HEADER: usize = 8;
/// The quoted IPv6 header right after the outer one and the ICMPv6 header: extension headers
/// are not walked, so it is always here.
const INNER_AT: usize = ipv6::HEADER_LEN + ICMP_HEADER;
const QUOTED_L4_AT: usize = INNER_AT + ipv6::HEADER_LEN;
/// An ICMPv6 error never exceeds the minimum IPv6 MTU (RFC 4443 section 2.4 (c)).
const IPV6_MIN_MTU: usize = 1280;

/// What an ICMPv6 error quotes: the quoted packet's tuple reversed, which is the tuple the
/// connection table has for packets travelling the way the error does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quote {
    pub key: FlowKey<Ipv6Addr>,
}

/// The quote of the ICMPv6 error in `ip_buf` (an IPv6 packet without extension headers), if
/// it is one about a TCP, UDP or SCTP packet and holds the quoted header and 8 bytes of its
/// transport header. Echo and everything else that is not an error give `None`.
pub fn quote(ip_buf: &[u8]) -> Option<Quote> {
    let outer = ipv6::Packet::new_checked(ip_buf).ok()?;
    if outer.next_header() != ipv6::PROTO_ICMPV6 {
        return None;
    }
    let end = outer.total_len();
    if !icmpv6::is_error(*ip_buf.get(ipv6::HEADER_LEN)?) {
        return None;
    }
    let inner = ipv6::Packet::new_quoted(ip_buf.get(INNER_AT..end)?).ok()?;
    // A quoted fragment or extension header: its ports are not where we would look.
    let proto = Proto::from_ip_proto(inner.next_header())?;
    let l4 = ip_buf.get(QUOTED_L4_AT..end)?;
    if l4.len() < QUOTED_L4 {
        return None;
    }
    Some(Quote {
        key: FlowKey {
            src: inner.dst(),
            dst: inner.src(),
            src_port: get_u16(l4, 2),
            dst_port: get_u16(l4, 0),
            proto,
        },
    })
}

/// How to rewrite an ICMPv6 error: the outer addresses and the quoted packet's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// The outer source, or `None` to keep whoever sent the error.
    pub outer_src: Option<Ipv6Addr>,
    pub outer_dst: Ipv6Addr,
    /// The quoted packet's source and destination (address, port).
    pub quoted_src: (Ipv6Addr, u16),
    pub quoted_dst: (Ipv6Addr, u16),
}

/// The rewrite of an error about `flow` travelling in direction `dir` (the direction of the
/// flow's packets going the error's way):
///
/// - `Reply`: about a request we forwarded; the client gets it from the VIP, quoting its own
///   request to the VIP;
/// - `Original`: about a reply we forwarded; the endpoint gets it quoting its own answer (a
///   DSR endpoint's answer came from the VIP, and that is what the error already quotes).
///
/// `None` when the host it is meant for does not speak IPv6 (the endpoint of a NAT64 flow).
pub(crate) fn translation(flow: &Flow<Ipv6Addr>, dir: Direction) -> Option<Translation> {
    let original = flow.original();
    let (service, endpoint) = (flow.service(), flow.endpoint());
    Some(match dir {
        Direction::Reply => {
            let vip = v6(service.vip)?;
            Translation {
                outer_src: Some(vip),
                outer_dst: original.src,
                quoted_src: (original.src, original.src_port),
                quoted_dst: (vip, service.port),
            }
        }
        // A DSR endpoint answered from the VIP itself (it holds the address): the error is
        // about a packet exactly as it sent it, and goes to it unchanged (only the MACs).
        Direction::Original if flow.mode() == NatMode::Dsr => {
            let vip = v6(service.vip)?;
            Translation {
                outer_src: None,
                outer_dst: vip,
                quoted_src: (vip, service.port),
                quoted_dst: (original.src, original.src_port),
            }
        }
        Direction::Original => {
            let ep = v6(endpoint.addr)?;
            let quoted_dst = match flow.snat() {
                Some((addr, port)) => (v6(addr)?, port),
                None => (original.src, original.src_port),
            };
            Translation {
                outer_src: None,
                outer_dst: ep,
                quoted_src: (ep, endpoint.port),
                quoted_dst,
            }
        }
    })
}

/// An address of the IPv6 table that is really IPv6 (not an IPv4-mapped one).
fn v6(ip: IpAddr) -> Option<Ipv6Addr> {
    match ip {
        IpAddr::V6(a) => Some(a),
        IpAddr::V4(_) => None,
    }
}

/// Rewrites the ICMPv6 error in `ip_buf` described by `quote` (from [`quote`] on the same
/// bytes): the quoted addresses and ports (with the quoted UDP or TCP checksum kept
/// consistent when the quote holds it), the outer addresses, and the ICMPv6 checksum.
///
/// The ICMPv6 checksum is updated incrementally (RFC 1624) for each changed word, pseudo-header
/// included: an error may quote up to 1232 bytes, none of which needs reading, and a message
/// that arrived corrupt stays detectably corrupt instead of being given a valid checksum.
pub fn translate(ip_buf: &mut [u8], quote: &Quote, t: &Translation) -> Result<(), WireError> {
    let end = ipv6::Packet::new_checked(&*ip_buf)?.total_len();
    if end < QUOTED_L4_AT + QUOTED_L4 {
        return Err(WireError::Truncated);
    }
    let old_outer_src: [u8; 16] = ip_buf[8..24].try_into().expect("16 bytes");
    let old_outer_dst: [u8; 16] = ip_buf[24..40].try_into().expect("16 bytes");
    let new_outer_src = t.outer_src.map_or(old_outer_src, |a| a.octets());
    let new_outer_dst = t.outer_dst.octets();
    let mut icmp_check = get_u16(ip_buf, ipv6::HEADER_LEN + 2);
    icmp_check = update128(icmp_check, old_outer_src, new_outer_src);
    icmp_check = update128(icmp_check, old_outer_dst, new_outer_dst);
    ip_buf[8..24].copy_from_slice(&new_outer_src);
    ip_buf[24..40].copy_from_slice(&new_outer_dst);

    let inner = &mut ip_buf[INNER_AT..end];
    let old_src: [u8; 16] = inner[8..24].try_into().expect("16 bytes");
    let old_dst: [u8; 16] = inner[24..40].try_into().expect("16 bytes");
    let (new_src, new_dst) = (t.quoted_src.0.octets(), t.quoted_dst.0.octets());
    inner[8..24].copy_from_slice(&new_src);
    inner[24..40].copy_from_slice(&new_dst);
    icmp_check = update128(icmp_check, old_src, new_src);
    icmp_check = update128(icmp_check, old_dst, new_dst);

    let l4 = &mut inner[ipv6::HEADER_LEN..];
    let (old_sport, old_dport) = (get_u16(l4, 0), get_u16(l4, 2));
    set_u16(l4, 0, t.quoted_src.1);
    set_u16(l4, 2, t.quoted_dst.1);
    icmp_check = update16(icmp_check, old_sport, t.quoted_src.1);
    icmp_check = update16(icmp_check, old_dport, t.quoted_dst.1);
    // The quoted transport checksum, as `icmp_error::translate` does for IPv4: UDP's is in
    // the 8 bytes every error quotes, TCP's when the quote is long enough (usually, as an
    // ICMPv6 error quotes up to 1232 bytes); SCTP's CRC covers no address. A UDP zero (which
    // IPv6 forbids, but it is what the host sent) stays zero.
    if let Some(at) = l4_checksum_at(quote.key.proto).filter(|&at| l4.len() >= at + 2) {
        let old = get_u16(l4, at);
        if !(quote.key.proto == Proto::Udp && old == 0) {
            let mut c = update128(old, old_src, new_src);
            c = update128(c, old_dst, new_dst);
            c = update16(c, old_sport, t.quoted_src.1);
            c = update16(c, old_dport, t.quoted_dst.1);
            if quote.key.proto == Proto::Udp && c == 0 {
                c = 0xffff;
            }
            set_u16(l4, at, c);
            icmp_check = update16(icmp_check, old, c);
        }
    }
    set_u16(ip_buf, ipv6::HEADER_LEN + 2, icmp_check);
    Ok(())
}

/// Where the transport checksum of `proto` lies in its header, if it covers addresses.
fn l4_checksum_at(proto: Proto) -> Option<usize> {
    match proto {
        Proto::Udp => Some(6),
        Proto::Tcp => Some(16),
        Proto::Sctp => None,
    }
}

/// The ICMPv6 type, code and 4-byte field (MTU or pointer) RFC 7915 section 4.2 gives an
/// ICMPv4 error; `None` for those it says to drop (and for anything that is not an error).
/// `rest` is the ICMPv4 header's second word; `quoted_len` the quoted packet's total length,
/// for a "fragmentation needed" from a router too old to give its MTU.
fn icmpv6_for(icmp_type: u8, code: u8, rest: [u8; 4], quoted_len: u16) -> Option<(u8, u8, u32)> {
    use crate::icmp_error::{
        CODE_FRAG_NEEDED, TYPE_DEST_UNREACHABLE, TYPE_PARAMETER_PROBLEM, TYPE_TIME_EXCEEDED,
    };
    const NO_ROUTE: u8 = 0;
    const ADMIN_PROHIBITED: u8 = 1;
    const PORT_UNREACHABLE: u8 = 4;
    /// Parameter problem codes: erroneous header field, unrecognised next header.
    const ERRONEOUS_FIELD: u8 = 0;
    const UNRECOGNISED_NEXT_HEADER: u8 = 1;
    /// Where IPv6 has its next header field: what an IPv4 "protocol unreachable" points at.
    const NEXT_HEADER_AT: u32 = 6;
    let unreachable = |code| Some((icmpv6::TYPE_DEST_UNREACHABLE, code, 0));
    match (icmp_type, code) {
        (TYPE_DEST_UNREACHABLE, 0 | 1 | 5 | 6 | 7 | 8 | 11 | 12) => unreachable(NO_ROUTE),
        (TYPE_DEST_UNREACHABLE, 9 | 10 | 13 | 15) => unreachable(ADMIN_PROHIBITED),
        (TYPE_DEST_UNREACHABLE, 3) => unreachable(PORT_UNREACHABLE),
        (TYPE_DEST_UNREACHABLE, 2) => Some((
            icmpv6::TYPE_PARAMETER_PROBLEM,
            UNRECOGNISED_NEXT_HEADER,
            NEXT_HEADER_AT,
        )),
        (TYPE_DEST_UNREACHABLE, CODE_FRAG_NEEDED) => {
            let mut mtu = u16::from_be_bytes([rest[2], rest[3]]);
            if mtu == 0 {
                mtu = plateau_below(quoted_len);
            }
            // The IPv6 header is 20 bytes longer than the IPv4 one it becomes.
            Some((icmpv6::TYPE_PACKET_TOO_BIG, 0, u32::from(mtu) + 20))
        }
        (TYPE_TIME_EXCEEDED, 0 | 1) => Some((icmpv6::TYPE_TIME_EXCEEDED, code, 0)),
        (TYPE_PARAMETER_PROBLEM, 0 | 2) => {
            let pointer = ipv6_pointer(rest[0])?;
            Some((icmpv6::TYPE_PARAMETER_PROBLEM, ERRONEOUS_FIELD, pointer))
        }
        _ => None,
    }
}

/// The IPv6 header field an IPv4 header's byte `p` becomes (RFC 7915 figure 3); `None` for
/// fields IPv6 has no counterpart of (identification, flags, checksum...).
fn ipv6_pointer(p: u8) -> Option<u32> {
    Some(match p {
        0 | 1 => u32::from(p),
        2 | 3 => 4,
        8 => 7,
        9 => 6,
        12..=15 => 8,
        16..=19 => 24,
        _ => return None,
    })
}

/// The largest RFC 1191 plateau below `len`: the MTU to assume when a router reports
/// "fragmentation needed" without one.
fn plateau_below(len: u16) -> u16 {
    const PLATEAUS: [u16; 10] = [32000, 17914, 8166, 4352, 2002, 1492, 1006, 508, 296, 68];
    PLATEAUS.into_iter().find(|&p| p < len).unwrap_or(68)
}

/// Turns the ICMPv4 error in the Ethernet frame `buf[..frame_len]`, about a request of a NAT64
/// flow we forwarded to its IPv4 endpoint, into the ICMPv6 error the client must get, in place
/// (RFC 7915 section 4.2): the outer and quoted headers become IPv6 with `t`'s addresses, the
/// quoted ports become `t`'s and the quoted transport checksum follows them to the IPv6
/// pseudo-header. A "packet too big" carries the IPv4 MTU plus 20, capped at `link_mtu` (the
/// client's link, when known). Returns the new frame length, or `None` for an ICMPv4 error
/// RFC 7915 says to drop (source route failed... see [`icmpv6_for`]).
///
/// The frame grows by 40 bytes (both headers are 20 bytes longer): `buf` must have that room.
/// The quote is cut so that the message stays within 1280 bytes. Only the quoted transport
/// bytes move; the headers are written in front of them.
///
/// Errors, with `buf` untouched: `Truncated` when the frame, its quote or `buf`'s room is
/// too short; `Malformed` when it is not an IPv4 ICMP error, or `t` has no outer source.
pub fn from_icmpv4(
    buf: &mut [u8],
    frame_len: usize,
    t: &Translation,
    link_mtu: Option<u16>,
) -> Result<Option<usize>, WireError> {
    const ETH: usize = ethernet::HEADER_LEN;
    let frame = buf.get(..frame_len).ok_or(WireError::Truncated)?;
    if ethernet::Frame::new_checked(frame)?.ethertype() != ethernet::ETHERTYPE_IPV4 {
        return Err(WireError::Malformed);
    }
    let outer_src = t.outer_src.ok_or(WireError::Malformed)?;
    let outer = ipv4::Packet::new_checked(&frame[ETH..])?;
    if outer.protocol() != ipv4::PROTO_ICMP || outer.is_fragment() {
        return Err(WireError::Malformed);
    }
    let (tos, ttl) = (frame[ETH + 1], outer.ttl());
    let icmp_at = ETH + outer.header_len();
    let end = ETH + outer.total_len();
    let icmp = frame
        .get(icmp_at..icmp_at + ICMP_HEADER)
        .ok_or(WireError::Truncated)?;
    let (icmp_type, code) = (icmp[0], icmp[1]);
    let rest: [u8; 4] = icmp[4..8].try_into().expect("4 bytes");

    let inner_at = icmp_at + ICMP_HEADER;
    let inner = ipv4::Packet::new_quoted(frame.get(inner_at..end).ok_or(WireError::Truncated)?)?;
    let (inner_tos, inner_ttl, proto_num) = (frame[inner_at + 1], inner.ttl(), inner.protocol());
    let (inner_src, inner_dst, inner_len) = (inner.src(), inner.dst(), inner.total_len());
    let l4_at = inner_at + inner.header_len();
    let proto = Proto::from_ip_proto(proto_num).ok_or(WireError::Malformed)?;
    let quoted_l4 = end.checked_sub(l4_at).ok_or(WireError::Truncated)?;
    if quoted_l4 < QUOTED_L4 {
        return Err(WireError::Truncated);
    }
    let Some((type6, code6, mut field)) = icmpv6_for(icmp_type, code, rest, inner_len as u16)
    else {
        return Ok(None);
    };
    if type6 == icmpv6::TYPE_PACKET_TOO_BIG {
        if let Some(mtu) = link_mtu {
            field = field.min(u32::from(mtu));
        }
    }

    const NEW_INNER_AT: usize = ETH + INNER_AT;
    const NEW_L4_AT: usize = ETH + QUOTED_L4_AT;
    let l4_len = quoted_l4.min(IPV6_MIN_MTU - QUOTED_L4_AT);
    let new_len = NEW_L4_AT + l4_len;
    if buf.len() < new_len {
        return Err(WireError::Truncated);
    }
    // The quoted packet's own payload length, not what the quote holds of it.
    let payload_len = inner_len.saturating_sub(l4_at - inner_at);

    let l4 = &mut buf[l4_at..l4_at + l4_len];
    let (old_sport, old_dport) = (get_u16(l4, 0), get_u16(l4, 2));
    set_u16(l4, 0, t.quoted_src.1);
    set_u16(l4, 2, t.quoted_dst.1);
    if let Some(at) = l4_checksum_at(proto).filter(|&at| l4.len() >= at + 2) {
        let old = get_u16(l4, at);
        // Zero: a UDP datagram without a checksum (fine over IPv4); it stays as it was.
        if !(proto == Proto::Udp && old == 0) {
            let p4 = pseudo_header_v4(inner_src, inner_dst, proto_num, payload_len);
            let p6 = pseudo_header_v6(t.quoted_src.0, t.quoted_dst.0, proto_num, payload_len);
            let mut c = update_pseudo(old, p4, p6);
            c = update16(c, old_sport, t.quoted_src.1);
            c = update16(c, old_dport, t.quoted_dst.1);
            if proto == Proto::Udp && c == 0 {
                c = 0xffff;
            }
            set_u16(l4, at, c);
        }
    }
    buf.copy_within(l4_at..l4_at + l4_len, NEW_L4_AT);

    write_v6_header(
        &mut buf[NEW_INNER_AT..NEW_L4_AT],
        inner_tos,
        payload_len as u16,
        proto_num,
        inner_ttl,
        t.quoted_src.0,
        t.quoted_dst.0,
    );
    let icmp_len = new_len - (ETH + ipv6::HEADER_LEN);
    let icmp = &mut buf[ETH + ipv6::HEADER_LEN..new_len];
    icmp[..4].copy_from_slice(&[type6, code6, 0, 0]);
    icmp[4..8].copy_from_slice(&field.to_be_bytes());
    let pseudo = pseudo_header_v6(outer_src, t.outer_dst, ipv6::PROTO_ICMPV6, icmp_len);
    let c = !fold(pseudo + sum(icmp));
    set_u16(icmp, 2, c);
    write_v6_header(
        &mut buf[ETH..ETH + ipv6::HEADER_LEN],
        tos,
        icmp_len as u16,
        ipv6::PROTO_ICMPV6,
        ttl,
        outer_src,
        t.outer_dst,
    );
    set_u16(buf, 12, ethernet::ETHERTYPE_IPV6);
    Ok(Some(new_len))
}

/// Writes an IPv6 header into `h` (40 bytes): traffic class from an IPv4 TOS, flow label 0.
fn write_v6_header(
    h: &mut [u8],
    tos: u8,
    payload_len: u16,
    next_header: u8,
    hop_limit: u8,
    src: Ipv6Addr,
    dst: Ipv6Addr,
) {
    h[..4].copy_from_slice(&[0x60 | (tos >> 4), tos << 4, 0, 0]);
    set_u16(h, 4, payload_len);
    h[6] = next_header;
    h[7] = hop_limit;
    h[8..24].copy_from_slice(&src.octets());
    h[24..40].copy_from_slice(&dst.octets());
}

/// The key a NAT64 flow's IPv4 packets have in the IPv6 table (IPv4-mapped addresses).
pub(crate) fn mapped(k: &FlowKey<Ipv4Addr>) -> FlowKey<Ipv6Addr> {
    FlowKey {
        src: k.src.to_ipv6_mapped(),
        dst: k.dst.to_ipv6_mapped(),
        src_port: k.src_port,
        dst_port: k.dst_port,
        proto: k.proto,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Scapy: port unreachable from [fd00:31::1] to the client [fd00::2], quoting the UDP
    // datagram [fd00::2]:50000 -> [fd00:31::1]:8080 "ping" as we forwarded it (DNAT).
    const UNREACH: &str = "60000000003c3a40fd000031000000000000000000000001fd0000000000000000000000000000020104932000000000600000000\
        00c1140fd000000000000000000000000000002fd000031000000000000000000000001c3501f90000c43ef70696e67";

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn the_quote_of_an_icmpv6_error_is_the_quoted_tuple_reversed() {
        let q = quote(&hex(UNREACH)).expect("a quote");
        assert_eq!(
            q.key,
            FlowKey {
                src: "fd00:31::1".parse().unwrap(),
                dst: "fd00::2".parse().unwrap(),
                src_port: 8080,
                dst_port: 50000,
                proto: Proto::Udp,
            }
        );
    }

    #[test]
    fn echo_neighbour_discovery_and_short_quotes_are_not_errors_to_translate() {
        for not_an_error in [icmpv6::TYPE_ECHO_REQUEST, 135, 136, 134, 0, 5] {
            let mut p = hex(UNREACH);
            p[ipv6::HEADER_LEN] = not_an_error;
            assert_eq!(quote(&p), None, "type {not_an_error}");
        }
        // Four bytes of UDP quoted: the ports, not the checksum.
        let mut cut = hex(UNREACH)[..QUOTED_L4_AT + 4].to_vec();
        set_u16(&mut cut, 4, (QUOTED_L4_AT + 4 - ipv6::HEADER_LEN) as u16);
        assert_eq!(quote(&cut), None);
        // A quoted fragment header: its ports are not where they would be looked for.
        let mut frag = hex(UNREACH);
        frag[INNER_AT + 6] = ipv6::PROTO_FRAGMENT;
        assert_eq!(quote(&frag), None);
    }

    #[test]
    fn a_cut_error_is_refused_without_panicking_at_every_length() {
        let p = hex(UNREACH);
        let q = quote(&p).unwrap();
        let t = Translation {
            outer_src: Some(Ipv6Addr::LOCALHOST),
            outer_dst: Ipv6Addr::LOCALHOST,
            quoted_src: (Ipv6Addr::LOCALHOST, 1),
            quoted_dst: (Ipv6Addr::LOCALHOST, 2),
        };
        for cut in 0..p.len() {
            let mut c = p[..cut].to_vec();
            assert!(quote(&c).is_none(), "{cut}");
            assert!(translate(&mut c, &q, &t).is_err(), "{cut}");
        }
    }

    #[test]
    fn a_cut_icmpv4_error_is_refused_untouched_at_every_length() {
        // Scapy: port unreachable from 198.18.31.1 about 198.18.31.254:45000 -> :8080 "ping".
        let frame = hex(
            "0200000001fe020000000101080045c0003c004d00004001ae90c6121f01c6121ffe0303c83e000000004500\
             00200000400040116fa9c6121ffec6121f01afc81f90000c868870696e67",
        );
        let t = Translation {
            outer_src: Some(Ipv6Addr::LOCALHOST),
            outer_dst: Ipv6Addr::LOCALHOST,
            quoted_src: (Ipv6Addr::LOCALHOST, 1),
            quoted_dst: (Ipv6Addr::LOCALHOST, 2),
        };
        let mut whole = frame.clone();
        whole.resize(frame.len() + 40, 0);
        assert!(matches!(
            from_icmpv4(&mut whole, frame.len(), &t, None),
            Ok(Some(_))
        ));
        for cut in 0..frame.len() {
            let mut c = frame[..cut].to_vec();
            c.resize(cut + 40, 0);
            let before = c.clone();
            assert!(from_icmpv4(&mut c, cut, &t, None).is_err(), "{cut}");
            assert_eq!(c, before, "{cut}");
        }
        // Room for 39 more bytes only.
        let mut short = frame.clone();
        short.resize(frame.len() + 39, 0);
        let before = short.clone();
        assert_eq!(
            from_icmpv4(&mut short, frame.len(), &t, None),
            Err(WireError::Truncated)
        );
        assert_eq!(short, before);
    }

    #[test]
    fn icmpv4_errors_map_to_icmpv6_as_rfc_7915_section_4_2_says() {
        let none = [0; 4];
        let cases = [
            ((3, 0), Some((1, 0, 0))),
            ((3, 1), Some((1, 0, 0))),
            ((3, 2), Some((4, 1, 6))),
            ((3, 3), Some((1, 4, 0))),
            ((3, 5), Some((1, 0, 0))),
            ((3, 9), Some((1, 1, 0))),
            ((3, 10), Some((1, 1, 0))),
            ((3, 13), Some((1, 1, 0))),
            ((3, 14), None),
            ((3, 15), Some((1, 1, 0))),
            ((3, 16), None),
            ((11, 0), Some((3, 0, 0))),
            ((11, 1), Some((3, 1, 0))),
            ((12, 1), None),
            ((4, 0), None),
            ((8, 0), None),
        ];
        for ((t, c), want) in cases {
            assert_eq!(icmpv6_for(t, c, none, 1500), want, "type {t} code {c}");
        }
    }

    #[test]
    fn fragmentation_needed_becomes_packet_too_big_20_bytes_larger_or_a_plateau_without_mtu() {
        assert_eq!(
            icmpv6_for(3, 4, [0, 0, 0x05, 0x78], 1500),
            Some((2, 0, 1420))
        );
        // An old router gives no MTU: the plateau below the quoted packet's length.
        assert_eq!(icmpv6_for(3, 4, [0; 4], 1500), Some((2, 0, 1492 + 20)));
        assert_eq!(icmpv6_for(3, 4, [0; 4], 1492), Some((2, 0, 1006 + 20)));
    }

    #[test]
    fn a_parameter_problem_points_at_the_ipv6_field_of_the_ipv4_one() {
        for (v4, v6) in [
            (0, 0),
            (1, 1),
            (2, 4),
            (3, 4),
            (8, 7),
            (9, 6),
            (12, 8),
            (16, 24),
        ] {
            assert_eq!(
                icmpv6_for(12, 0, [v4, 0, 0, 0], 60),
                Some((4, 0, v6)),
                "pointer {v4}"
            );
        }
        // Identification, flags, checksum: no IPv6 counterpart, so no error.
        for v4 in [4, 6, 10, 20] {
            assert_eq!(icmpv6_for(12, 0, [v4, 0, 0, 0], 60), None, "pointer {v4}");
        }
    }
}
