//! Address and port rewriting of an IPv4 or IPv6 TCP, UDP or SCTP packet, with checksums kept
//! correct.

use crate::checksum::{
    self, is_partial, l4_full, pseudo_header_v4, pseudo_header_v6, update128, update16, update32,
};
use crate::snapshot::Proto;
use crate::wire::{ipv4, ipv6, sctp, tcp, udp, WireError};
use std::net::{Ipv4Addr, Ipv6Addr};

/// Which end of the packet is rewritten, and to what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rewrite {
    Source(Ipv4Addr, u16),
    Destination(Ipv4Addr, u16),
}

/// Rewrites one address and port of the IPv4 packet in `ip_buf` (which starts at the IP header
/// and was parsed before) and fixes the IP and L4 checksums.
///
/// A complete L4 checksum is updated incrementally (RFC 1624); a partial one, as left by an
/// offloading sender, is recomputed over the whole segment, so the packet leaves complete.
pub fn rewrite_v4(ip_buf: &mut [u8], proto: Proto, rw: Rewrite) -> Result<(), WireError> {
    let mut ip = ipv4::Packet::new_checked(&mut *ip_buf)?;
    let (src, dst) = (ip.src(), ip.dst());
    let l4_len = ip.total_len() - ip.header_len();
    // The first fragment of a datagram: its transport header describes the whole datagram.
    let head = ip.more_fragments();
    let old_pseudo = pseudo_header_v4(src, dst, proto as u8, l4_len);
    let (old_addr, new_addr, new_port) = match rw {
        Rewrite::Source(a, p) => {
            ip.set_src(a);
            (src, a, p)
        }
        Rewrite::Destination(a, p) => {
            ip.set_dst(a);
            (dst, a, p)
        }
    };
    let ip_check = update32(ip.checksum(), old_addr.octets(), new_addr.octets());
    ip.set_checksum(ip_check);
    let new_pseudo = pseudo_header_v4(ip.src(), ip.dst(), proto as u8, l4_len);
    let (_, l4) = ip.split_l4_mut();

    let field_at = match proto {
        Proto::Tcp => tcp::CHECKSUM,
        Proto::Udp => udp::CHECKSUM,
        Proto::Sctp => return rewrite_sctp_port(l4, rw),
    };
    let (old_check, old_port) = match proto {
        Proto::Tcp => {
            let mut s = tcp::Segment::new_checked(&mut *l4)?;
            let old_port = set_port(&mut s, rw);
            (s.checksum(), old_port)
        }
        Proto::Udp => {
            let mut d = if head {
                udp::Datagram::new_head(&mut *l4)?
            } else {
                udp::Datagram::new_checked(&mut *l4)?
            };
            let old_port = set_port(&mut d, rw);
            // UDP over IPv4 may carry no checksum at all; then there is nothing to fix.
            if d.checksum() == 0 {
                return Ok(());
            }
            (d.checksum(), old_port)
        }
        Proto::Sctp => unreachable!("handled above"),
    };
    // A fragmented datagram's checksum was computed whole before it was cut (no offload
    // leaves it partial), and this fragment holds only part of what it covers.
    let mut check = if !head && is_partial(old_check, old_pseudo) {
        l4_full(l4, field_at, new_pseudo)
    } else {
        let c = update32(old_check, old_addr.octets(), new_addr.octets());
        update16(c, old_port, new_port)
    };
    if proto == Proto::Udp && check == 0 {
        // Zero means "no checksum" in UDP; the same value in one's complement is all ones.
        check = 0xffff;
    }
    l4[field_at..field_at + 2].copy_from_slice(&check.to_be_bytes());
    Ok(())
}

/// SCTP: the CRC32c covers the ports but no addresses, and cannot be updated incrementally.
/// A packet whose CRC does not match is refused rather than forwarded with a fresh, "valid"
/// one; a zero CRC is what a sender offloading the computation leaves, and is computed here.
fn rewrite_sctp_port(l4: &mut [u8], rw: Rewrite) -> Result<(), WireError> {
    let mut p = sctp::Packet::new_checked(&mut *l4)?;
    if !p.checksum_is_zero() && !p.checksum_ok() {
        return Err(WireError::Malformed);
    }
    match rw {
        Rewrite::Source(_, port) => p.set_src_port(port),
        Rewrite::Destination(_, port) => p.set_dst_port(port),
    }
    p.fill_checksum();
    Ok(())
}

