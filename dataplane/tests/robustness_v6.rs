//! Any bytes in: the IPv6 building blocks (NAT64 translation, NAT66 rewrite, checksum
//! completion) never panic, refuse what they cannot handle with an error, and whatever they
//! accept from a valid packet leaves valid.
//!
//! Deterministic (a fixed-seed generator) so a failure reproduces.

mod common;
use common::Rng;

use oxlb_dataplane::checksum;
use oxlb_dataplane::nat::{complete_checksum_v6, l4_checksum_ok, rewrite_v6, Rewrite6};
use oxlb_dataplane::nat64::{four_to_six, six_to_four};
use oxlb_dataplane::snapshot::Proto;
use std::net::{Ipv4Addr, Ipv6Addr};

const ETH: usize = 14;
const CLIENT: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
const VIP: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 1);
const SNAT: Ipv4Addr = Ipv4Addr::new(198, 18, 31, 254);
const ENDPOINT: Ipv4Addr = Ipv4Addr::new(198, 18, 31, 1);

/// How the sender left the transport checksum.
#[derive(Clone, Copy)]
enum Check {
    Complete,
    Partial,
    /// UDP only: "no checksum" over IPv4, forbidden (but seen) over IPv6.
    Zero,
}

fn random_check(rng: &mut Rng, udp: bool) -> Check {
    match rng.below(if udp { 3 } else { 2 }) {
        0 => Check::Complete,
        1 => Check::Partial,
        _ => Check::Zero,
    }
}

/// A transport segment (TCP with options or UDP) with random ports and payload, whose
/// checksum is left to `finish`.
fn segment(rng: &mut Rng, udp: bool) -> (Vec<u8>, usize) {
    let opt_words = rng.below(3) as usize;
    let payload = rng.below(1400) as usize;
    let hdr = if udp { 8 } else { 20 + 4 * opt_words };
    let mut l4 = vec![0u8; hdr + payload];
    l4[0..2].copy_from_slice(&(1024 + rng.below(60000) as u16).to_be_bytes());
    l4[2..4].copy_from_slice(&2020u16.to_be_bytes());
    let field_at = if udp {
        l4[4..6].copy_from_slice(&((hdr + payload) as u16).to_be_bytes());
        6
    } else {
        l4[12] = ((5 + opt_words) as u8) << 4;
        l4[13] = rng.next() as u8;
        16
    };
    for b in &mut l4[hdr..] {
        *b = rng.next() as u8;
    }
    (l4, field_at)
}

fn finish(l4: &mut [u8], field_at: usize, pseudo: u64, how: Check) {
    let c = match how {
        Check::Complete => checksum::l4_full(l4, field_at, pseudo),
        Check::Partial => checksum::fold(pseudo),
        Check::Zero => 0,
    };
    l4[field_at..field_at + 2].copy_from_slice(&c.to_be_bytes());
}

/// A well-formed Ethernet + IPv6 + TCP/UDP frame from the client to the VIP.
fn plausible_v6(rng: &mut Rng) -> Vec<u8> {
    let udp = rng.below(2) == 0;
    let (mut l4, field_at) = segment(rng, udp);
    let proto = if udp { 17 } else { 6 };
    let pseudo = checksum::pseudo_header_v6(CLIENT, VIP, proto, l4.len());
    let how = random_check(rng, udp);
    finish(&mut l4, field_at, pseudo, how);
    let mut f = vec![0u8; ETH + 40];
    f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
    let ip = &mut f[ETH..];
    ip[0] = 0x60 | (rng.below(16) as u8);
    ip[1] = rng.next() as u8;
    ip[4..6].copy_from_slice(&(l4.len() as u16).to_be_bytes());
    ip[6] = proto;
    ip[7] = rng.next() as u8;
    ip[8..24].copy_from_slice(&CLIENT.octets());
    ip[24..40].copy_from_slice(&VIP.octets());
    f.extend_from_slice(&l4);
    f
}

