//! Which worker owns a packet's flow, computed from the packet alone.
//!
//! RSS puts a flow's request and its reply on queues chosen independently, so with several
//! queues a reply often reaches a worker that never saw the request. Each flow therefore has
//! one owning worker, computable from either direction without any shared table:
//!
//! - a request (to a service) and a reply straight to the client (DNAT) both carry the
//!   client's address and port, so both hash those to the same worker;
//! - a reply to one of our source-translated ports (one-arm, full NAT) goes to the worker that
//!   allocated the port: each worker allocates only from its own slice of the range.
//!
//! A packet received elsewhere is handed to its owner (see `handoff`), so connection state,
//! port pools and selection state stay single-threaded.

use crate::icmp6_error;
use crate::icmp_error;
use crate::ports;
use crate::snapshot::{PortRange, Proto, ServiceKey, Snapshot};
use crate::wire::{ethernet, ipv4, ipv6};
use std::net::IpAddr;
#[cfg(test)]
use std::net::Ipv4Addr;

/// What the workers agree on to find a flow's owner; the same value in every worker.
#[derive(Debug, Clone, Copy)]
pub struct Ownership {
    workers: usize,
    snat_ports: PortRange,
    /// Random per process: a sender cannot aim all its flows at one worker.
    key: u64,
}

impl Ownership {
    pub fn new(workers: usize, snat_ports: PortRange, key: u64) -> Self {
        Ownership {
            workers: workers.max(1),
            snat_ports,
            key,
        }
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    /// The worker that owns the flow of `frame` (for an ICMP error, of the packet it quotes),
    /// or `None` when any worker may handle it where it arrived: a single worker, ICMP echo
    /// (answered without state), or a frame that does not parse (dropped and counted by
    /// whoever sees it).
    pub fn owner(&self, frame: &[u8], snap: &Snapshot) -> Option<usize> {
        if self.workers == 1 {
            return None;
        }
        let (src, dst, proto, src_port, dst_port) = ports_of(frame).or_else(|| {
            // An ICMP error belongs to the flow it quotes, travelling the way it does.
            let ip_buf = frame.get(ethernet::HEADER_LEN..)?;
            if let Some(q) = icmp_error::quote(ip_buf) {
                let q = q.key;
                return Some((q.src.into(), q.dst.into(), q.proto, q.src_port, q.dst_port));
            }
            let q = icmp6_error::quote(ip_buf)?.key;
            Some((q.src.into(), q.dst.into(), q.proto, q.src_port, q.dst_port))
        })?;
        let service = ServiceKey {
            vip: dst,
            port: dst_port,
            proto,
        };
        if snap.services.contains_key(&service) {
            return Some(self.client_owner(src, src_port, proto));
        }
        let to_our_port = (snap.vips.contains(&dst) || snap.own_addrs.contains(&dst))
            && (self.snat_ports.first..=self.snat_ports.last).contains(&dst_port);
        if to_our_port {
            return Some(ports::owner(self.snat_ports, self.workers as u16, dst_port) as usize);
        }
        // A reply on its way back to the client (DNAT), or the host's own traffic (the
        // engine passes it on wherever it is handled).
        Some(self.client_owner(dst, dst_port, proto))
    }

    fn client_owner(&self, addr: IpAddr, port: u16, proto: Proto) -> usize {
        // The paths of a multi-homed SCTP association (see `sctp_multihome`) share the
        // client's port, not its address: SCTP hashes the port alone.
        let addr = match proto {
            Proto::Sctp => IpAddr::from([0u8; 4]),
            _ => addr,
        };
        let rest = (u64::from(port) << 8) | proto as u64;
        let h = match addr {
            IpAddr::V4(v4) => mix((u64::from(u32::from(v4)) << 24 | rest) ^ self.key),
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                mix(mix((bits >> 64) as u64 ^ self.key) ^ bits as u64 ^ rest << 40)
            }
        };
        // Multiply-shift maps the high bits evenly onto 0..workers without a division.
        (((h >> 32) * self.workers as u64) >> 32) as usize
    }
}

