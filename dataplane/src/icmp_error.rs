//! ICMP errors about load-balanced flows, translated for the host they are meant for.
//!
//! An ICMP error quotes the IP header and first 8 bytes of the packet that caused it. When that
//! packet was one we rewrote, the quote holds the rewritten addresses and ports, which the host
//! receiving the error does not know: a client told "fragmentation needed" about a packet to an
//! endpoint it never heard of cannot find its socket, so its path MTU discovery never learns,
//! and a large transfer stalls. The error is therefore rewritten like the flow's own packets:
//!
//! - about a request we forwarded (sent by a router or the endpoint on the endpoint's side), it
//!   travels as a reply: the client receives it from the VIP, quoting its own request to the VIP;
//! - about a reply we forwarded (sent on the client's side, to the VIP), it travels as a
//!   request: the endpoint receives it quoting its own answer.
//!
//! The quoted tuple reversed is the tuple of a packet answering the quoted one, which is how the
//! connection table knows the flow in the direction the error travels.

use crate::checksum::{fold, ipv4_header, pseudo_header_v6, sum, update16, update32};
use crate::conntrack::{Direction, Flow, FlowAddr, FlowKey};
use crate::snapshot::{NatMode, Proto};
use crate::wire::{get_u16, icmpv6, ipv4, ipv6, set_u16, WireError};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const TYPE_DEST_UNREACHABLE: u8 = 3;
pub const TYPE_TIME_EXCEEDED: u8 = 11;
pub const TYPE_PARAMETER_PROBLEM: u8 = 12;
/// Destination unreachable, code 4: fragmentation needed and DF set (RFC 1191).
pub const CODE_FRAG_NEEDED: u8 = 4;

/// Bytes of the quoted packet's transport header every ICMP error carries (RFC 792): the
/// ports and, for UDP, the checksum.
pub(crate) const QUOTED_L4: usize = 8;
pub(crate) const ICMP_HEADER: usize = 8;

/// Whether an ICMP type is an error that quotes the packet it is about.
pub fn is_error(icmp_type: u8) -> bool {
    matches!(
        icmp_type,
        TYPE_DEST_UNREACHABLE | TYPE_TIME_EXCEEDED | TYPE_PARAMETER_PROBLEM
    )
}

/// What an ICMP error quotes, found in an IPv4 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quote {
    /// The quoted packet's tuple reversed: the tuple the connection table has for packets
    /// travelling the way the error does.
    pub key: FlowKey,
    /// Offset of the quoted IP header in the outer IP packet.
    inner_at: usize,
    inner_header_len: usize,
}

/// The quote of an ICMP error in `ip_buf` (an IPv4 packet), if it is one about a TCP or UDP
/// packet and holds the full quoted IP header and the 8 bytes with the ports.
pub fn quote(ip_buf: &[u8]) -> Option<Quote> {
    let outer = ipv4::Packet::new_checked(ip_buf).ok()?;
    if outer.protocol() != ipv4::PROTO_ICMP || outer.is_fragment() {
        return None;
    }
    let icmp_at = outer.header_len();
    let end = outer.total_len();
    if !is_error(*ip_buf.get(icmp_at)?) {
        return None;
    }
    let inner_at = icmp_at + ICMP_HEADER;
    let inner = ipv4::Packet::new_quoted(ip_buf.get(inner_at..end)?).ok()?;
    let inner_header_len = inner.header_len();
    let l4 = ip_buf.get(inner_at + inner_header_len..end)?;
    if l4.len() < QUOTED_L4 {
        return None;
    }
    let proto = Proto::from_ip_proto(inner.protocol())?;
    Some(Quote {
        key: answering_key(inner.src(), inner.dst(), l4, proto),
        inner_at,
        inner_header_len,
    })
}