/// A well-formed Ethernet + IPv4 (options at random) + TCP/UDP frame from the endpoint,
/// padded to the Ethernet minimum.
fn plausible_v4(rng: &mut Rng) -> Vec<u8> {
    let udp = rng.below(2) == 0;
    let (mut l4, field_at) = segment(rng, udp);
    let proto = if udp { 17 } else { 6 };
    let pseudo = checksum::pseudo_header_v4(ENDPOINT, SNAT, proto, l4.len());
    let how = random_check(rng, udp);
    finish(&mut l4, field_at, pseudo, how);
    let ihl = 20 + 4 * rng.below(3) as usize;
    let mut f = vec![0u8; ETH + ihl];
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[ETH..];
    ip[0] = 0x40 | (ihl / 4) as u8;
    ip[1] = rng.next() as u8;
    ip[2..4].copy_from_slice(&((ihl + l4.len()) as u16).to_be_bytes());
    ip[4] = rng.next() as u8;
    ip[6] = if rng.below(2) == 0 { 0x40 } else { 0 };
    ip[8] = rng.next() as u8;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&ENDPOINT.octets());
    ip[16..20].copy_from_slice(&SNAT.octets());
    for b in &mut ip[20..ihl] {
        *b = 1; // NOP options
    }
    let c = checksum::ipv4_header(&ip[..ihl]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&l4);
    if f.len() < 60 {
        f.resize(60, 0);
    }
    f
}

/// Damages a frame: flipped bits, a cut, or garbage in a length or version field.
fn damage(rng: &mut Rng, mut f: Vec<u8>) -> Vec<u8> {
    match rng.below(3) {
        0 => {
            for _ in 0..=rng.below(4) {
                let i = rng.below(f.len() as u64) as usize;
                f[i] ^= 1 << rng.below(8);
            }
        }
        1 => f.truncate(rng.below(f.len() as u64) as usize),
        _ => {
            // Version/IHL, IPv4 total length, IPv6 payload length / next header, flags,
            // TCP data offset or UDP length behind either header.
            let at = [14, 16, 17, 18, 19, 20, 21, 46, 58, 66][rng.below(10) as usize];
            if at < f.len() {
                f[at] = rng.next() as u8;
            }
        }
    }
    f
}

/// True when the frame's transport checksum is complete and right, or one the translation is
/// meant to complete (partial, or a zero UDP checksum).
fn acceptable(ip: &[u8]) -> bool {
    if l4_checksum_ok(ip) {
        return true;
    }
    let mut copy = ip.to_vec();
    let proto = if ip.first().is_some_and(|b| b >> 4 == 6) {
        ip.get(6)
    } else {
        ip.get(9)
    };
    let Some(proto) = proto.copied().and_then(Proto::from_ip_proto) else {
        return false;
    };
    if proto == Proto::Udp && ip[0] >> 4 == 4 {
        // "No checksum" over IPv4: valid there, and the translation computes one.
        let at = usize::from(ip[0] & 0x0f) * 4 + 6;
        if ip.get(at..at + 2) == Some(&[0, 0][..]) {
            return true;
        }
    }
    let completed = if ip[0] >> 4 == 6 {
        complete_checksum_v6(&mut copy, proto)
    } else {
        oxlb_dataplane::nat::complete_checksum_v4(&mut copy, proto)
    };
    completed.is_ok() && l4_checksum_ok(&copy)
}

fn random_bytes(rng: &mut Rng) -> Vec<u8> {
    let mut f: Vec<u8> = (0..rng.below(200)).map(|_| rng.next() as u8).collect();
    // Often a plausible ethertype and version, so the parsers get past the first checks.
    if f.len() > 14 && rng.below(2) == 0 {
        let v6 = rng.below(2) == 0;
        let et: u16 = if v6 { 0x86dd } else { 0x0800 };
        f[12..14].copy_from_slice(&et.to_be_bytes());
        f[14] = if v6 { 0x60 | (f[14] & 0x0f) } else { 0x45 };
    }
    f
}