/// Port access shared by the TCP and UDP views, so the rewrite is written once.
trait Ports {
    fn src_port(&self) -> u16;
    fn dst_port(&self) -> u16;
    fn set_src_port(&mut self, p: u16);
    fn set_dst_port(&mut self, p: u16);
}

impl Ports for tcp::Segment<&mut [u8]> {
    fn src_port(&self) -> u16 {
        tcp::Segment::src_port(self)
    }
    fn dst_port(&self) -> u16 {
        tcp::Segment::dst_port(self)
    }
    fn set_src_port(&mut self, p: u16) {
        tcp::Segment::set_src_port(self, p)
    }
    fn set_dst_port(&mut self, p: u16) {
        tcp::Segment::set_dst_port(self, p)
    }
}

impl Ports for udp::Datagram<&mut [u8]> {
    fn src_port(&self) -> u16 {
        udp::Datagram::src_port(self)
    }
    fn dst_port(&self) -> u16 {
        udp::Datagram::dst_port(self)
    }
    fn set_src_port(&mut self, p: u16) {
        udp::Datagram::set_src_port(self, p)
    }
    fn set_dst_port(&mut self, p: u16) {
        udp::Datagram::set_dst_port(self, p)
    }
}

/// Writes the rewritten port and returns the one it replaced.
fn set_port(v: &mut impl Ports, rw: Rewrite) -> u16 {
    match rw {
        Rewrite::Source(_, p) => {
            let old = v.src_port();
            v.set_src_port(p);
            old
        }
        Rewrite::Destination(_, p) => {
            let old = v.dst_port();
            v.set_dst_port(p);
            old
        }
    }
}

/// Completes a partial L4 checksum (as an offloading sender leaves it) in a packet forwarded
/// without any rewrite (DSR): nobody downstream would finish it.
pub fn complete_checksum_v4(ip_buf: &mut [u8], proto: Proto) -> Result<(), WireError> {
    let mut ip = ipv4::Packet::new_checked(&mut *ip_buf)?;
    let l4_len = ip.total_len() - ip.header_len();
    let pseudo = pseudo_header_v4(ip.src(), ip.dst(), proto as u8, l4_len);
    let (_, l4) = ip.split_l4_mut();
    let field_at = match proto {
        Proto::Tcp => tcp::CHECKSUM,
        Proto::Udp => udp::CHECKSUM,
        Proto::Sctp => {
            let mut p = sctp::Packet::new_checked(&mut *l4)?;
            if p.checksum_is_zero() {
                p.fill_checksum();
            }
            return Ok(());
        }
    };
    if l4.len() < field_at + 2 {
        return Err(WireError::Truncated);
    }
    let current = u16::from_be_bytes([l4[field_at], l4[field_at + 1]]);
    if (proto == Proto::Udp && current == 0) || !is_partial(current, pseudo) {
        return Ok(());
    }
    let mut check = l4_full(l4, field_at, pseudo);
    if proto == Proto::Udp && check == 0 {
        check = 0xffff;
    }
    l4[field_at..field_at + 2].copy_from_slice(&check.to_be_bytes());
    Ok(())
}

/// True when the L4 checksum of the IPv4 or IPv6 packet in `ip_buf` verifies (for tests and
/// fuzzing); the version nibble decides which.
pub fn l4_checksum_ok(ip_buf: &[u8]) -> bool {
    if ip_buf.first().is_some_and(|b| b >> 4 == 6) {
        return l4_checksum_ok_v6(ip_buf);
    }
    let Ok(ip) = ipv4::Packet::new_checked(ip_buf) else {
        return false;
    };
    let l4 = &ip_buf[ip.header_len()..ip.total_len()];
    // ICMP's checksum covers its message only; TCP's and UDP's also the pseudo-header.
    let pseudo = match ip.protocol() {
        ipv4::PROTO_ICMP => 0,
        p => pseudo_header_v4(ip.src(), ip.dst(), p, l4.len()),
    };
    checksum::fold(pseudo + checksum::sum(l4)) == 0xffff
}

