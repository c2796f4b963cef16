//! ICMPv6 errors about flows of the IPv6 table, translated for the host they are meant for.
//!
//! The IPv6 counterpart of `icmp_error` (read its module comment first): an ICMPv6 error
//! (RFC 4443: destination unreachable, packet too big, time exceeded, parameter problem)
//! quotes the packet that caused it as it was on the wire, with the addresses and ports we
//! rewrote, and is rewritten like the flow's own packets so the host it concerns can match it
//! to its socket. A "packet too big" about a request we forwarded is what makes the client's
//! path MTU discovery work through the balancer.
//!
//! Extension headers (hop-by-hop, routing with no segments left, destination options) before
//! the ICMPv6 header or in the quote are walked in place and stay where they are.
//!
//! A NAT64 flow's endpoint speaks IPv4: its ICMPv4 errors about requests we forwarded become
//! the ICMPv6 errors RFC 7915 section 4.2 maps them to ([`from_icmpv4`]), and the client
//! side's ICMPv6 errors about the answers we sent become the ICMPv4 errors section 5.2 maps
//! them to ([`to_icmpv4`]).
//!
//! Panic contract: every function checks the lengths it relies on and returns `None` or an
//! error for a packet too short; none panics on any input.

use crate::checksum::{
    fold, ipv4_header, pseudo_header_v4, pseudo_header_v6, sum, update128, update16, update_pseudo,
};
use crate::conntrack::{Direction, Flow, FlowKey};
use crate::icmp_error::{self, answering_key, rewrite_quoted_l4, ICMP_HEADER, QUOTED_L4};
use crate::snapshot::Proto;
use crate::wire::{ethernet, get_u16, icmpv6, ipv4, ipv6, set_u16, WireError};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An ICMPv6 error never exceeds the minimum IPv6 MTU (RFC 4443 section 2.4 (c)).
const IPV6_MIN_MTU: usize = 1280;
/// Where an ICMPv6 error we write (without extension headers) has its quoted IPv6 header and
/// the quoted transport header.
const INNER_AT: usize = ipv6::HEADER_LEN + ICMP_HEADER;
const QUOTED_L4_AT: usize = INNER_AT + ipv6::HEADER_LEN;
/// The largest ICMPv4 error a host must accept, and what routers send (RFC 1812 section
/// 4.3.2.3): an ICMPv6 error translated to ICMPv4 is cut to it.
const ICMPV4_ERROR_MAX: usize = 576;

/// What an ICMPv6 error quotes: the quoted packet's tuple reversed, which is the tuple the
/// connection table has for packets travelling the way the error does, and where the parts
/// of the message lie (extension headers may precede the ICMPv6 header and the quoted
/// transport header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quote {
    pub key: FlowKey<Ipv6Addr>,
    /// Offsets in the outer IPv6 packet of its ICMPv6 header, of the quoted IPv6 header and
    /// of the quoted transport header.
    icmp_at: usize,
    inner_at: usize,
    l4_at: usize,
}

/// Why an ICMPv6 error about a packet that may be ours cannot be translated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuoteError {
    /// The quote ends inside the quoted packet's extension headers, before its ports.
    CutInExtensionHeaders,
}

/// The quote of the ICMPv6 error in `ip_buf` (an IPv6 packet), if it is one about a TCP, UDP
/// or SCTP packet and holds the quoted header, its extension headers and 8 bytes of its
/// transport header. Echo and everything else that is not an error give `None`, as does a
/// quote cut inside its extension headers (see [`try_quote`] for telling that apart).
pub fn quote(ip_buf: &[u8]) -> Option<Quote> {
    try_quote(ip_buf).ok().flatten()
}

