//! NAT64 header translation (RFC 7915) of TCP, UDP and SCTP packets, in place in an Ethernet
//! frame: an IPv6 header becomes an IPv4 one and back, and the transport checksum follows the
//! new pseudo-header. Addresses are the caller's choice; ports are left alone (the engine
//! rewrites them afterwards with `nat::rewrite_v4` / `nat::rewrite_v6`).
//!
//! The IPv4 header is 20 bytes shorter than the IPv6 one, and an AF_XDP frame cannot start
//! later or earlier in its UMEM chunk than the kernel put it: the transport segment is
//! therefore moved (`copy_within`) by the difference. This is the one place where the data
//! plane moves a payload; everywhere else headers are rewritten where they lie.
//!
//! Not translated here: ICMP/ICMPv6 (their types and quotes need their own translation), IPv6
//! extension headers (anything but TCP, UDP or SCTP right after the fixed header is refused),
//! IPv4 fragments (refused) and IPv4 options (dropped, as RFC 7915 section 4.1 allows).

use crate::checksum::{
    fold, is_partial, l4_full, pseudo_header_v4, pseudo_header_v6, sum, update_pseudo,
};
use crate::wire::{ethernet, get_u16, ipv4, ipv6, sctp, set_u16, tcp, udp, WireError};
use std::net::{Ipv4Addr, Ipv6Addr};

const ETH: usize = ethernet::HEADER_LEN;
const V4: usize = ipv4::MIN_HEADER_LEN;
const V6: usize = ipv6::HEADER_LEN;
const ETHERTYPE: usize = 12;
/// The largest transport segment an IPv4 packet without options can carry.
const MAX_V4_SEGMENT: usize = u16::MAX as usize - V4;
/// Flags and fragment offset of the IPv4 header we write: DF set, no fragment. An atomic
/// datagram, so an Identification of zero is safe (RFC 6864).
const DONT_FRAGMENT: u16 = 0x4000;

/// Translates the IPv6 packet in the Ethernet frame `buf[..frame_len]` to IPv4, in place, from
/// `src` to `dst`, and returns the new frame length (20 bytes less).
///
/// The result keeps the Ethernet addresses (the caller sets them), with ethertype IPv4, an
/// IPv4 header without options (TOS = traffic class, Identification 0, DF, TTL = hop limit,
/// protocol = next header) and the transport segment, whose checksum is moved from the IPv6
/// pseudo-header to the IPv4 one. A partial checksum (offloading sender) or a zero UDP one
/// (invalid over IPv6) is computed over the segment instead, so the packet leaves complete.
/// SCTP's CRC covers no address and is left as it is.
///
/// Errors, with `buf` left untouched: `Truncated` when the frame or a header in it is cut
/// short (or `frame_len > buf.len()`); `Malformed` when it is not IPv6, the next header is not
/// TCP, UDP or SCTP (extension headers, a Fragment header, ICMPv6), or the segment is longer
/// than an IPv4 packet can carry. Never panics.
pub fn six_to_four(
    buf: &mut [u8],
    frame_len: usize,
    src: Ipv4Addr,
    dst: Ipv4Addr,
) -> Result<usize, WireError> {
    let frame = buf.get_mut(..frame_len).ok_or(WireError::Truncated)?;
    if ethernet::Frame::new_checked(&*frame)?.ethertype() != ethernet::ETHERTYPE_IPV6 {
        return Err(WireError::Malformed);
    }
    let ip = ipv6::Packet::new_checked(&frame[ETH..])?;
    let (traffic_class, hop_limit, proto) = (ip.traffic_class(), ip.hop_limit(), ip.next_header());
    let segment_len = ip.payload_len();
    if segment_len > MAX_V4_SEGMENT {
        return Err(WireError::Malformed);
    }
    let old_pseudo = pseudo_header_v6(ip.src(), ip.dst(), proto, segment_len);
    let new_pseudo = pseudo_header_v4(src, dst, proto, segment_len);
    let segment_at = ETH + V6;
    let segment = &mut frame[segment_at..segment_at + segment_len];
    move_checksum(segment, proto, old_pseudo, new_pseudo)?;

    // The segment moves toward the frame's start: see the module comment.
    frame.copy_within(segment_at..segment_at + segment_len, ETH + V4);
    let h = &mut frame[ETH..ETH + V4];
    h[0] = 0x45;
    h[1] = traffic_class;
    set_u16(h, 2, (V4 + segment_len) as u16);
    set_u16(h, 4, 0);
    set_u16(h, 6, DONT_FRAGMENT);
    h[8] = hop_limit;
    h[9] = proto;
    set_u16(h, 10, 0);
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    let c = !fold(sum(h));
    set_u16(h, 10, c);
    set_u16(frame, ETHERTYPE, ethernet::ETHERTYPE_IPV4);
    Ok(ETH + V4 + segment_len)
}