/// Which end of an IPv6 packet is rewritten, and to what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rewrite6 {
    Source(Ipv6Addr, u16),
    Destination(Ipv6Addr, u16),
}

/// Rewrites one address and port of the IPv6 packet in `ip_buf` (which starts at the IPv6
/// header; its upper layer, behind any extension headers, is `proto`) and fixes the L4
/// checksum; IPv6 has no header checksum.
///
/// As [`rewrite_v4`]: a complete checksum is updated incrementally, a partial one recomputed.
/// A UDP checksum of zero, which IPv6 forbids (RFC 8200 section 8.1), is computed in full, so
/// the packet leaves valid. A next header other than `proto` is refused as `Malformed`. On
/// any error the packet is left untouched.
///
/// The first fragment of a datagram (behind its Fragment header) is rewritten as IPv4's is:
/// its checksum covers the whole datagram, so it is only ever updated incrementally, and a
/// zero UDP checksum is left as it came. SCTP's CRC cannot be updated without the whole
/// packet: a fragment of it is `Malformed`.
pub fn rewrite_v6(ip_buf: &mut [u8], proto: Proto, rw: Rewrite6) -> Result<(), WireError> {
    let ip = ipv6::Packet::new_checked(&*ip_buf)?;
    let upper = upper_layer_of(&ip, proto)?;
    let head = upper.fragment.is_some();
    // The transport header is checked before anything is written: a refused packet is left
    // as it came.
    let l4 = &ip_buf[upper.offset..ip.total_len()];
    match proto {
        Proto::Tcp => tcp::Segment::new_checked(l4).map(drop)?,
        Proto::Udp if head => udp::Datagram::new_head(l4).map(drop)?,
        Proto::Udp => udp::Datagram::new_checked(l4).map(drop)?,
        Proto::Sctp if head => return Err(WireError::Malformed),
        Proto::Sctp => {
            let p = sctp::Packet::new_checked(l4)?;
            // As in `rewrite_sctp_port`: a wrong CRC is refused, a zero (offloaded) one filled.
            if !p.checksum_is_zero() && !p.checksum_ok() {
                return Err(WireError::Malformed);
            }
        }
    }
    let mut ip = ipv6::Packet::new_checked(&mut *ip_buf)?;
    let (src, dst) = (ip.src(), ip.dst());
    // The pseudo-header counts the upper layer only, not the extension headers before it.
    let l4_len = ip.total_len() - upper.offset;
    let old_pseudo = pseudo_header_v6(src, dst, proto as u8, l4_len);
    let (old_addr, new_addr, source_side, new_port) = match rw {
        Rewrite6::Source(a, p) => {
            ip.set_src(a);
            (src, a, true, p)
        }
        Rewrite6::Destination(a, p) => {
            ip.set_dst(a);
            (dst, a, false, p)
        }
    };
    let new_pseudo = pseudo_header_v6(ip.src(), ip.dst(), proto as u8, l4_len);
    let (_, l4) = ip.split_l4_mut();

    let (field_at, old_check, old_port) = match proto {
        Proto::Tcp => {
            let mut s = tcp::Segment::new_checked(&mut *l4)?;
            let old_port = set_port_at(&mut s, source_side, new_port);
            (tcp::CHECKSUM, s.checksum(), old_port)
        }
        Proto::Udp => {
            let mut d = if head {
                udp::Datagram::new_head(&mut *l4)?
            } else {
                udp::Datagram::new_checked(&mut *l4)?
            };
            let old_port = set_port_at(&mut d, source_side, new_port);
            // Without the rest of the datagram there is nothing to compute it from.
            if head && d.checksum() == 0 {
                return Ok(());
            }
            (udp::CHECKSUM, d.checksum(), old_port)
        }
        Proto::Sctp => {
            let mut p = sctp::Packet::new_checked(&mut *l4)?;
            if source_side {
                p.set_src_port(new_port);
            } else {
                p.set_dst_port(new_port);
            }
            p.fill_checksum();
            return Ok(());
        }
    };
    let zero_udp = proto == Proto::Udp && old_check == 0;
    // A fragmented datagram's checksum was computed whole before it was cut (no offload
    // leaves it partial), and this fragment holds only part of what it covers.
    let mut check = if !head && (zero_udp || is_partial(old_check, old_pseudo)) {
        l4_full(l4, field_at, new_pseudo)
    } else {
        let c = update128(old_check, old_addr.octets(), new_addr.octets());
        update16(c, old_port, new_port)
    };
    if proto == Proto::Udp && check == 0 {
        check = 0xffff;
    }
    l4[field_at..field_at + 2].copy_from_slice(&check.to_be_bytes());
    Ok(())
}