/// [`quote`], with a quote cut inside its extension headers an error: a packet that could be
/// one of ours, which the kernel could not match either.
///
/// Extension headers are walked in place by `ipv6::Packet::upper_layer`, before the ICMPv6
/// header and in the quote. A quoted later fragment (no ports), routing header with segments
/// left or over-long chain is no packet of our flows (those were not forwarded) and gives
/// `None`.
pub fn try_quote(ip_buf: &[u8]) -> Result<Option<Quote>, QuoteError> {
    let Ok(outer) = ipv6::Packet::new_checked(ip_buf) else {
        return Ok(None);
    };
    let end = outer.total_len();
    let icmp_at = match outer.upper_layer() {
        Ok(u) if u.proto == ipv6::PROTO_ICMPV6 => u.offset,
        _ => return Ok(None),
    };
    if !ip_buf.get(icmp_at).is_some_and(|&t| icmpv6::is_error(t)) {
        return Ok(None);
    }
    let inner_at = icmp_at + ICMP_HEADER;
    let Some(Ok(inner)) = ip_buf.get(inner_at..end).map(ipv6::Packet::new_quoted) else {
        return Ok(None);
    };
    let upper = match inner.upper_layer() {
        Ok(u) => u,
        Err(ipv6::ExtensionError::Truncated) => return Err(QuoteError::CutInExtensionHeaders),
        Err(_) => return Ok(None),
    };
    let Some(proto) = Proto::from_ip_proto(upper.proto) else {
        return Ok(None);
    };
    let l4_at = inner_at + upper.offset;
    match ip_buf.get(l4_at..end) {
        Some(l4) if l4.len() >= QUOTED_L4 => Ok(Some(Quote {
            key: answering_key(inner.src(), inner.dst(), l4, proto),
            icmp_at,
            inner_at,
            l4_at,
        })),
        _ => Ok(None),
    }
}

/// How to rewrite an ICMPv6 error: the outer addresses and the quoted packet's endpoints.
pub type Translation = icmp_error::Translation<Ipv6Addr>;

