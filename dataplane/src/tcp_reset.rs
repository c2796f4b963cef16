//! A TCP RST answering a segment, built in the segment's own frame: how oxlb tells a client
//! that its connection is over (its endpoint went down and the service ends such flows).
//!
//! The answer is what a host sends for a segment that belongs to no connection (RFC 9293
//! section 3.10.7.1): from the address and port the segment was sent to, to its sender; if the
//! segment carries an ACK, the RST takes its sequence number from that acknowledgment,
//! otherwise it has sequence 0 and acknowledges everything the segment occupied. No options,
//! no payload; every checksum computed in full (the answer is 54 or 74 bytes).

use crate::checksum::{fold, pseudo_header_v4, pseudo_header_v6, sum};
use crate::icmp6_error::{write_v4_header, write_v6_header};
use crate::wire::{ethernet, ipv4, ipv6, set_u16, tcp, WireError};

const ETH: usize = ethernet::HEADER_LEN;
const TCP_LEN: usize = tcp::MIN_HEADER_LEN;
/// IPv4's "don't fragment" bit, in the flags and fragment offset field.
const DONT_FRAGMENT: u16 = 0x4000;
/// The TTL or hop limit of the answer, as the kernel's default.
const HOPS: u8 = 64;

/// Rewrites the TCP segment in `frame` into the RST answering it (MACs swapped, so it leaves
/// by the interface it came in on) and returns the answer's length, never more than the
/// segment's. `Malformed` for a frame that is not TCP or is itself a RST (a RST is never
/// answered); `Truncated` when its headers are cut. On any error the frame is untouched.
pub fn answer_in_place(frame: &mut [u8]) -> Result<usize, WireError> {
    let eth = ethernet::Frame::new_checked(&*frame)?;
    let (peer_mac, own_mac) = (eth.src(), eth.dst());
    let answer_len = match eth.ethertype() {
        ethernet::ETHERTYPE_IPV4 => {
            let ip = ipv4::Packet::new_checked(&frame[ETH..])?;
            if ip.protocol() != ipv4::PROTO_TCP || ip.is_fragment() {
                return Err(WireError::Malformed);
            }
            let (src, dst) = (ip.src(), ip.dst());
            let l4_at = ETH + ip.header_len();
            let seg = Segment::read(&frame[l4_at..ETH + ip.total_len()])?;
            let ip_at = ETH;
            let tcp_at = ip_at + ipv4::MIN_HEADER_LEN;
            write_v4_header(
                &mut frame[ip_at..tcp_at],
                0,
                (ipv4::MIN_HEADER_LEN + TCP_LEN) as u16,
                DONT_FRAGMENT,
                HOPS,
                ipv4::PROTO_TCP,
                dst,
                src,
            );
            let pseudo = pseudo_header_v4(dst, src, ipv4::PROTO_TCP, TCP_LEN);
            seg.write_reset(&mut frame[tcp_at..tcp_at + TCP_LEN], pseudo);
            tcp_at + TCP_LEN
        }
        ethernet::ETHERTYPE_IPV6 => {
            let ip = ipv6::Packet::new_checked(&frame[ETH..])?;
            let upper = ip.upper_layer().map_err(|_| WireError::Malformed)?;
            if upper.proto != ipv6::PROTO_TCP || upper.fragment.is_some() {
                return Err(WireError::Malformed);
            }
            let (src, dst) = (ip.src(), ip.dst());
            let l4_at = ETH + upper.offset;
            let seg = Segment::read(&frame[l4_at..ETH + ip.total_len()])?;
            // The answer carries none of the segment's extension headers: the TCP header
            // moves up behind the fixed header (read above, written below).
            let ip_at = ETH;
            let tcp_at = ip_at + ipv6::HEADER_LEN;
            write_v6_header(
                &mut frame[ip_at..tcp_at],
                0,
                TCP_LEN as u16,
                ipv6::PROTO_TCP,
                HOPS,
                dst,
                src,
            );
            let pseudo = pseudo_header_v6(dst, src, ipv6::PROTO_TCP, TCP_LEN);
            seg.write_reset(&mut frame[tcp_at..tcp_at + TCP_LEN], pseudo);
            tcp_at + TCP_LEN
        }
        _ => return Err(WireError::Malformed),
    };
    let mut eth = ethernet::Frame::new_checked(&mut frame[..answer_len])?;
    eth.set_dst(peer_mac);
    eth.set_src(own_mac);
    Ok(answer_len)
}