#[test]
fn six_to_four_never_panics_and_what_it_accepts_leaves_valid() {
    let mut rng = Rng(0x6464_0006);
    let (mut translated, mut checked) = (0, 0);
    for _ in 0..20_000 {
        let f = match rng.below(3) {
            0 => plausible_v6(&mut rng),
            1 => {
                let f = plausible_v6(&mut rng);
                damage(&mut rng, f)
            }
            _ => random_bytes(&mut rng),
        };
        let arrived_valid = f.len() > ETH && acceptable(&f[ETH..]);
        let mut buf = f.clone();
        // Sometimes a frame length past the buffer, as a caller's bug would give.
        let len = f.len() + usize::from(rng.below(8) == 0);
        let Ok(n) = six_to_four(&mut buf, len, SNAT, ENDPOINT) else {
            assert_eq!(buf, f, "a refused frame is left untouched");
            continue;
        };
        translated += 1;
        if arrived_valid {
            checked += 1;
            let ip = &buf[ETH..n];
            assert_eq!(checksum::fold(checksum::sum(&ip[..20])), 0xffff);
            assert!(l4_checksum_ok(ip), "left invalid: {:02x?}", &buf[..n]);
            // And back again: the original addresses, still valid.
            let back = four_to_six(&mut buf, n, CLIENT, VIP).expect("our own output translates");
            assert!(l4_checksum_ok(&buf[ETH..back]));
        }
    }
    assert!(translated > 5000, "only {translated} frames translated");
    assert!(checked > 4000, "only {checked} valid frames checked");
}

#[test]
fn four_to_six_never_panics_and_what_it_accepts_leaves_valid() {
    let mut rng = Rng(0x6464_0004);
    let (mut translated, mut checked) = (0, 0);
    for _ in 0..20_000 {
        let f = match rng.below(3) {
            0 => plausible_v4(&mut rng),
            1 => {
                let f = plausible_v4(&mut rng);
                damage(&mut rng, f)
            }
            _ => random_bytes(&mut rng),
        };
        let arrived_valid = f.len() > ETH && acceptable(&f[ETH..]);
        let mut buf = f.clone();
        // Mostly the room a UMEM chunk leaves; sometimes too little.
        let room = if rng.below(4) == 0 { rng.below(20) } else { 20 };
        buf.resize(f.len() + room as usize, 0xee);
        let before = buf.clone();
        let len = f.len() + usize::from(rng.below(16) == 0) * buf.len();
        let Ok(n) = four_to_six(&mut buf, len, VIP, CLIENT) else {
            assert_eq!(buf, before, "a refused frame is left untouched");
            continue;
        };
        translated += 1;
        if arrived_valid {
            checked += 1;
            assert!(
                l4_checksum_ok(&buf[ETH..n]),
                "left invalid: {:02x?}",
                &buf[..n]
            );
        }
    }
    assert!(translated > 5000, "only {translated} frames translated");
    assert!(checked > 4000, "only {checked} valid frames checked");
}

#[test]
fn rewrite_v6_never_panics_and_keeps_a_valid_packet_valid() {
    let mut rng = Rng(0x6666_0066);
    let (mut rewritten, mut checked) = (0, 0);
    for _ in 0..20_000 {
        let f = match rng.below(3) {
            0 => plausible_v6(&mut rng),
            1 => {
                let f = plausible_v6(&mut rng);
                damage(&mut rng, f)
            }
            _ => random_bytes(&mut rng),
        };
        let Some(ip) = f.get(ETH..) else { continue };
        let arrived_valid = acceptable(ip);
        let mut p = ip.to_vec();
        let proto = [Proto::Tcp, Proto::Udp, Proto::Sctp][rng.below(3) as usize];
        let port = rng.next() as u16;
        let rw = if rng.below(2) == 0 {
            Rewrite6::Source(Ipv6Addr::from(rng.next() as u128), port)
        } else {
            Rewrite6::Destination(Ipv6Addr::from(u128::from(rng.next()) << 64), port)
        };
        let mut q = p.clone();
        let _ = complete_checksum_v6(&mut q, proto);
        let before = p.clone();
        if rewrite_v6(&mut p, proto, rw).is_err() {
            assert_eq!(p, before, "a refused packet is left untouched");
        } else {
            rewritten += 1;
            if arrived_valid && proto != Proto::Sctp {
                checked += 1;
                assert!(l4_checksum_ok(&p), "left invalid: {p:02x?}");
            }
        }
    }
    assert!(rewritten > 3000, "only {rewritten} packets rewritten");
    assert!(checked > 2000, "only {checked} valid packets checked");
}