/// Translates the IPv4 packet in the Ethernet frame `buf[..frame_len]` to IPv6, in place, from
/// `src` to `dst`, and returns the new frame length.
///
/// The frame grows by `40 - IHL * 4` bytes (20 without options) and Ethernet padding after
/// the IPv4 packet is dropped: `buf` must have room for the IPv6 frame, which
/// `buf.len() >= frame_len + 20` always guarantees. The result keeps the Ethernet addresses,
/// with ethertype IPv6, an IPv6 header (traffic class = TOS, flow label 0, next header =
/// protocol, hop limit = TTL) and the transport segment with its checksum moved to the IPv6
/// pseudo-header; a partial checksum or a UDP datagram without one (zero) gets a computed one,
/// since IPv6 requires it. IPv4 options are dropped.
///
/// Errors, with `buf` left untouched: `Truncated` when the frame or a header in it is cut
/// short, `frame_len > buf.len()`, or `buf` has no room for the IPv6 frame (there is no
/// separate variant for it: `WireError` is matched exhaustively by the engine); `Malformed`
/// when it is not IPv4, its header checksum is wrong (the IPv6 header has none to keep it
/// wrong), it is a fragment (MF or an offset), or the protocol is not TCP, UDP or SCTP.
/// Never panics.
pub fn four_to_six(
    buf: &mut [u8],
    frame_len: usize,
    src: Ipv6Addr,
    dst: Ipv6Addr,
) -> Result<usize, WireError> {
    let frame = buf.get(..frame_len).ok_or(WireError::Truncated)?;
    if ethernet::Frame::new_checked(frame)?.ethertype() != ethernet::ETHERTYPE_IPV4 {
        return Err(WireError::Malformed);
    }
    let ip = ipv4::Packet::new_checked(&frame[ETH..])?;
    if fold(sum(ip.header())) != 0xffff || ip.is_fragment() {
        return Err(WireError::Malformed);
    }
    let (tos, ttl, proto) = (frame[ETH + 1], ip.ttl(), ip.protocol());
    let segment_at = ETH + ip.header_len();
    let segment_len = ip.total_len() - ip.header_len();
    let new_len = ETH + V6 + segment_len;
    if buf.len() < new_len {
        return Err(WireError::Truncated);
    }
    let old_pseudo = pseudo_header_v4(ip.src(), ip.dst(), proto, segment_len);
    let new_pseudo = pseudo_header_v6(src, dst, proto, segment_len);
    move_checksum(
        &mut buf[segment_at..segment_at + segment_len],
        proto,
        old_pseudo,
        new_pseudo,
    )?;

    // The segment moves toward the frame's end: see the module comment.
    buf.copy_within(segment_at..segment_at + segment_len, ETH + V6);
    let h = &mut buf[ETH..ETH + V6];
    h[0] = 0x60 | (tos >> 4);
    h[1] = tos << 4;
    h[2] = 0;
    h[3] = 0;
    set_u16(h, 4, segment_len as u16);
    h[6] = proto;
    h[7] = ttl;
    h[8..24].copy_from_slice(&src.octets());
    h[24..40].copy_from_slice(&dst.octets());
    set_u16(buf, ETHERTYPE, ethernet::ETHERTYPE_IPV6);
    Ok(new_len)
}