/// splitmix64's finaliser: every input bit moves about half of the output bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Addresses, protocol and ports of a TCP, UDP or SCTP frame (IPv4 or IPv6), read without
/// validating more than needed to find them; a first fragment has them too. ICMP, later
/// fragments and anything malformed give `None`.
fn ports_of(frame: &[u8]) -> Option<(IpAddr, IpAddr, Proto, u16, u16)> {
    let eth = ethernet::Frame::new_checked(frame).ok()?;
    let ip_buf = &frame[ethernet::HEADER_LEN..];
    let (src, dst, proto, l4_at): (IpAddr, IpAddr, u8, usize) = match eth.ethertype() {
        ethernet::ETHERTYPE_IPV4 => {
            let ip = ipv4::Packet::new_checked(ip_buf).ok()?;
            // A later fragment has no ports: the worker routes it after its first fragment.
            if ip.fragment_offset() != 0 {
                return None;
            }
            (
                ip.src().into(),
                ip.dst().into(),
                ip.protocol(),
                ip.header_len(),
            )
        }
        ethernet::ETHERTYPE_IPV6 => {
            let ip = ipv6::Packet::new_checked(ip_buf).ok()?;
            // Behind any extension headers, as the engine reads them, so that a flow's
            // packets with and without them meet the same worker; a first fragment's behind
            // its Fragment header (a later one has none: the worker routes it after its
            // first fragment).
            let upper = ip.upper_layer().ok()?;
            (ip.src().into(), ip.dst().into(), upper.proto, upper.offset)
        }
        _ => return None,
    };
    let proto = Proto::from_ip_proto(proto)?;
    let l4 = ip_buf.get(l4_at..)?;
    let port = |at: usize| Some(u16::from_be_bytes([*l4.get(at)?, *l4.get(at + 1)?]));
    Some((src, dst, proto, port(0)?, port(2)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::select::Algorithm;
    use crate::snapshot::{Endpoint, NatMode, Service};
    use std::time::Duration;

    const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
    const OURS: Ipv4Addr = Ipv4Addr::new(198, 18, 31, 254);
    const BACKEND: Ipv4Addr = Ipv4Addr::new(198, 18, 31, 1);

    fn frame(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 8];
        f[12..14].copy_from_slice(&ethernet::ETHERTYPE_IPV4.to_be_bytes());
        f[14] = 0x45;
        f[16..18].copy_from_slice(&28u16.to_be_bytes());
        f[23] = 17;
        f[26..30].copy_from_slice(&src.octets());
        f[30..34].copy_from_slice(&dst.octets());
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&dport.to_be_bytes());
        f[38..40].copy_from_slice(&8u16.to_be_bytes());
        f
    }

    fn snapshot() -> Snapshot {
        let key = ServiceKey {
            vip: IpAddr::from(VIP),
            port: 2020,
            proto: Proto::Udp,
        };
        let svc = Service::new(
            key,
            "s".into(),
            NatMode::Dnat,
            Algorithm::RoundRobin,
            vec![Endpoint {
                addr: IpAddr::from(BACKEND),
                port: 8080,
                weight: 1,
            }],
            Duration::from_secs(60),
        )
        .unwrap();
        let mut snap = Snapshot::default();
        snap.services.insert(key, svc);
        snap.vips.insert(IpAddr::from(VIP));
        snap.own_addrs.insert(IpAddr::from(OURS));
        snap
    }

    #[test]
    fn a_request_and_its_dnat_reply_have_the_same_owner_for_every_client_port() {
        let own = Ownership::new(4, PortRange::default(), 0x1234_5678);
        let snap = snapshot();
        let client = Ipv4Addr::new(198, 18, 0, 2);
        let mut seen = [0usize; 4];
        for port in 30000..31000u16 {
            let req = own.owner(&frame(client, port, VIP, 2020), &snap);
            let reply = own.owner(&frame(BACKEND, 8080, client, port), &snap);
            assert_eq!(req, reply, "client port {port}");
            seen[req.unwrap()] += 1;
        }
        // Spread: every worker owns a fair share (1000 flows over 4, each well above 150).
        assert!(seen.iter().all(|&n| n > 150), "{seen:?}");
    }

    #[test]
    fn a_reply_to_a_translated_port_goes_to_the_worker_whose_slice_holds_the_port() {
        let range = PortRange::default();
        let own = Ownership::new(2, range, 7);
        let snap = snapshot();
        for port in [range.first, range.first + 1, range.first + 2, range.last] {
            let want = ports::owner(range, 2, port) as usize;
            assert_eq!(
                own.owner(&frame(BACKEND, 8080, OURS, port), &snap),
                Some(want)
            );
            assert_eq!(
                own.owner(&frame(BACKEND, 8080, VIP, port), &snap),
                Some(want)
            );
        }
    }

    #[test]
    fn a_client_port_inside_the_snat_range_still_follows_the_client_hash() {
        let range = PortRange::default();
        let own = Ownership::new(2, range, 99);
        let snap = snapshot();
        let client = Ipv4Addr::new(198, 18, 0, 2);
        for port in range.first..range.first + 64 {
            let req = own.owner(&frame(client, port, VIP, 2020), &snap);
            assert_eq!(req, own.owner(&frame(BACKEND, 8080, client, port), &snap));
        }
    }

    #[test]
    fn an_icmp_error_belongs_to_the_owner_of_the_flow_it_quotes() {
        let own = Ownership::new(4, PortRange::default(), 0xfeed);
        let snap = snapshot();
        let client = Ipv4Addr::new(198, 18, 0, 2);
        for port in 30000..30100u16 {
            // Port unreachable from the endpoint, quoting the request as we forwarded it.
            let forwarded = frame(client, port, BACKEND, 8080);
            let mut err = frame(BACKEND, 0, client, 0);
            err[23] = 1;
            err.truncate(14 + 20);
            err.extend_from_slice(&[3, 3, 0, 0, 0, 0, 0, 0]);
            err.extend_from_slice(&forwarded[14..]);
            let total = (err.len() - 14) as u16;
            err[16..18].copy_from_slice(&total.to_be_bytes());
            let request = own.owner(&frame(client, port, VIP, 2020), &snap);
            assert_eq!(own.owner(&err, &snap), request, "client port {port}");
        }
    }

    #[test]
    fn an_icmpv6_error_belongs_to_the_owner_of_the_flow_it_quotes() {
        let own = Ownership::new(4, PortRange::default(), 0xbeef);
        let snap = snapshot();
        let client: std::net::Ipv6Addr = "fd00::2".parse().unwrap();
        let backend: std::net::Ipv6Addr = "fd00:31::1".parse().unwrap();
        let v6 = |src: std::net::Ipv6Addr, dst: std::net::Ipv6Addr, next: u8, l4: &[u8]| {
            let mut ip = vec![0x60, 0, 0, 0, 0, 0, next, 64];
            ip[4..6].copy_from_slice(&(l4.len() as u16).to_be_bytes());
            ip.extend_from_slice(&src.octets());
            ip.extend_from_slice(&dst.octets());
            ip.extend_from_slice(l4);
            ip
        };
        let mut owners = std::collections::BTreeSet::new();
        for port in 30000..30100u16 {
            let mut udp = Vec::new();
            for v in [port, 8080, 8, 0] {
                udp.extend_from_slice(&v.to_be_bytes());
            }
            // Port unreachable from the endpoint, quoting the request as we forwarded it.
            let mut icmp = vec![1, 4, 0, 0, 0, 0, 0, 0];
            icmp.extend_from_slice(&v6(client, backend, 17, &udp));
            let mut err = vec![0u8; 12];
            err.extend_from_slice(&ethernet::ETHERTYPE_IPV6.to_be_bytes());
            err.extend_from_slice(&v6(backend, client, 58, &icmp));
            // The endpoint's answer to that request travels the same way and has its owner.
            let mut answer = vec![0u8; 12];
            answer.extend_from_slice(&ethernet::ETHERTYPE_IPV6.to_be_bytes());
            let mut reply = Vec::new();
            for v in [8080, port, 8, 0] {
                reply.extend_from_slice(&v.to_be_bytes());
            }
            answer.extend_from_slice(&v6(backend, client, 17, &reply));
            let want = own.owner(&answer, &snap);
            assert_eq!(own.owner(&err, &snap), want, "client port {port}");
            owners.insert(want);
        }
        assert!(
            owners.len() > 1,
            "the errors were not all sent to one worker"
        );
    }

    #[test]
    fn one_worker_or_an_unparsable_frame_needs_no_owner() {
        let snap = snapshot();
        let f = frame(Ipv4Addr::new(198, 18, 0, 2), 1000, VIP, 2020);
        assert_eq!(
            Ownership::new(1, PortRange::default(), 0).owner(&f, &snap),
            None
        );
        let two = Ownership::new(2, PortRange::default(), 0);
        assert_eq!(two.owner(&f[..30], &snap), None);
        let mut icmp = f.clone();
        icmp[23] = 1;
        assert_eq!(two.owner(&icmp, &snap), None);
    }

    #[test]
    fn ipv6_ports_are_read_behind_extension_headers() {
        let mut plain = vec![0u8; 14 + 40 + 8];
        plain[12..14].copy_from_slice(&ethernet::ETHERTYPE_IPV6.to_be_bytes());
        plain[14] = 0x60;
        plain[18..20].copy_from_slice(&8u16.to_be_bytes());
        plain[20] = 17;
        plain[54..56].copy_from_slice(&40000u16.to_be_bytes());
        plain[56..58].copy_from_slice(&2020u16.to_be_bytes());
        let mut extended = plain[..54].to_vec();
        extended[18..20].copy_from_slice(&16u16.to_be_bytes());
        // A destination options header (8 bytes, PadN) before the same UDP header.
        extended[20] = ipv6::PROTO_DEST_OPTIONS;
        extended.extend_from_slice(&[17, 0, 1, 4, 0, 0, 0, 0]);
        extended.extend_from_slice(&plain[54..]);
        let tuple = ports_of(&plain).expect("plain UDP");
        assert_eq!((tuple.3, tuple.4), (40000, 2020));
        assert_eq!(ports_of(&extended), Some(tuple));
    }

    #[test]
    fn an_ipv6_first_fragment_has_its_flows_owner_and_a_later_one_none() {
        let own = Ownership::new(4, PortRange::default(), 0xf00d);
        let mut snap = snapshot();
        let vip: std::net::Ipv6Addr = "fd00:100::1".parse().unwrap();
        let key = ServiceKey {
            vip: vip.into(),
            port: 2020,
            proto: Proto::Udp,
        };
        let mut svc = snap.services.values().next().unwrap().clone();
        svc.key = key;
        snap.services.insert(key, svc);
        let frame = |sport: u16, frag: Option<(u16, bool)>| {
            let mut f = vec![0u8; 12];
            f.extend_from_slice(&ethernet::ETHERTYPE_IPV6.to_be_bytes());
            let ext = if frag.is_some() { 8 } else { 0 };
            let mut ip = vec![0x60, 0, 0, 0, 0, 8 + ext, 17, 64];
            ip.extend_from_slice(&"fd00::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
            ip.extend_from_slice(&vip.octets());
            if let Some((offset, more)) = frag {
                ip[6] = ipv6::PROTO_FRAGMENT;
                ip.extend_from_slice(&[17, 0]);
                ip.extend_from_slice(&(offset << 3 | u16::from(more)).to_be_bytes());
                ip.extend_from_slice(&[0, 0, 0, 9]);
            }
            for v in [sport, 2020, 3000, 0] {
                ip.extend_from_slice(&v.to_be_bytes());
            }
            f.extend_from_slice(&ip);
            f
        };
        let mut owners = std::collections::BTreeSet::new();
        for port in 40000..40100u16 {
            let whole = own.owner(&frame(port, None), &snap);
            assert_eq!(own.owner(&frame(port, Some((0, true))), &snap), whole);
            owners.insert(whole);
        }
        assert!(owners.len() > 1, "every flow went to one worker");
        // A later fragment's ports are payload bytes: its worker is the one its first was
        // passed to (see `worker::owner_of`).
        assert_eq!(own.owner(&frame(40000, Some((185, false))), &snap), None);
    }
}