/// The key of the flow an error is about, from the quoted packet's addresses, its transport
/// header `l4` (the ports in its first 4 bytes) and protocol: the quoted tuple reversed, the
/// tuple of a packet answering the quoted one, travelling the way the error does.
pub(crate) fn answering_key<A>(src: A, dst: A, l4: &[u8], proto: Proto) -> FlowKey<A> {
    FlowKey {
        src: dst,
        dst: src,
        src_port: get_u16(l4, 2),
        dst_port: get_u16(l4, 0),
        proto,
    }
}

/// How to rewrite an ICMP error (of IPv4, or of IPv6 with `A = Ipv6Addr`): the outer
/// addresses and the quoted packet's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation<A = Ipv4Addr> {
    /// The outer source, or `None` to keep whoever sent the error.
    pub outer_src: Option<A>,
    pub outer_dst: A,
    /// The quoted packet's source and destination (address, port).
    pub quoted_src: (A, u16),
    pub quoted_dst: (A, u16),
}

/// The rewrite of an error about `flow` travelling in direction `dir` (the direction of the
/// flow's packets going the error's way):
///
/// - `Reply`: about a request we forwarded; the client gets it from the VIP, quoting its own
///   request to the VIP;
/// - `Original`: about a reply we forwarded; the endpoint gets it quoting its own answer (a
///   DSR endpoint's answer came from the VIP, and that is what the error already quotes).
///
/// `addr` converts a flow's address to the table's family, `None` when it is of the other:
/// the host the error is meant for does not speak the error's family (the IPv4 endpoint of a
/// NAT64 flow in the IPv6 table), and there is no translation.
pub(crate) fn translation<A: FlowAddr>(
    flow: &Flow<A>,
    dir: Direction,
    addr: impl Fn(IpAddr) -> Option<A>,
) -> Option<Translation<A>> {
    let original = flow.original();
    let (service, endpoint) = (flow.service(), flow.endpoint());
    Some(match dir {
        Direction::Reply => {
            let vip = addr(service.vip)?;
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
            let vip = addr(service.vip)?;
            Translation {
                outer_src: None,
                outer_dst: vip,
                quoted_src: (vip, service.port),
                quoted_dst: (original.src, original.src_port),
            }
        }
        Direction::Original => {
            let ep = addr(endpoint.addr)?;
            let quoted_dst = match flow.snat() {
                Some((a, port)) => (addr(a)?, port),
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

/// Rewrites the error in `ip_buf` described by `quote`: the quoted header and ports (with the
/// quoted UDP checksum kept consistent), the outer addresses, and every checksum that covers
/// them. The ICMP checksum is recomputed over the whole message, which is small.
pub fn translate(ip_buf: &mut [u8], quote: &Quote, t: &Translation) -> Result<(), WireError> {
    let total = ipv4::Packet::new_checked(&*ip_buf)?.total_len();
    let (inner_at, ihl) = (quote.inner_at, quote.inner_header_len);
    let l4_at = inner_at + ihl;
    if total < l4_at + QUOTED_L4 {
        return Err(WireError::Truncated);
    }

    let inner = &mut ip_buf[inner_at..total];
    let old_src: [u8; 4] = inner[12..16].try_into().expect("4 bytes");
    let old_dst: [u8; 4] = inner[16..20].try_into().expect("4 bytes");
    let (new_src, new_dst) = (t.quoted_src.0.octets(), t.quoted_dst.0.octets());
    inner[12..16].copy_from_slice(&new_src);
    inner[16..20].copy_from_slice(&new_dst);
    set_u16(inner, 10, 0);
    let c = ipv4_header(&inner[..ihl]);
    set_u16(inner, 10, c);

    // UDP's checksum lies within the 8 quoted bytes; TCP's only when the sender quoted more.
    // SCTP's CRC covers the whole packet, which a quote never holds: it stays as quoted.
    rewrite_quoted_l4(
        &mut inner[ihl..],
        quote.key.proto,
        (t.quoted_src.1, t.quoted_dst.1),
        |c| update32(update32(c, old_src, new_src), old_dst, new_dst),
    );

    let mut outer = ipv4::Packet::new_checked(&mut *ip_buf)?;
    if let Some(src) = t.outer_src {
        outer.set_src(src);
    }
    outer.set_dst(t.outer_dst);
    outer.set_checksum(0);
    let c = ipv4_header(outer.header());
    outer.set_checksum(c);

    let icmp_at = inner_at - ICMP_HEADER;
    let icmp = &mut ip_buf[icmp_at..total];
    set_u16(icmp, 2, 0);
    let c = !fold(sum(icmp));
    set_u16(icmp, 2, c);
    Ok(())
}

/// Where the transport checksum of `proto` lies in its header, if it covers addresses (SCTP's
/// CRC covers none).
fn l4_checksum_at(proto: Proto) -> Option<usize> {
    match proto {
        Proto::Udp => Some(6),
        Proto::Tcp => Some(16),
        Proto::Sctp => None,
    }
}

/// Rewrites the ports of a quoted transport header `l4` (at least [`QUOTED_L4`] bytes) to
/// `src_port` and `dst_port`, and its checksum when the quote holds it and it covers
/// addresses: `addresses` moves it to the quote's new addresses (or new pseudo-header). The
/// checksum is updated, not recomputed, so the quote stays exactly as its host sent it, and a
/// UDP zero ("no checksum") stays zero. Returns the checksum's old and new values when it
/// changed, for a caller keeping a checksum over the whole quote up to date.
pub(crate) fn rewrite_quoted_l4(
    l4: &mut [u8],
    proto: Proto,
    (src_port, dst_port): (u16, u16),
    addresses: impl FnOnce(u16) -> u16,
) -> Option<(u16, u16)> {
    let (old_sport, old_dport) = (get_u16(l4, 0), get_u16(l4, 2));
    set_u16(l4, 0, src_port);
    set_u16(l4, 2, dst_port);
    let at = l4_checksum_at(proto).filter(|&at| l4.len() >= at + 2)?;
    let old = get_u16(l4, at);
    let udp = proto == Proto::Udp;
    if udp && old == 0 {
        return None;
    }
    let mut c = addresses(old);
    c = update16(c, old_sport, src_port);
    c = update16(c, old_dport, dst_port);
    if udp && c == 0 {
        c = 0xffff;
    }
    set_u16(l4, at, c);
    Some((old, c))
}

/// Turns `frame`, an IPv4 packet with DF set that is too big for the link it must leave by,
/// into the ICMP "fragmentation needed" its sender must get (RFC 1191), in place: the Ethernet
/// addresses swapped (it goes back where it came from), sent from `from` (an address of ours
/// the sender knows, e.g. the VIP it spoke to), quoting the packet's IP header and first 8
/// bytes as received. Returns the new frame length. Only the quote moves; nothing is allocated.
pub fn frag_needed_in_place(
    frame: &mut [u8],
    from: Ipv4Addr,
    mtu: u16,
) -> Result<usize, WireError> {
    const ETH: usize = 14;
    const IP: usize = 20;
    let (sender, ihl) = {
        let ip = ipv4::Packet::new_checked(frame.get(ETH..).ok_or(WireError::Truncated)?)?;
        (ip.src(), ip.header_len())
    };
    let quote_len = ihl + QUOTED_L4;
    let quote_at = ETH + IP + ICMP_HEADER;
    let end = quote_at + quote_len;
    if frame.len() < end || frame.len() < ETH + quote_len {
        return Err(WireError::Truncated);
    }
    frame.copy_within(ETH..ETH + quote_len, quote_at);

    swap_macs(frame);

    let ip = &mut frame[ETH..ETH + IP];
    ip.copy_from_slice(&[
        0x45,
        0xc0,
        0,
        0,
        0,
        0,
        0,
        0,
        64,
        ipv4::PROTO_ICMP,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
    ]);
    set_u16(ip, 2, (IP + ICMP_HEADER + quote_len) as u16);
    ip[12..16].copy_from_slice(&from.octets());
    ip[16..20].copy_from_slice(&sender.octets());
    let c = ipv4_header(ip);
    set_u16(ip, 10, c);

    let icmp = &mut frame[ETH + IP..end];
    icmp[..ICMP_HEADER].copy_from_slice(&[
        TYPE_DEST_UNREACHABLE,
        CODE_FRAG_NEEDED,
        0,
        0,
        0,
        0,
        0,
        0,
    ]);
    set_u16(icmp, 6, mtu);
    let c = !fold(sum(icmp));
    set_u16(icmp, 2, c);
    Ok(end)
}

/// Swaps the Ethernet source and destination of `frame` (at least 12 bytes): the frame goes
/// back where it came from.
fn swap_macs(frame: &mut [u8]) {
    let (dst, src) = frame[..12].split_at_mut(6);
    dst.swap_with_slice(src);
}

/// The smallest MTU every IPv6 link has: an ICMPv6 error never exceeds it (RFC 4443 2.4).
const IPV6_MIN_MTU: usize = 1280;

/// Turns `frame`, an IPv6 packet too big for the link it must leave by, into the ICMPv6
/// "packet too big" its sender must get (RFC 8201), in place: the Ethernet addresses swapped,
/// sent from `from` (the VIP the sender spoke to), quoting as much of the packet as fits in
/// the minimum IPv6 MTU. Returns the new frame length. Only the quote moves (48 bytes toward
/// the end), as the new headers go in front of it; nothing is allocated.
pub fn packet_too_big_in_place(
    frame: &mut [u8],
    from: Ipv6Addr,
    mtu: u16,
) -> Result<usize, WireError> {
    const ETH: usize = 14;
    let (sender, ip_len) = {
        let ip = ipv6::Packet::new_checked(frame.get(ETH..).ok_or(WireError::Truncated)?)?;
        (ip.src(), ip.total_len())
    };
    let quote_at = ETH + ipv6::HEADER_LEN + ICMP_HEADER;
    let quote_len = ip_len
        .min(IPV6_MIN_MTU - ipv6::HEADER_LEN - ICMP_HEADER)
        .min(frame.len().saturating_sub(quote_at));
    if quote_len < ipv6::HEADER_LEN + QUOTED_L4 {
        return Err(WireError::Truncated);
    }
    let end = quote_at + quote_len;
    frame.copy_within(ETH..ETH + quote_len, quote_at);

    swap_macs(frame);

    let icmp_len = ICMP_HEADER + quote_len;
    let ip = &mut frame[ETH..ETH + ipv6::HEADER_LEN];
    ip[..8].copy_from_slice(&[0x60, 0, 0, 0, 0, 0, ipv6::PROTO_ICMPV6, 64]);
    set_u16(ip, 4, icmp_len as u16);
    ip[8..24].copy_from_slice(&from.octets());
    ip[24..40].copy_from_slice(&sender.octets());

    let icmp = &mut frame[ETH + ipv6::HEADER_LEN..end];
    icmp[..ICMP_HEADER].copy_from_slice(&[icmpv6::TYPE_PACKET_TOO_BIG, 0, 0, 0, 0, 0, 0, 0]);
    icmp[4..8].copy_from_slice(&u32::from(mtu).to_be_bytes());
    let pseudo = pseudo_header_v6(from, sender, ipv6::PROTO_ICMPV6, icmp_len);
    let c = !fold(pseudo + sum(icmp));
    set_u16(icmp, 2, c);
    Ok(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected packets built independently with scapy, which computes every checksum.
    /// Port unreachable from endpoint 198.18.31.1 to client 198.18.0.2, quoting the whole UDP
    /// datagram 198.18.0.2:40000 -> 198.18.31.1:8080 as we forwarded it (DNAT).
    const UNREACH: &str = "45c0003cda5700004001f481c6121f01c61200020303a8420000000045000020000300004011cfa2c6120002c6121f019c401f90000cba0c70696e67";
    /// The same, as the client must see it: from the VIP, quoting its datagram to the VIP.
    const UNREACH_OUT: &str = "45c0003cda5700004001af81c6126401c61200020303ed4200000000450000200003000040118aa2c6120002c61264019c4007e4000c8cb870696e67";
    /// Fragmentation needed (next-hop MTU 1400) from router 198.18.31.9 about a 1500-byte TCP
    /// segment 198.18.0.2:40000 -> 198.18.31.1:8080, quoting only 8 bytes of TCP.
    const FRAG_NEEDED: &str = "45000038000700004001cf8ec6121f09c6120002030437cb00000578450005dc00094000400689ebc6120002c6121f019c401f90000003e8";
    const FRAG_NEEDED_OUT: &str = "450000380007000040018a96c6126401c612000203044f7700000578450005dc00094000400644ebc6120002c61264019c4007e4000003e8";
    const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);

    fn to_client(proto_port: u16) -> Translation {
        Translation {
            outer_src: Some(VIP),
            outer_dst: CLIENT,
            quoted_src: (CLIENT, 40000),
            quoted_dst: (VIP, proto_port),
        }
    }

    #[test]
    fn a_port_unreachable_from_an_endpoint_reaches_the_client_as_from_the_vip() {
        let mut p = hex(UNREACH);
        let q = quote(&p).unwrap();
        translate(&mut p, &q, &to_client(2020)).unwrap();
        assert_eq!(p, hex(UNREACH_OUT));
    }

    #[test]
    fn fragmentation_needed_keeps_its_mtu_and_quotes_the_clients_own_segment() {
        let mut p = hex(FRAG_NEEDED);
        let q = quote(&p).unwrap();
        assert_eq!(q.key.proto, Proto::Tcp);
        translate(&mut p, &q, &to_client(2020)).unwrap();
        assert_eq!(p, hex(FRAG_NEEDED_OUT));
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn the_quote_of_an_error_is_the_quoted_tuple_reversed() {
        let q = quote(&hex(UNREACH)).expect("a quote");
        assert_eq!(
            q.key,
            FlowKey {
                src: Ipv4Addr::new(198, 18, 31, 1),
                dst: Ipv4Addr::new(198, 18, 0, 2),
                src_port: 8080,
                dst_port: 40000,
                proto: Proto::Udp,
            }
        );
    }

    #[test]
    fn a_packet_too_big_becomes_the_fragmentation_needed_its_sender_expects() {
        // A 1500-byte UDP datagram with DF from the client to the VIP (scapy), and what the
        // client must get back from the VIP for a next link of MTU 1400.
        let head = hex(
            "0200000000010200000000020800450005dc00054000401144e4c6120002c61264019c4007e405c805b7",
        );
        let mut frame = head.clone();
        frame.resize(1514, b'x');
        let want = hex("020000000002020000000001080045c0003800000000400189ddc6126401c6120002030447e000000578450005dc00054000401144e4c6120002c61264019c4007e405c805b7");
        let len = frag_needed_in_place(&mut frame, VIP, 1400).unwrap();
        assert_eq!(&frame[..len], &want[..]);
    }

    #[test]
    fn echo_and_short_quotes_are_not_errors_to_translate() {
        let mut echo = hex(UNREACH);
        echo[20] = 8;
        assert_eq!(quote(&echo), None);
        let short = hex(UNREACH);
        let mut cut = short[..20 + 8 + 20 + 4].to_vec();
        let len = cut.len() as u16;
        cut[2..4].copy_from_slice(&len.to_be_bytes());
        assert_eq!(quote(&cut), None);
    }
}