/// Moves the checksum of the transport `segment` from the pseudo-header summing to `old` to
/// the one summing to `new`, after checking the segment's header is whole. Leaves `segment`
/// untouched on error.
fn move_checksum(segment: &mut [u8], proto: u8, old: u64, new: u64) -> Result<(), WireError> {
    let field_at = match proto {
        ipv4::PROTO_TCP => {
            tcp::Segment::new_checked(&*segment)?;
            tcp::CHECKSUM
        }
        ipv4::PROTO_UDP => {
            udp::Datagram::new_checked(&*segment)?;
            udp::CHECKSUM
        }
        ipv4::PROTO_SCTP => {
            // The CRC32c covers no pseudo-header: nothing to move.
            sctp::Packet::new_checked(&*segment)?;
            return Ok(());
        }
        _ => return Err(WireError::Malformed),
    };
    let udp = proto == ipv4::PROTO_UDP;
    let current = get_u16(segment, field_at);
    // Zero: no checksum in UDP over IPv4, forbidden over IPv6; either way one is computed.
    let mut check = if (udp && current == 0) || is_partial(current, old) {
        l4_full(segment, field_at, new)
    } else {
        update_pseudo(current, old, new)
    };
    if udp && check == 0 {
        check = 0xffff;
    }
    set_u16(segment, field_at, check);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nat::l4_checksum_ok;

    // Frames built independently with scapy, which computes every checksum. Client
    // [2001:db8::2], VIP [2001:db8:100::1], our IPv4 source 198.18.31.254, endpoint
    // 198.18.31.1; ports are not translated here, so they stay as the client sent them.
    // MACs 02:..:02 -> 02:..:01 in every frame.
    const N64_SYN6: &str = "02000000000102000000000286dd600000000018064020010db800000000000000000000000220010db80100000000000000000000019c4007e4000003e8000000006002faf098c80000020405a0";
    const N64_SYN4: &str = "02000000000102000000000208004500002c0000400040066fa8c6121ffec6121f019c4007e4000003e8000000006002faf02a190000020405a0";
    const N64_SYNACK4: &str = "02000000000102000000000208004500002c123440003f065e74c6121f01c6121ffe07e49c4000002328000003e96012fe8803340000020405b4";
    const N64_SYNACK6: &str = "02000000000102000000000286dd600000000018063f20010db801000000000000000000000120010db800000000000000000000000207e49c4000002328000003e96012fe8871e30000020405b4";
    const N64_UDP6: &str = "02000000000102000000000286dd628000000012113c20010db800000000000000000000000220010db8010000000000000000000001c35000350012c3ee61207175657374696f6e";
    const N64_UDP4: &str = "020000000001020000000002080045280026000040003c11737bc6121ffec6121f01c35000350012553f61207175657374696f6e";
    const N64_UDP_REPLY4: &str = "020000000001020000000002080045b80027004d00004011ae9dc6121f01c6121ffe0035c35000137654616e20616e737765722121";
    const N64_UDP_REPLY6: &str = "02000000000102000000000286dd6b8000000013114020010db801000000000000000000000120010db80000000000000000000000020035c3500013e503616e20616e737765722121";
    const N64_PARTIAL6: &str = "02000000000102000000000286dd600000000028064020010db800000000000000000000000220010db80100000000000000000000019c4107e400000005000000075018faf05ca3000068656c6c6f20776f726c642c207061727469616c";
    const N64_PARTIAL4: &str = "02000000000102000000000208004500003c0000400040066f98c6121ffec6121f019c4107e400000005000000075018faf05bbf000068656c6c6f20776f726c642c207061727469616c";
    const N64_PARTIAL_UDP4: &str = "02000000000102000000000208004500002a0005400040116f9ac6121f01c6121ffe0035c3500016cb4b7061727469616c20616e73776572";
    const N64_PARTIAL_UDP6: &str = "02000000000102000000000286dd600000000016114020010db801000000000000000000000120010db80000000000000000000000020035c3500016ed177061727469616c20616e73776572";
    const N64_UDP_NOCHECK4: &str = "02000000000102000000000208004500001e000900004011afa2c6121f01c6121ffe0035c350000a0000686900000000000000000000000000000000";
    const N64_UDP_NOCHECK6: &str = "02000000000102000000000286dd60000000000a114020010db801000000000000000000000120010db80000000000000000000000020035c350000a77766869";
    const N64_OPTIONS4: &str = "020000000001020000000002080046000030000140004006da9ec6121f01c6121ffe9404000007e49c4000002328000003e96012fe8803340000020405b4";
    const N64_OPTIONS6: &str = "02000000000102000000000286dd600000000018064020010db801000000000000000000000120010db800000000000000000000000207e49c4000002328000003e96012fe8871e30000020405b4";
    const N64_SCTP6: &str = "02000000000102000000000286dd600000000020844020010db800000000000000000000000220010db80100000000000000000000019c4007e400000000ef57e74001000014112233440001a000000a000a00000001";
    const N64_SCTP4: &str = "0200000000010200000000020800450000340000400040846f22c6121ffec6121f019c4007e400000000ef57e74001000014112233440001a000000a000a00000001";

    const CLIENT: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
    const VIP: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 1);
    const SNAT: Ipv4Addr = Ipv4Addr::new(198, 18, 31, 254);
    const ENDPOINT: Ipv4Addr = Ipv4Addr::new(198, 18, 31, 1);

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// `frame` in a buffer with `room` bytes to spare, as a UMEM chunk would hold it.
    fn in_chunk(frame: &str, room: usize) -> (Vec<u8>, usize) {
        let mut b = hex(frame);
        let len = b.len();
        b.resize(len + room, 0xee);
        (b, len)
    }

    fn to_four(frame: &str) -> Vec<u8> {
        let (mut b, len) = in_chunk(frame, 0);
        let n = six_to_four(&mut b, len, SNAT, ENDPOINT).unwrap();
        b.truncate(n);
        b
    }

    fn to_six(frame: &str) -> Vec<u8> {
        let (mut b, len) = in_chunk(frame, 20);
        let n = four_to_six(&mut b, len, VIP, CLIENT).unwrap();
        b.truncate(n);
        b
    }

    #[test]
    fn a_v6_syn_to_the_vip_becomes_an_ipv4_syn_to_the_endpoint() {
        let out = to_four(N64_SYN6);
        assert_eq!(out, hex(N64_SYN4));
        assert!(l4_checksum_ok(&out[ETH..]));
    }

    #[test]
    fn the_endpoints_ipv4_syn_ack_becomes_ipv6_back_to_the_client() {
        let out = to_six(N64_SYNACK4);
        assert_eq!(out, hex(N64_SYNACK6));
        assert!(l4_checksum_ok(&out[ETH..]));
    }

    #[test]
    fn udp_is_translated_both_ways_with_its_traffic_class() {
        assert_eq!(to_four(N64_UDP6), hex(N64_UDP4));
        assert_eq!(to_six(N64_UDP_REPLY4), hex(N64_UDP_REPLY6));
    }

    #[test]
    fn a_partial_checksum_from_an_offloading_sender_leaves_complete() {
        assert!(
            !l4_checksum_ok(&hex(N64_PARTIAL6)[ETH..]),
            "input is partial"
        );
        assert_eq!(to_four(N64_PARTIAL6), hex(N64_PARTIAL4));
        assert!(
            !l4_checksum_ok(&hex(N64_PARTIAL_UDP4)[ETH..]),
            "input is partial"
        );
        assert_eq!(to_six(N64_PARTIAL_UDP4), hex(N64_PARTIAL_UDP6));
    }

    #[test]
    fn udp_without_a_checksum_over_ipv4_gets_one_over_ipv6_and_padding_is_dropped() {
        assert_eq!(
            hex(N64_UDP_NOCHECK4).len(),
            60,
            "padded to the Ethernet minimum"
        );
        assert_eq!(to_six(N64_UDP_NOCHECK4), hex(N64_UDP_NOCHECK6));
    }

    #[test]
    fn ipv4_options_are_dropped_and_the_frame_grows_by_less() {
        let (mut b, len) = in_chunk(N64_OPTIONS4, 16);
        let n = four_to_six(&mut b, len, VIP, CLIENT).unwrap();
        assert_eq!(n, len + 16);
        assert_eq!(b[..n], hex(N64_OPTIONS6)[..]);
    }

    #[test]
    fn sctp_keeps_its_crc_which_covers_no_address() {
        assert_eq!(to_four(N64_SCTP6), hex(N64_SCTP4));
        let (mut b, len) = in_chunk(N64_SCTP4, 20);
        let n = four_to_six(&mut b, len, CLIENT, VIP).unwrap();
        assert_eq!(b[..n], hex(N64_SCTP6)[..]);
    }

    #[test]
    fn a_round_trip_gives_back_the_original_frame() {
        for f in [N64_SYN6, N64_UDP6, N64_SCTP6] {
            let (mut b, len) = in_chunk(f, 0);
            let n = six_to_four(&mut b, len, SNAT, ENDPOINT).unwrap();
            let n = four_to_six(&mut b, n, CLIENT, VIP).unwrap();
            assert_eq!(n, len);
            assert_eq!(b, hex(f));
        }
    }

    /// Runs `f` on `frame` and checks it failed with `want`, leaving the buffer as it was.
    fn refused(
        frame: Vec<u8>,
        len: usize,
        want: WireError,
        f: fn(&mut [u8], usize) -> Result<usize, WireError>,
    ) {
        let mut b = frame.clone();
        assert_eq!(f(&mut b, len), Err(want));
        assert_eq!(b, frame, "a refused frame is left untouched");
    }

    fn six(b: &mut [u8], len: usize) -> Result<usize, WireError> {
        six_to_four(b, len, SNAT, ENDPOINT)
    }

    fn four(b: &mut [u8], len: usize) -> Result<usize, WireError> {
        four_to_six(b, len, VIP, CLIENT)
    }

    #[test]
    fn cut_frames_are_truncated_at_every_length() {
        for f in [N64_SYN6, N64_UDP6, N64_SCTP6] {
            let b = hex(f);
            for cut in 0..b.len() {
                let mut c = b.clone();
                c.truncate(cut);
                assert_eq!(six(&mut c, cut), Err(WireError::Truncated), "{cut}");
            }
            refused(b.clone(), b.len() + 1, WireError::Truncated, six);
        }
        for f in [N64_SYNACK4, N64_UDP_REPLY4, N64_SCTP4] {
            let (b, len) = in_chunk(f, 20);
            for cut in 0..len {
                let mut c = b.clone();
                c.truncate(cut + 20);
                // A frame cut inside its headers, or whose IPv4 total length overruns it.
                assert_eq!(four(&mut c, cut), Err(WireError::Truncated), "{cut}");
            }
        }
    }

    #[test]
    fn four_to_six_without_room_to_grow_is_truncated() {
        let (b, len) = in_chunk(N64_SYNACK4, 19);
        refused(b, len, WireError::Truncated, four);
    }

    #[test]
    fn a_fragment_or_a_bad_header_checksum_is_malformed() {
        for (at, v) in [(ETH + 6, 0x60), (ETH + 7, 0x01), (ETH + 10, 0x00)] {
            let (mut b, len) = in_chunk(N64_SYNACK4, 20);
            b[at] = v;
            if at != ETH + 10 {
                // Keep the header checksum right: only the fragment fields are wrong.
                set_u16(&mut b, ETH + 10, 0);
                let c = !fold(sum(&b[ETH..ETH + V4]));
                set_u16(&mut b, ETH + 10, c);
            }
            refused(b, len, WireError::Malformed, four);
        }
    }

    #[test]
    fn other_protocols_and_the_wrong_ethertype_are_malformed() {
        for nh in [ipv6::PROTO_FRAGMENT, ipv6::PROTO_ICMPV6, 0, 43, 60] {
            let mut b = hex(N64_SYN6);
            b[ETH + 6] = nh;
            let len = b.len();
            refused(b, len, WireError::Malformed, six);
        }
        let b = hex(N64_SYN6);
        refused(b.clone(), b.len(), WireError::Malformed, four);
        let (b, len) = in_chunk(N64_SYNACK4, 20);
        refused(b.clone(), len, WireError::Malformed, six);
        let mut icmp = b;
        icmp[ETH + 9] = ipv4::PROTO_ICMP;
        set_u16(&mut icmp, ETH + 10, 0);
        let c = !fold(sum(&icmp[ETH..ETH + V4]));
        set_u16(&mut icmp, ETH + 10, c);
        refused(icmp, len, WireError::Malformed, four);
    }

    #[test]
    fn an_ipv6_payload_too_long_for_ipv4_is_malformed() {
        let mut b = hex(N64_UDP6);
        b.resize(ETH + V6 + 65535, 0);
        let len = b.len();
        set_u16(&mut b, ETH + 4, 65535);
        set_u16(&mut b, ETH + V6 + 4, 65535);
        refused(b, len, WireError::Malformed, six);
    }
}
