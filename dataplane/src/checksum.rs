//! Internet checksums (RFC 1071): full sums, incremental updates (RFC 1624) and detection of the
//! partial checksums that offloading senders leave in packets.
//!
//! A local sender on veth (and any sender relying on checksum offload) hands over TCP/UDP
//! packets whose checksum field holds only the folded pseudo-header sum, because the "hardware"
//! was supposed to finish it. An incremental update of such a value stays wrong, so the NAT code
//! asks [`is_partial`] first and recomputes over the whole segment only in that case.

use std::net::{Ipv4Addr, Ipv6Addr};

/// One's-complement sum of `data` as big-endian 16-bit words (odd tail padded with zero),
/// not yet folded. Sums 32-bit words: the folded result is the same and the loop is shorter.
pub fn sum(data: &[u8]) -> u64 {
    let mut acc: u64 = 0;
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        acc += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    let tail = words.remainder();
    let mut i = 0;
    if tail.len() >= 2 {
        acc += u64::from(u16::from_be_bytes([tail[0], tail[1]]));
        i = 2;
    }
    if i < tail.len() {
        acc += u64::from(tail[i]) << 8;
    }
    acc
}

/// Folds a wide sum to 16 bits with end-around carry.
pub fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// Sum of the IPv4 pseudo-header that TCP and UDP checksums cover.
pub fn pseudo_header_v4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4_len: usize) -> u64 {
    sum(&src.octets()) + sum(&dst.octets()) + u64::from(proto) + l4_len as u64
}

/// The IPv4 header checksum of `header` (its checksum field must be zero or is ignored by
/// passing the header with the field zeroed).
pub fn ipv4_header(header: &[u8]) -> u16 {
    // The checksum field (bytes 10..12) is excluded by subtracting it out of the sum.
    let field = u64::from(u16::from_be_bytes([header[10], header[11]]));
    !fold(sum(header) + (0xffff - field))
}

/// True when `field` is what an offloading sender leaves: the pseudo-header sum, folded and not
/// complemented. A complete checksum equals it only by a 1-in-65536 coincidence, and then a
/// full recompute is still correct.
pub fn is_partial(field: u16, pseudo: u64) -> bool {
    let p = fold(pseudo);
    field == p || (p == 0xffff && field == 0) || (p == 0 && field == 0xffff)
}

/// Full L4 checksum over `segment` whose checksum field (at `field_at`) is ignored.
pub fn l4_full(segment: &[u8], field_at: usize, pseudo: u64) -> u16 {
    let field = u64::from(u16::from_be_bytes([
        segment[field_at],
        segment[field_at + 1],
    ]));
    !fold(pseudo + sum(segment) + (0xffff - field))
}

/// RFC 1624 eqn. 3: the checksum after a 16-bit word changed from `old` to `new`.
pub fn update16(check: u16, old: u16, new: u16) -> u16 {
    !fold(u64::from(!check) + u64::from(!old) + u64::from(new))
}

/// The checksum after a 32-bit field (an IPv4 address) changed.
pub fn update32(check: u16, old: [u8; 4], new: [u8; 4]) -> u16 {
    let hi = update16(
        check,
        u16::from_be_bytes([old[0], old[1]]),
        u16::from_be_bytes([new[0], new[1]]),
    );
    update16(
        hi,
        u16::from_be_bytes([old[2], old[3]]),
        u16::from_be_bytes([new[2], new[3]]),
    )
}

/// Sum of the IPv6 pseudo-header (RFC 8200 section 8.1) that TCP, UDP and ICMPv6 checksums
/// cover; `l4_len` is the upper-layer length, a 32-bit field there.
pub fn pseudo_header_v6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, l4_len: usize) -> u64 {
    sum(&src.octets()) + sum(&dst.octets()) + u64::from(next_header) + l4_len as u64
}

/// The checksum after a 128-bit field (an IPv6 address) changed: RFC 1624 eqn. 3 over its
/// eight 16-bit words at once.
pub fn update128(check: u16, old: [u8; 16], new: [u8; 16]) -> u16 {
    let mut acc = u64::from(!check);
    for (o, n) in old.chunks_exact(2).zip(new.chunks_exact(2)) {
        acc += u64::from(!u16::from_be_bytes([o[0], o[1]]));
        acc += u64::from(u16::from_be_bytes([n[0], n[1]]));
    }
    !fold(acc)
}

/// The checksum after the pseudo-header summing to `old` was replaced by one summing to `new`
/// (an address family translation: the segment is the same, its pseudo-header is not).
pub fn update_pseudo(check: u16, old: u64, new: u64) -> u16 {
    !fold(u64::from(!check) + u64::from(!fold(old)) + new)
}

#[cfg(test)]
mod tests {
    use super::*;

    // A well-known example header whose checksum field holds 0xb861.
    const HDR: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];

    #[test]
    fn ipv4_header_checksum_matches_a_captured_header() {
        assert_eq!(ipv4_header(&HDR), 0xb861);
    }

    #[test]
    fn an_incremental_update_equals_a_full_recompute() {
        let mut h = HDR;
        let c = ipv4_header(&h);
        let old = [h[16], h[17], h[18], h[19]];
        h[16..20].copy_from_slice(&[198, 18, 31, 1]);
        assert_eq!(update32(c, old, [198, 18, 31, 1]), ipv4_header(&h));
    }

    #[test]
    fn an_odd_length_is_padded_with_a_zero_byte() {
        assert_eq!(sum(&[0x01, 0x02, 0x03]), 0x0102 + 0x0300);
    }

    #[test]
    fn a_pseudo_header_only_checksum_is_recognised_as_partial() {
        let p = pseudo_header_v4(
            Ipv4Addr::new(198, 18, 0, 2),
            Ipv4Addr::new(198, 18, 100, 1),
            6,
            40,
        );
        assert!(is_partial(fold(p), p));
        assert!(!is_partial(fold(p).wrapping_add(1), p));
    }

    #[test]
    fn an_incremental_ipv6_address_update_equals_a_full_recompute() {
        let old: Ipv6Addr = "2001:db8::2".parse().unwrap();
        let new: Ipv6Addr = "fd00:ffff:1234::ffff:1".parse().unwrap();
        let dst: Ipv6Addr = "2001:db8:100::1".parse().unwrap();
        let seg = [0x9cu8, 0x40, 0x07, 0xe4, 0, 0, 0, 0, 1, 2, 3];
        let c = l4_full(&seg, 4, pseudo_header_v6(old, dst, 17, seg.len()));
        let want = l4_full(&seg, 4, pseudo_header_v6(new, dst, 17, seg.len()));
        assert_eq!(update128(c, old.octets(), new.octets()), want);
    }

    #[test]
    fn swapping_a_v6_pseudo_header_for_a_v4_one_equals_a_full_recompute() {
        let seg = [
            0x9cu8, 0x40, 0x07, 0xe4, 0, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 7,
        ];
        let p6 = pseudo_header_v6(
            "2001:db8::2".parse().unwrap(),
            "2001:db8:100::1".parse().unwrap(),
            6,
            seg.len(),
        );
        let p4 = pseudo_header_v4(
            Ipv4Addr::new(198, 18, 31, 254),
            Ipv4Addr::new(198, 18, 31, 1),
            6,
            seg.len(),
        );
        let c6 = l4_full(&seg, 4, p6);
        assert_eq!(update_pseudo(c6, p6, p4), l4_full(&seg, 4, p4));
        assert_eq!(update_pseudo(l4_full(&seg, 4, p4), p4, p6), c6);
    }
}