/// [`icmp_error::translation`] for a flow of the IPv6 table; `None` when the host the error
/// is meant for does not speak IPv6 (the endpoint of a NAT64 flow: see [`translation_to_v4`]).
pub(crate) fn translation(flow: &Flow<Ipv6Addr>, dir: Direction) -> Option<Translation> {
    icmp_error::translation(flow, dir, v6)
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
    // Every offset of the quote lies before its transport header: one check covers them.
    if end < quote.l4_at + QUOTED_L4 {
        return Err(WireError::Truncated);
    }
    let check_at = quote.icmp_at + 2;
    let old_outer_src: [u8; 16] = ip_buf[8..24].try_into().expect("16 bytes");
    let old_outer_dst: [u8; 16] = ip_buf[24..40].try_into().expect("16 bytes");
    let new_outer_src = t.outer_src.map_or(old_outer_src, |a| a.octets());
    let new_outer_dst = t.outer_dst.octets();
    let mut icmp_check = get_u16(ip_buf, check_at);
    icmp_check = update128(icmp_check, old_outer_src, new_outer_src);
    icmp_check = update128(icmp_check, old_outer_dst, new_outer_dst);
    ip_buf[8..24].copy_from_slice(&new_outer_src);
    ip_buf[24..40].copy_from_slice(&new_outer_dst);

    let inner = &mut ip_buf[quote.inner_at..end];
    let old_src: [u8; 16] = inner[8..24].try_into().expect("16 bytes");
    let old_dst: [u8; 16] = inner[24..40].try_into().expect("16 bytes");
    let (new_src, new_dst) = (t.quoted_src.0.octets(), t.quoted_dst.0.octets());
    inner[8..24].copy_from_slice(&new_src);
    inner[24..40].copy_from_slice(&new_dst);
    icmp_check = update128(icmp_check, old_src, new_src);
    icmp_check = update128(icmp_check, old_dst, new_dst);

    // The quoted transport header (after any quoted extension headers, which stay as they
    // are): TCP's checksum is there when the quote is long enough, as it usually is (an
    // ICMPv6 error quotes up to 1232 bytes).
    let l4 = &mut ip_buf[quote.l4_at..end];
    let (old_sport, old_dport) = (get_u16(l4, 0), get_u16(l4, 2));
    let changed = rewrite_quoted_l4(l4, quote.key.proto, (t.quoted_src.1, t.quoted_dst.1), |c| {
        update128(update128(c, old_src, new_src), old_dst, new_dst)
    });
    icmp_check = update16(icmp_check, old_sport, t.quoted_src.1);
    icmp_check = update16(icmp_check, old_dport, t.quoted_dst.1);
    if let Some((old, new)) = changed {
        icmp_check = update16(icmp_check, old, new);
    }
    set_u16(ip_buf, check_at, icmp_check);
    Ok(())
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
/// too short; `Malformed` when it is not an IPv4 ICMP error, its checksum is wrong, or `t`
/// has no outer source.
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
    // The ICMPv6 checksum is computed anew below: a message that arrived corrupt must not
    // leave looking sound.
    let message = frame.get(icmp_at..end).ok_or(WireError::Truncated)?;
    if fold(sum(message)) != 0xffff {
        return Err(WireError::Malformed);
    }
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

    // A UDP zero (no checksum, fine over IPv4) stays as it was.
    let p4 = pseudo_header_v4(inner_src, inner_dst, proto_num, payload_len);
    let p6 = pseudo_header_v6(t.quoted_src.0, t.quoted_dst.0, proto_num, payload_len);
    rewrite_quoted_l4(
        &mut buf[l4_at..l4_at + l4_len],
        proto,
        (t.quoted_src.1, t.quoted_dst.1),
        |c| update_pseudo(c, p4, p6),
    );
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
pub(crate) fn write_v6_header(
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

/// The rewrite of an error about a NAT64 flow's answer we sent to the client (`dir` is
/// `Original`: it travels from the client's side, as requests do), for the flow's IPv4
/// endpoint: sent from our IPv4 address the endpoint answered (whoever sent the error has no
/// IPv4 address, and the endpoint knows ours), quoting the answer as the endpoint sent it.
/// `None` for any other flow or direction.
pub(crate) fn translation_to_v4(
    flow: &Flow<Ipv6Addr>,
    dir: Direction,
) -> Option<icmp_error::Translation> {
    let endpoint = flow.endpoint();
    let (IpAddr::V4(ep), Some((IpAddr::V4(ours), our_port)), Direction::Original) =
        (endpoint.addr, flow.snat(), dir)
    else {
        return None;
    };
    Some(icmp_error::Translation {
        outer_src: Some(ours),
        outer_dst: ep,
        quoted_src: (ep, endpoint.port),
        quoted_dst: (ours, our_port),
    })
}

/// The ICMPv4 type, code and second header word RFC 7915 section 5.2 gives an ICMPv6 error;
/// `None` for those it says to drop. `rest` is the ICMPv6 header's second word (MTU or
/// pointer).
fn icmpv4_for(icmp_type: u8, code: u8, rest: [u8; 4]) -> Option<(u8, u8, u32)> {
    use crate::icmp_error::{
        CODE_FRAG_NEEDED, TYPE_DEST_UNREACHABLE, TYPE_PARAMETER_PROBLEM, TYPE_TIME_EXCEEDED,
    };
    const HOST_UNREACHABLE: u8 = 1;
    const PROTOCOL_UNREACHABLE: u8 = 2;
    const PORT_UNREACHABLE: u8 = 3;
    const HOST_ADMIN_PROHIBITED: u8 = 10;
    let unreachable = |code| Some((TYPE_DEST_UNREACHABLE, code, 0));
    match (icmp_type, code) {
        (icmpv6::TYPE_DEST_UNREACHABLE, 0 | 2 | 3) => unreachable(HOST_UNREACHABLE),
        (icmpv6::TYPE_DEST_UNREACHABLE, 1) => unreachable(HOST_ADMIN_PROHIBITED),
        (icmpv6::TYPE_DEST_UNREACHABLE, 4) => unreachable(PORT_UNREACHABLE),
        (icmpv6::TYPE_PACKET_TOO_BIG, _) => {
            // No IPv6 path is narrower than 1280 bytes (RFC 8201 section 4), whatever a
            // broken router says; the IPv4 header is 20 bytes shorter than the IPv6 one.
            let mtu = u32::from_be_bytes(rest).max(IPV6_MIN_MTU as u32) - 20;
            let mtu = mtu.min(u32::from(u16::MAX));
            Some((TYPE_DEST_UNREACHABLE, CODE_FRAG_NEEDED, mtu))
        }
        (icmpv6::TYPE_TIME_EXCEEDED, _) => Some((TYPE_TIME_EXCEEDED, code, 0)),
        (icmpv6::TYPE_PARAMETER_PROBLEM, 0) => {
            let pointer = ipv4_pointer(u32::from_be_bytes(rest))?;
            Some((TYPE_PARAMETER_PROBLEM, 0, u32::from(pointer) << 24))
        }
        (icmpv6::TYPE_PARAMETER_PROBLEM, 1) => unreachable(PROTOCOL_UNREACHABLE),
        _ => None,
    }
}

/// The IPv4 header field an IPv6 header's byte `p` becomes (RFC 7915 figure 6); `None` for
/// the flow label, which IPv4 lacks, and for anything past the fixed header.
fn ipv4_pointer(p: u32) -> Option<u8> {
    Some(match p {
        0 | 1 => p as u8,
        4 | 5 => 2,
        6 => 9,
        7 => 8,
        8..=23 => 12,
        24..=39 => 16,
        _ => return None,
    })
}

/// Turns the ICMPv6 error in the Ethernet frame `buf[..frame_len]`, described by `quote` and
/// about an answer of a NAT64 flow we sent to the client, into the ICMPv4 error the flow's
/// endpoint must get, in place (RFC 7915 section 5.2; see [`icmpv4_for`]): the outer and
/// quoted headers become IPv4 with `t`'s addresses (extension headers are left behind), the
/// quoted ports become `t`'s and the quoted transport checksum follows them to the IPv4
/// pseudo-header. A "packet too big" becomes "fragmentation needed" with an MTU 20 bytes
/// smaller, capped at `mtu_cap` (the links on the way, when known). The message is cut to
/// 576 bytes, what IPv4 routers send. Returns the new frame length, or `None` for an ICMPv6
/// error RFC 7915 says to drop.
///
/// The ICMPv6 checksum is checked first: the ICMPv4 one is computed anew, and must not
/// make a message that arrived corrupt look sound. Only the quoted transport bytes move
/// (toward the start); the headers are written in front of them.
///
/// Errors, with `buf` untouched: `Truncated` when the frame or its quote is too short;
/// `Malformed` when it is not the ICMPv6 error `quote` describes, its checksum is wrong, or
/// `t` has no outer source.
pub fn to_icmpv4(
    buf: &mut [u8],
    frame_len: usize,
    quote: &Quote,
    t: &icmp_error::Translation,
    mtu_cap: Option<u16>,
) -> Result<Option<usize>, WireError> {
    const ETH: usize = ethernet::HEADER_LEN;
    const V4: usize = ipv4::MIN_HEADER_LEN;
    const NEW_L4_AT: usize = ETH + V4 + ICMP_HEADER + V4;
    let frame = buf.get(..frame_len).ok_or(WireError::Truncated)?;
    if ethernet::Frame::new_checked(frame)?.ethertype() != ethernet::ETHERTYPE_IPV6 {
        return Err(WireError::Malformed);
    }
    let outer_src = t.outer_src.ok_or(WireError::Malformed)?;
    let outer = ipv6::Packet::new_checked(&frame[ETH..])?;
    let end = ETH + outer.total_len();
    let (icmp_at, inner_at, l4_at) = (ETH + quote.icmp_at, ETH + quote.inner_at, ETH + quote.l4_at);
    // Every offset of the quote lies before its transport header: one check covers them.
    if end < l4_at + QUOTED_L4 {
        return Err(WireError::Truncated);
    }
    let icmp = &frame[icmp_at..end];
    let pseudo = pseudo_header_v6(outer.src(), outer.dst(), ipv6::PROTO_ICMPV6, icmp.len());
    if !icmpv6::is_error(icmp[0]) || fold(pseudo + sum(icmp)) != 0xffff {
        return Err(WireError::Malformed);
    }
    let rest: [u8; 4] = icmp[4..8].try_into().expect("4 bytes");
    let Some((type4, code4, mut field)) = icmpv4_for(icmp[0], icmp[1], rest) else {
        return Ok(None);
    };
    if (type4, code4)
        == (
            icmp_error::TYPE_DEST_UNREACHABLE,
            icmp_error::CODE_FRAG_NEEDED,
        )
    {
        if let Some(cap) = mtu_cap {
            field = field.min(u32::from(cap));
        }
    }
    let (tclass, hop_limit) = (outer.traffic_class(), outer.hop_limit());
    let inner = ipv6::Packet::new_quoted(&frame[inner_at..end])?;
    let (inner_tclass, inner_hop_limit) = (inner.traffic_class(), inner.hop_limit());
    let (inner_src, inner_dst) = (inner.src(), inner.dst());
    // The quoted packet's own transport length, not what the quote holds of it.
    let l4_total = inner.total_len().saturating_sub(l4_at - inner_at);
    let (proto, proto_num) = (quote.key.proto, quote.key.proto as u8);
    let l4_len = (end - l4_at).min(ICMPV4_ERROR_MAX - (NEW_L4_AT - ETH));
    let new_len = NEW_L4_AT + l4_len;

    let p6 = pseudo_header_v6(inner_src, inner_dst, proto_num, l4_total);
    let p4 = pseudo_header_v4(t.quoted_src.0, t.quoted_dst.0, proto_num, l4_total);
    rewrite_quoted_l4(
        &mut buf[l4_at..l4_at + l4_len],
        proto,
        (t.quoted_src.1, t.quoted_dst.1),
        |c| update_pseudo(c, p6, p4),
    );
    buf.copy_within(l4_at..l4_at + l4_len, NEW_L4_AT);

    // The quoted header is what `nat64::six_to_four` makes of a packet: DF, Identification 0.
    let quoted_len = (V4 + l4_total).min(usize::from(u16::MAX)) as u16;
    write_v4_header(
        &mut buf[NEW_L4_AT - V4..NEW_L4_AT],
        inner_tclass,
        quoted_len,
        DONT_FRAGMENT,
        inner_hop_limit,
        proto_num,
        t.quoted_src.0,
        t.quoted_dst.0,
    );
    let icmp = &mut buf[ETH + V4..new_len];
    icmp[..4].copy_from_slice(&[type4, code4, 0, 0]);
    icmp[4..8].copy_from_slice(&field.to_be_bytes());
    let c = !fold(sum(icmp));
    set_u16(icmp, 2, c);
    write_v4_header(
        &mut buf[ETH..ETH + V4],
        tclass,
        (new_len - ETH) as u16,
        0,
        hop_limit,
        ipv4::PROTO_ICMP,
        outer_src,
        t.outer_dst,
    );
    set_u16(buf, 12, ethernet::ETHERTYPE_IPV4);
    Ok(Some(new_len))
}

/// Flags and fragment offset of a quoted IPv4 header we write: DF, not a fragment.
const DONT_FRAGMENT: u16 = 0x4000;

/// Writes an IPv4 header without options into `h` (20 bytes), Identification 0, its checksum
/// computed: TOS from an IPv6 traffic class.
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_v4_header(
    h: &mut [u8],
    tclass: u8,
    total_len: u16,
    flags: u16,
    ttl: u8,
    proto: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
) {
    h[..2].copy_from_slice(&[0x45, tclass]);
    set_u16(h, 2, total_len);
    set_u16(h, 4, 0);
    set_u16(h, 6, flags);
    h[8..10].copy_from_slice(&[ttl, proto]);
    set_u16(h, 10, 0);
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    let c = ipv4_header(h);
    set_u16(h, 10, c);
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
    fn icmpv6_errors_map_to_icmpv4_as_rfc_7915_section_5_2_says() {
        let none = [0; 4];
        let cases = [
            ((1, 0), Some((3, 1, 0))),
            ((1, 1), Some((3, 10, 0))),
            ((1, 2), Some((3, 1, 0))),
            ((1, 3), Some((3, 1, 0))),
            ((1, 4), Some((3, 3, 0))),
            ((1, 5), None),
            ((1, 6), None),
            ((3, 0), Some((11, 0, 0))),
            ((3, 1), Some((11, 1, 0))),
            ((4, 1), Some((3, 2, 0))),
            ((4, 2), None),
            ((4, 3), None),
            ((128, 0), None),
        ];
        for ((t, c), want) in cases {
            assert_eq!(icmpv4_for(t, c, none), want, "type {t} code {c}");
        }
    }

    #[test]
    fn packet_too_big_becomes_fragmentation_needed_20_bytes_smaller_never_below_1260() {
        assert_eq!(icmpv4_for(2, 0, 1400u32.to_be_bytes()), Some((3, 4, 1380)));
        // Below the IPv6 minimum MTU, which no IPv6 path has.
        assert_eq!(icmpv4_for(2, 0, 1000u32.to_be_bytes()), Some((3, 4, 1260)));
        // Jumbograms: the IPv4 field has 16 bits.
        assert_eq!(
            icmpv4_for(2, 0, 100_000u32.to_be_bytes()),
            Some((3, 4, 65535))
        );
    }

    #[test]
    fn a_parameter_problem_points_at_the_ipv4_field_of_the_ipv6_one() {
        for (v6, v4) in [
            (0, 0),
            (1, 1),
            (4, 2),
            (5, 2),
            (6, 9),
            (7, 8),
            (8, 12),
            (23, 12),
            (24, 16),
            (39, 16),
        ] {
            let want = Some((12, 0, (v4 as u32) << 24));
            assert_eq!(icmpv4_for(4, 0, u32::to_be_bytes(v6)), want, "{v6}");
        }
        // The flow label, and anything past the fixed header: no IPv4 counterpart.
        for v6 in [2, 3, 40, 1000] {
            assert_eq!(icmpv4_for(4, 0, u32::to_be_bytes(v6)), None, "{v6}");
        }
    }

    #[test]
    fn a_cut_icmpv6_error_about_a_nat64_answer_is_refused_untouched_at_every_length() {
        // Scapy: port unreachable from the client [fd00::2] to the VIP [fd00:100::1] about
        // the UDP answer [fd00:100::1]:2020 -> [fd00::2]:50000 "pong".
        let frame = hex(
            "02000000000102000000000286dd60000000003c3a40fd0000000000000000000000000000\
             02fd000100000000000000000000000001010492510000000060000000000c1140fd000100\
             000000000000000000000001fd00000000000000000000000000000207e4c350000c5ac670\
             6f6e67",
        );
        let t = icmp_error::Translation {
            outer_src: Some(Ipv4Addr::new(198, 18, 31, 254)),
            outer_dst: Ipv4Addr::new(198, 18, 31, 1),
            quoted_src: (Ipv4Addr::new(198, 18, 31, 1), 8080),
            quoted_dst: (Ipv4Addr::new(198, 18, 31, 254), 45000),
        };
        let q = quote(&frame[ethernet::HEADER_LEN..]).expect("a quote");
        let mut whole = frame.clone();
        assert!(matches!(
            to_icmpv4(&mut whole, frame.len(), &q, &t, None),
            Ok(Some(_))
        ));
        for cut in 0..frame.len() {
            let mut c = frame[..cut].to_vec();
            assert!(to_icmpv4(&mut c, cut, &q, &t, None).is_err(), "{cut}");
            assert_eq!(c, frame[..cut], "{cut}");
        }
        let mut past = frame.clone();
        assert_eq!(
            to_icmpv4(&mut past, frame.len() + 1, &q, &t, None),
            Err(WireError::Truncated)
        );
        assert_eq!(past, frame);
    }

    #[test]
    fn a_quote_is_found_behind_extension_headers_and_one_cut_inside_them_is_an_error() {
        // UNREACH with hop-by-hop (8 bytes) and destination options (16) in the quote.
        let ext = hex(
            "6000000000543a40fd000031000000000000000000000001fd00000000000000000000000000\
             0002010454e000000000600000000024003ffd000000000000000000000000000002fd000031\
             0000000000000000000000013c000104000000001101010c000000000000000000000000c350\
             1f90000c43ef70696e67",
        );
        let q = try_quote(&ext).unwrap().expect("a quote");
        assert_eq!((q.key.src_port, q.key.dst_port), (8080, 50000));
        assert_eq!(q.l4_at, INNER_AT + ipv6::HEADER_LEN + 8 + 16);
        // Cut inside the destination options header, the lengths saying so.
        let at = INNER_AT + ipv6::HEADER_LEN + 8 + 4;
        let mut cut = ext[..at].to_vec();
        set_u16(&mut cut, 4, (at - ipv6::HEADER_LEN) as u16);
        assert_eq!(try_quote(&cut), Err(QuoteError::CutInExtensionHeaders));
        assert_eq!(quote(&cut), None);
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