/// The upper-layer header of an IPv6 packet, which must be `proto`. Extension headers that
/// cannot be walked (or leave the checksum's destination elsewhere) are `Malformed`: the
/// engine refuses those packets, with their own reasons, before rewriting.
fn upper_layer_of<T: AsRef<[u8]>>(
    ip: &ipv6::Packet<T>,
    proto: Proto,
) -> Result<ipv6::UpperLayer, WireError> {
    match ip.upper_layer() {
        Ok(u) if u.proto == proto as u8 => Ok(u),
        Err(ipv6::ExtensionError::Truncated) => Err(WireError::Truncated),
        _ => Err(WireError::Malformed),
    }
}

/// Writes the port of one end (the source when `source_side`) and returns the one it replaced.
fn set_port_at(v: &mut impl Ports, source_side: bool, port: u16) -> u16 {
    if source_side {
        let old = v.src_port();
        v.set_src_port(port);
        old
    } else {
        let old = v.dst_port();
        v.set_dst_port(port);
        old
    }
}

/// Completes the L4 checksum of an IPv6 packet forwarded without rewrite (DSR), as
/// [`complete_checksum_v4`] does; a zero UDP checksum, invalid over IPv6, is computed too.
/// A first fragment is left as it is: its checksum covers bytes it does not hold.
pub fn complete_checksum_v6(ip_buf: &mut [u8], proto: Proto) -> Result<(), WireError> {
    let mut ip = ipv6::Packet::new_checked(&mut *ip_buf)?;
    let upper = upper_layer_of(&ip, proto)?;
    if upper.fragment.is_some() {
        return Ok(());
    }
    let pseudo = pseudo_header_v6(
        ip.src(),
        ip.dst(),
        proto as u8,
        ip.total_len() - upper.offset,
    );
    let (_, l4) = ip.split_l4_mut();
    let field_at = match proto {
        Proto::Tcp => tcp::CHECKSUM,
        Proto::Udp => udp::CHECKSUM,
        Proto::Sctp => {
            let mut p = sctp::Packet::new_checked(&mut *l4)?;
            if p.checksum_is_zero() {
                p.fill_checksum();
            }
            return Ok(());
        }
    };
    if l4.len() < field_at + 2 {
        return Err(WireError::Truncated);
    }
    let current = u16::from_be_bytes([l4[field_at], l4[field_at + 1]]);
    let zero_udp = proto == Proto::Udp && current == 0;
    if !zero_udp && !is_partial(current, pseudo) {
        return Ok(());
    }
    let mut check = l4_full(l4, field_at, pseudo);
    if proto == Proto::Udp && check == 0 {
        check = 0xffff;
    }
    l4[field_at..field_at + 2].copy_from_slice(&check.to_be_bytes());
    Ok(())
}

/// True when the L4 checksum of the IPv6 packet in `ip_buf` verifies. Every IPv6 upper-layer
/// checksum covers the pseudo-header, ICMPv6's included; a zero UDP checksum never verifies.
/// Extension headers are walked to the upper layer; one that cannot be never verifies.
pub fn l4_checksum_ok_v6(ip_buf: &[u8]) -> bool {
    let Ok(ip) = ipv6::Packet::new_checked(ip_buf) else {
        return false;
    };
    let Ok(upper) = ip.upper_layer() else {
        return false;
    };
    let l4 = &ip_buf[upper.offset..ip.total_len()];
    let proto = upper.proto;
    if proto == ipv6::PROTO_UDP && l4.len() >= udp::CHECKSUM + 2 && l4[6..8] == [0, 0] {
        return false;
    }
    let pseudo = pseudo_header_v6(ip.src(), ip.dst(), proto, l4.len());
    checksum::fold(pseudo + checksum::sum(l4)) == 0xffff
}
