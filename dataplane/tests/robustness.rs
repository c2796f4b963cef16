//! Any bytes in: the engine never panics, every verdict is a transmit, a kernel hand-off or a
//! counted drop, and whatever it forwards carries correct IP and L4 checksums.
//!
//! Deterministic (a fixed-seed generator) so a failure reproduces; the `cargo fuzz` target in
//! `dataplane/fuzz/` explores the same property for as long as one cares to run it.

mod common;
use common::Rng;

use oxlb_dataplane::checksum;
use oxlb_dataplane::engine::{Engine, Verdict};
use oxlb_dataplane::nat::l4_checksum_ok;
use oxlb_dataplane::select::Algorithm;
use oxlb_dataplane::snapshot::{Endpoint, NatMode, NextHop, Proto, Service, ServiceKey, Snapshot};
use std::net::Ipv4Addr;
use std::time::Duration;

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);

fn snapshot(mode: NatMode) -> Snapshot {
    let mut s = Snapshot::default();
    for proto in [Proto::Tcp, Proto::Udp] {
        let key = ServiceKey {
            vip: VIP.into(),
            port: 2020,
            proto,
        };
        let eps: Vec<Endpoint> = (1..=3)
            .map(|n| Endpoint {
                addr: Ipv4Addr::new(198, 18, 31, n).into(),
                port: 8080,
                weight: 1,
            })
            .collect();
        let target_port = if mode == NatMode::Dsr { 2020 } else { 8080 };
        let eps = eps
            .into_iter()
            .map(|e| Endpoint {
                port: target_port,
                ..e
            })
            .collect();
        let svc = Service::new(
            key,
            "fuzz".into(),
            mode,
            Algorithm::RoundRobin,
            eps,
            Duration::from_secs(60),
        )
        .unwrap();
        s.services.insert(key, svc);
    }
    for n in 1..=3 {
        let a = Ipv4Addr::new(198, 18, 31, n);
        s.next_hops.insert(
            a.into(),
            NextHop {
                ifindex: 3,
                src_mac: [2; 6],
                dst_mac: [4; 6],
            },
        );
        s.sources
            .insert(a.into(), Ipv4Addr::new(198, 18, 31, 254).into());
    }
    s
}