/// What the RST needs of the segment it answers, read before the frame is rewritten.
struct Segment {
    src_port: u16,
    dst_port: u16,
    seq: u32,
    ack: Option<u32>,
    /// Sequence space the segment occupied: its payload, plus one each for SYN and FIN.
    occupied: u32,
}

impl Segment {
    fn read(l4: &[u8]) -> Result<Segment, WireError> {
        let s = tcp::Segment::new_checked(l4)?;
        let flags = s.flags();
        if flags & tcp::FLAG_RST != 0 {
            return Err(WireError::Malformed);
        }
        let data_offset = usize::from(l4[12] >> 4) * 4;
        let payload = l4.len().saturating_sub(data_offset) as u32;
        let controls =
            u32::from(flags & tcp::FLAG_SYN != 0) + u32::from(flags & tcp::FLAG_FIN != 0);
        let word = |at: usize| u32::from_be_bytes(l4[at..at + 4].try_into().expect("4 bytes"));
        Ok(Segment {
            src_port: s.src_port(),
            dst_port: s.dst_port(),
            seq: word(4),
            ack: (flags & tcp::FLAG_ACK != 0).then(|| word(8)),
            occupied: payload + controls,
        })
    }

    /// Writes the RST's 20-byte TCP header into `h` with its checksum over `pseudo`.
    fn write_reset(&self, h: &mut [u8], pseudo: u64) {
        let (seq, ack, flags) = match self.ack {
            Some(ack) => (ack, 0, tcp::FLAG_RST),
            None => (
                0,
                self.seq.wrapping_add(self.occupied),
                tcp::FLAG_RST | tcp::FLAG_ACK,
            ),
        };
        set_u16(h, 0, self.dst_port);
        set_u16(h, 2, self.src_port);
        h[4..8].copy_from_slice(&seq.to_be_bytes());
        h[8..12].copy_from_slice(&ack.to_be_bytes());
        h[12] = ((TCP_LEN / 4) as u8) << 4;
        h[13] = flags;
        // Window, checksum, urgent pointer.
        h[14..20].fill(0);
        let c = !fold(sum(h) + pseudo);
        set_u16(h, tcp::CHECKSUM, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nat::l4_checksum_ok;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
    const LB_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

    /// A client's segment to the VIP: `flags`, seq 1000, ack 5000 (if ACK), `payload` bytes,
    /// and for IPv6 `ext` bytes of destination options before TCP.
    fn segment(v6: bool, flags: u8, payload: usize, ext: usize) -> Vec<u8> {
        let mut tcp = vec![0u8; 20 + payload];
        set_u16(&mut tcp, 0, 40000);
        set_u16(&mut tcp, 2, 2020);
        tcp[4..8].copy_from_slice(&1000u32.to_be_bytes());
        if flags & tcp::FLAG_ACK != 0 {
            tcp[8..12].copy_from_slice(&5000u32.to_be_bytes());
        }
        tcp[12] = 5 << 4;
        tcp[13] = flags;
        let mut f = Vec::new();
        f.extend_from_slice(&LB_MAC);
        f.extend_from_slice(&CLIENT_MAC);
        if v6 {
            f.extend_from_slice(&ethernet::ETHERTYPE_IPV6.to_be_bytes());
            let next = if ext > 0 {
                ipv6::PROTO_DEST_OPTIONS
            } else {
                ipv6::PROTO_TCP
            };
            let mut h = vec![0x60, 0, 0, 0, 0, 0, next, 64];
            set_u16(&mut h, 4, (ext + tcp.len()) as u16);
            h.extend_from_slice(&"fd00::2".parse::<Ipv6Addr>().unwrap().octets());
            h.extend_from_slice(&"fd00:100::1".parse::<Ipv6Addr>().unwrap().octets());
            f.extend_from_slice(&h);
            if ext > 0 {
                let mut opts = vec![0u8; ext];
                opts[0] = ipv6::PROTO_TCP;
                opts[1] = (ext / 8 - 1) as u8;
                // PadN over the rest.
                opts[2] = 1;
                opts[3] = (ext - 4) as u8;
                f.extend_from_slice(&opts);
            }
        } else {
            f.extend_from_slice(&ethernet::ETHERTYPE_IPV4.to_be_bytes());
            let mut h = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 6, 0, 0];
            set_u16(&mut h, 2, (20 + tcp.len()) as u16);
            h.extend_from_slice(&Ipv4Addr::new(198, 18, 0, 2).octets());
            h.extend_from_slice(&Ipv4Addr::new(198, 18, 100, 1).octets());
            let c = crate::checksum::ipv4_header(&h);
            set_u16(&mut h, 10, c);
            f.extend_from_slice(&h);
        }
        f.extend_from_slice(&tcp);
        f
    }

    fn tcp_of(frame: &[u8], v6: bool) -> &[u8] {
        &frame[ETH + if v6 { 40 } else { 20 }..]
    }

    #[test]
    fn an_ack_is_answered_with_a_rst_from_the_vip_at_the_acknowledged_sequence() {
        for v6 in [false, true] {
            let mut f = segment(v6, tcp::FLAG_ACK | 0x08, 100, 0);
            let len = answer_in_place(&mut f).unwrap();
            let f = &f[..len];
            assert_eq!(len, if v6 { 74 } else { 54 });
            assert_eq!((&f[0..6], &f[6..12]), (&CLIENT_MAC[..], &LB_MAC[..]));
            let t = tcp_of(f, v6);
            assert_eq!((get(t, 0), get(t, 2)), (2020, 40000), "ports swapped");
            assert_eq!(&t[4..8], &5000u32.to_be_bytes(), "seq = the segment's ack");
            assert_eq!(t[13], tcp::FLAG_RST);
            assert!(l4_checksum_ok(&f[ETH..]), "v6={v6}: checksum");
            if !v6 {
                let ip = ipv4::Packet::new_checked(&f[ETH..]).unwrap();
                assert_eq!(ip.src(), Ipv4Addr::new(198, 18, 100, 1));
                assert_eq!(ip.dst(), Ipv4Addr::new(198, 18, 0, 2));
                assert_eq!(ip.total_len(), 40);
                assert_eq!(crate::checksum::ipv4_header(ip.header()), ip.checksum());
            } else {
                let ip = ipv6::Packet::new_checked(&f[ETH..]).unwrap();
                assert_eq!(ip.src(), "fd00:100::1".parse::<Ipv6Addr>().unwrap());
                assert_eq!(ip.payload_len(), 20);
            }
        }
    }

    #[test]
    fn a_segment_without_ack_is_answered_with_rst_ack_covering_what_it_occupied() {
        // A SYN with 10 bytes of data and FIN: 12 sequence numbers from 1000.
        let mut f = segment(false, tcp::FLAG_SYN | tcp::FLAG_FIN, 10, 0);
        let len = answer_in_place(&mut f).unwrap();
        let t = tcp_of(&f[..len], false);
        assert_eq!(&t[4..8], &0u32.to_be_bytes());
        assert_eq!(&t[8..12], &1012u32.to_be_bytes());
        assert_eq!(t[13], tcp::FLAG_RST | tcp::FLAG_ACK);
        assert!(l4_checksum_ok(&f[ETH..len]));
    }

    #[test]
    fn an_ipv6_segment_behind_extension_headers_is_answered_without_them() {
        let mut f = segment(true, tcp::FLAG_ACK, 0, 8);
        let len = answer_in_place(&mut f).unwrap();
        assert_eq!(len, 74);
        let ip = ipv6::Packet::new_checked(&f[ETH..len]).unwrap();
        assert_eq!(ip.next_header(), ipv6::PROTO_TCP);
        assert!(l4_checksum_ok(&f[ETH..len]));
        assert_eq!(&tcp_of(&f[..len], true)[4..8], &5000u32.to_be_bytes());
    }

    #[test]
    fn a_rst_is_never_answered_and_cut_frames_are_refused_untouched() {
        let mut rst = segment(false, tcp::FLAG_RST | tcp::FLAG_ACK, 0, 0);
        let before = rst.clone();
        assert_eq!(answer_in_place(&mut rst), Err(WireError::Malformed));
        assert_eq!(rst, before);
        let whole = segment(true, tcp::FLAG_ACK, 0, 8);
        for n in 0..whole.len() {
            let mut cut = whole[..n].to_vec();
            assert!(answer_in_place(&mut cut).is_err(), "cut at {n}");
            assert_eq!(cut, whole[..n], "cut at {n} was written");
        }
    }

    fn get(b: &[u8], at: usize) -> u16 {
        u16::from_be_bytes([b[at], b[at + 1]])
    }
}