/// `plausible_v6` with one to three extension headers (hop-by-hop, destination options, a
/// routing header, sometimes with segments left) between the fixed and transport headers.
/// The transport checksum covers the transport header only, as RFC 8200 says.
fn plausible_v6_extended(rng: &mut Rng) -> Vec<u8> {
    let f = plausible_v6(rng);
    let (head, l4) = f.split_at(ETH + 40);
    let mut head = head.to_vec();
    let mut ext = Vec::new();
    let mut next = head[ETH + 6];
    for _ in 0..=rng.below(3) {
        let kind = [0u8, 60, 43][rng.below(3) as usize];
        let units = rng.below(3) as usize;
        let mut h = vec![0u8; (units + 1) * 8];
        h[0] = next;
        h[1] = units as u8;
        if kind == 43 {
            // Segments left: mostly none, the case the engine rewrites.
            h[3] = u8::from(rng.below(4) == 0);
        } else {
            // PadN over the options area, so the header is well-formed.
            h[2] = 1;
            h[3] = (h.len() - 4) as u8;
        }
        // Headers are built from the transport header outwards.
        h.extend_from_slice(&ext);
        ext = h;
        next = kind;
    }
    head[ETH + 6] = next;
    let payload = (ext.len() + l4.len()) as u16;
    head[ETH + 4..ETH + 6].copy_from_slice(&payload.to_be_bytes());
    head.extend_from_slice(&ext);
    head.extend_from_slice(l4);
    head
}

#[test]
fn rewrite_v6_through_extension_headers_never_panics_and_keeps_a_valid_packet_valid() {
    let mut rng = Rng(0x6e78_0044);
    let (mut rewritten, mut checked) = (0, 0);
    for _ in 0..20_000 {
        let intact = rng.below(2) == 0;
        let f = plausible_v6_extended(&mut rng);
        let f = if intact { f } else { damage(&mut rng, f) };
        let Some(ip) = f.get(ETH..) else { continue };
        let mut p = ip.to_vec();
        let proto = if p.len() > 40 {
            let ip = oxlb_dataplane::wire::ipv6::Packet::new_checked(&p[..]);
            ip.ok()
                .and_then(|ip| ip.upper_layer().ok())
                .and_then(|u| Proto::from_ip_proto(u.proto))
        } else {
            None
        };
        let proto = proto.unwrap_or(Proto::Tcp);
        // A sender's partial or zero checksum completed first, through the headers.
        let completed = complete_checksum_v6(&mut p, proto).is_ok();
        let arrived_valid = intact && completed && l4_checksum_ok(&p);
        let port = rng.next() as u16;
        let rw = if rng.below(2) == 0 {
            Rewrite6::Source(Ipv6Addr::from(rng.next() as u128), port)
        } else {
            Rewrite6::Destination(Ipv6Addr::from(u128::from(rng.next()) << 64), port)
        };
        let before = p.clone();
        if rewrite_v6(&mut p, proto, rw).is_err() {
            assert_eq!(p, before, "a refused packet is left untouched");
            continue;
        }
        rewritten += 1;
        let ip = oxlb_dataplane::wire::ipv6::Packet::new_checked(&before[..]).unwrap();
        let at = ip.upper_layer().unwrap().offset;
        assert_eq!(
            p[40..at],
            before[40..at],
            "extension headers stay as they came"
        );
        if arrived_valid {
            checked += 1;
            assert!(l4_checksum_ok(&p), "left invalid: {p:02x?}");
        }
    }
    assert!(rewritten > 5000, "only {rewritten} packets rewritten");
    assert!(checked > 5000, "only {checked} valid packets checked");
}