/// A well-formed client-to-VIP frame with random ports, flags, options and payload; its
/// checksum complete or partial at random.
fn plausible(rng: &mut Rng) -> Vec<u8> {
    let udp = rng.below(2) == 0;
    let opt_words = rng.below(3) as usize;
    let payload = rng.below(1400) as usize;
    let l4_hdr = if udp { 8 } else { 20 + 4 * opt_words };
    let ip_len = 20 + l4_hdr + payload;
    let mut f = vec![0u8; 14 + ip_len];
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = if udp { 17 } else { 6 };
    ip[12..16].copy_from_slice(&[198, 18, 0, rng.below(4) as u8 + 1]);
    ip[16..20].copy_from_slice(&VIP.octets());
    let c = checksum::ipv4_header(&ip[..20]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let l4 = &mut ip[20..];
    l4[0..2].copy_from_slice(&(1024 + rng.below(60000) as u16).to_be_bytes());
    l4[2..4].copy_from_slice(&2020u16.to_be_bytes());
    let field_at = if udp {
        l4[4..6].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
        6
    } else {
        l4[12] = ((5 + opt_words) as u8) << 4;
        l4[13] = if rng.below(3) == 0 {
            0x02
        } else {
            rng.next() as u8
        };
        16
    };
    for b in &mut l4[l4_hdr..] {
        *b = rng.next() as u8;
    }
    let pseudo = checksum::pseudo_header_v4(src, VIP, if udp { 17 } else { 6 }, l4_hdr + payload);
    let c = if rng.below(2) == 0 {
        checksum::fold(pseudo)
    } else {
        checksum::l4_full(l4, field_at, pseudo)
    };
    l4[field_at..field_at + 2].copy_from_slice(&c.to_be_bytes());
    f
}

/// Damages a frame: flipped bytes, a cut, or garbage in a header field.
fn damage(rng: &mut Rng, mut f: Vec<u8>) -> Vec<u8> {
    match rng.below(4) {
        0 => {
            for _ in 0..=rng.below(4) {
                let i = rng.below(f.len() as u64) as usize;
                f[i] ^= 1 << rng.below(8);
            }
        }
        1 => f.truncate(rng.below(f.len() as u64) as usize),
        2 => {
            // IHL, total length or TCP data offset set to anything.
            let at = [14, 16, 17, 46][rng.below(4) as usize];
            if at < f.len() {
                f[at] = rng.next() as u8;
            }
        }
        _ => {}
    }
    f
}

fn check_verdict(v: Verdict, frame: &[u8], mode: NatMode) {
    let frame = match v {
        Verdict::TransmitFirst { len, .. } => &frame[..len],
        _ => frame,
    };
    match v {
        Verdict::Transmit { .. } | Verdict::TransmitFirst { .. } | Verdict::Kernel => {
            let ip = &frame[14..];
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            assert_eq!(
                checksum::ipv4_header(&ip[..ihl]),
                u16::from_be_bytes([ip[10], ip[11]])
            );
            assert!(
                l4_checksum_ok(ip),
                "{mode:?}: forwarded with a bad L4 checksum: {frame:02x?}"
            );
        }
        Verdict::Drop(_) => {}
    }
}

#[test]
fn random_and_damaged_frames_never_panic_and_forwarded_ones_are_valid() {
    for mode in NatMode::ALL {
        let snap = snapshot(mode);
        let mut engine = Engine::new(4096);
        let mut rng = Rng(0x0c1b_0000 + mode as u64);
        let mut forwarded = 0;
        for i in 0..20_000u64 {
            let mut f = match rng.below(3) {
                0 => plausible(&mut rng),
                1 => {
                    let f = plausible(&mut rng);
                    damage(&mut rng, f)
                }
                _ => (0..rng.below(200)).map(|_| rng.next() as u8).collect(),
            };
            let before = engine.counters.dropped_total();
            // Damage may leave a frame that still parses but whose checksums were already
            // wrong; NAT keeps a wrong checksum wrong (it must not "fix" corruption), so only
            // frames that arrived valid are held to leaving valid.
            let arrived_valid = checksums_valid_or_partial(&f);
            let v = engine.process(&mut f, 2, &snap, i);
            if let Verdict::Drop(_) = v {
                assert_eq!(
                    engine.counters.dropped_total(),
                    before + 1,
                    "every drop is counted"
                );
            } else {
                forwarded += 1;
                if arrived_valid {
                    check_verdict(v, &f, mode);
                }
            }
        }
        assert!(
            forwarded > 1000,
            "{mode:?}: only {forwarded} frames forwarded"
        );
    }
}

/// A frame with a consistent IPv4 header whose L4 checksum is complete or partial.
fn checksums_valid_or_partial(f: &[u8]) -> bool {
    if f.len() < 34 || f[12..14] != [8, 0] || f[14] != 0x45 {
        return false;
    }
    let ip = &f[14..];
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if checksum::ipv4_header(&ip[..20]) != u16::from_be_bytes([ip[10], ip[11]])
        || total < 28
        || total > ip.len()
    {
        return false;
    }
    let l4 = &ip[20..total];
    let field_at = match ip[9] {
        6 if l4.len() >= 20 => 16,
        17 => 6,
        _ => return false,
    };
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let pseudo = checksum::pseudo_header_v4(src, dst, ip[9], l4.len());
    let field = u16::from_be_bytes([l4[field_at], l4[field_at + 1]]);
    l4_checksum_ok(ip) || checksum::is_partial(field, pseudo)
}

#[test]
fn intact_frames_in_every_mode_leave_with_valid_checksums() {
    for mode in NatMode::ALL {
        let snap = snapshot(mode);
        let mut engine = Engine::new(4096);
        let mut rng = Rng(7 + mode as u64);
        let mut checked = 0;
        for i in 0..5_000u64 {
            let mut f = plausible(&mut rng);
            let v = engine.process(&mut f, 2, &snap, i);
            if !matches!(v, Verdict::Drop(_)) {
                check_verdict(v, &f, mode);
                checked += 1;
            }
        }
        assert!(checked > 1000, "{mode:?}: only {checked} forwarded");
    }
}
