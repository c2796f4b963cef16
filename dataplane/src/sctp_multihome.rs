//! Multi-homed SCTP associations to a service with secondary addresses (loxilb's
//! `secondaryIPs`), in dnat mode.
//!
//! An SCTP association has one pair of ports and several addresses on each side; every pair
//! of addresses is a path, and each path is a flow of its own to conntrack. Two things make the
//! service's extra addresses usable:
//!
//! - the endpoint's INIT ACK lists the addresses the client may use for the service: its own
//!   address parameters (IPv4 type 5, IPv6 type 6) are replaced by the secondary addresses,
//!   the packet's source being the VIP already. The client's INIT goes unchanged: in dnat mode
//!   the endpoint talks to the client's own addresses, through us as its gateway;
//! - a packet on a path not seen yet (another client address, a secondary address) is no INIT,
//!   so it could not open a flow. The association is recognised by its verification tag (the
//!   endpoint's initiate tag, learned from the INIT ACK) with the client's port and the rule,
//!   and the new path goes to the association's endpoint.
//!
//! loxilb does the same rewriting for IPv4 in its eBPF connection tracking (it also rewrites
//! the INIT in its full NAT modes); the table of associations is this engine's own, bounded,
//! one per worker: the flow-owner hash keeps an association's paths on one worker (SCTP hashes
//! the client's port alone, see `owner`).

use crate::snapshot::{Endpoint, Proto, ServiceKey, Snapshot};
use crate::wire::{ethernet, ipv4, ipv6, sctp, WireError};
use hashbrown::HashMap;
use std::net::IpAddr;

/// Associations a worker remembers (about 64 bytes each).
pub const CAPACITY: usize = 4096;

/// SCTP address parameter types (RFC 9260 section 3.3.2.1).
const PARAM_IPV4: u16 = 5;
const PARAM_IPV6: u16 = 6;
/// An INIT or INIT ACK chunk header with its fixed fields (tag, window, streams, TSN).
const INIT_FIXED_LEN: usize = 20;
/// Offset of the verification tag in the common header.
const VTAG: usize = 4;
/// Offset of the first chunk's type in the packet (after the common header).
const FIRST_CHUNK: usize = sctp::HEADER_LEN;

/// What identifies an association from any of its paths: the rule, the client's port and the
/// tag the client writes into its packets (the endpoint's initiate tag).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct AssocKey {
    rule: ServiceKey,
    client_port: u16,
    tag: u32,
}

#[derive(Debug, Clone, Copy)]
struct Assoc {
    endpoint: Endpoint,
    idle_ms: u64,
    expires_at: u64,
}

/// The associations of multi-homed services seen by one worker.
#[derive(Debug, Default)]
pub struct Associations {
    map: HashMap<AssocKey, Assoc>,
}

impl Associations {
    /// An endpoint's packet on its way to the client, already rewritten by the flow of
    /// `service` (the key it came to) with `endpoint` and the client's port `client_port`, in
    /// `buf[..frame_len]` (the buffer may have room after it). An INIT ACK of a service with
    /// secondary addresses is remembered and made to list them; the new frame length is
    /// returned. Anything else is left as it is.
    #[allow(clippy::too_many_arguments)]
    pub fn on_reply(
        &mut self,
        buf: &mut [u8],
        frame_len: usize,
        snap: &Snapshot,
        service: ServiceKey,
        endpoint: Endpoint,
        client_port: u16,
        now_ms: u64,
    ) -> Result<usize, WireError> {
        let Some(svc) = snap.services.get(&service) else {
            return Ok(frame_len);
        };
        if svc.secondaries.is_empty() || service.proto != Proto::Sctp {
            return Ok(frame_len);
        }
        let Some(tag) = init_ack_tag(&buf[..frame_len]) else {
            return Ok(frame_len);
        };
        let idle_ms = svc.inactive_timeout.as_millis() as u64;
        self.learn(
            AssocKey {
                rule: svc.key,
                client_port,
                tag,
            },
            endpoint,
            idle_ms,
            now_ms,
        );
        rewrite_addresses(buf, frame_len, &svc.secondaries)
    }

    /// The service key and endpoint of the association a client's packet in `frame` belongs
    /// to, when it is an SCTP packet other than an INIT to a service with secondary
    /// addresses, on a path not seen yet; `None` otherwise (it then opens a flow, or not,
    /// as any packet does).
    pub fn path_of(
        &mut self,
        frame: &[u8],
        snap: &Snapshot,
        to: ServiceKey,
        client_port: u16,
        now_ms: u64,
    ) -> Option<(ServiceKey, Endpoint)> {
        if to.proto != Proto::Sctp {
            return None;
        }
        let svc = snap.services.get(&to)?;
        if svc.secondaries.is_empty() {
            return None;
        }
        let l4 = sctp_of(frame)?;
        if l4[FIRST_CHUNK] == sctp::CHUNK_INIT {
            return None;
        }
        let tag = u32::from_be_bytes(l4[VTAG..VTAG + 4].try_into().ok()?);
        let key = AssocKey {
            rule: svc.key,
            client_port,
            tag,
        };
        let a = self.map.get_mut(&key)?;
        if a.expires_at <= now_ms {
            self.map.remove(&key);
            return None;
        }
        a.expires_at = now_ms.saturating_add(a.idle_ms);
        Some((svc.key, a.endpoint))
    }

    /// Forgets the associations of a deleted rule.
    pub fn forget(&mut self, rule: &ServiceKey) {
        self.map.retain(|k, _| k.rule != *rule);
    }

    fn learn(&mut self, key: AssocKey, endpoint: Endpoint, idle_ms: u64, now_ms: u64) {
        if self.map.len() >= CAPACITY && !self.map.contains_key(&key) {
            self.map.retain(|_, a| a.expires_at > now_ms);
            if self.map.len() >= CAPACITY {
                // Full of live associations: this one keeps its first path only.
                return;
            }
        }
        self.map.insert(
            key,
            Assoc {
                endpoint,
                idle_ms,
                expires_at: now_ms.saturating_add(idle_ms),
            },
        );
    }
}

/// Where the IP header ends and how long the IP packet is, for an IPv4 or IPv6 frame carrying
/// SCTP right after its (fixed) header; `None` for anything else.
fn sctp_bounds(frame: &[u8]) -> Option<(usize, usize)> {
    let eth = ethernet::Frame::new_checked(frame).ok()?;
    let ip_buf = &frame[ethernet::HEADER_LEN..];
    match eth.ethertype() {
        ethernet::ETHERTYPE_IPV4 => {
            let ip = ipv4::Packet::new_checked(ip_buf).ok()?;
            (ip.protocol() == ipv4::PROTO_SCTP && !ip.is_fragment())
                .then(|| (ip.header_len(), ip.total_len()))
        }
        ethernet::ETHERTYPE_IPV6 => {
            let ip = ipv6::Packet::new_checked(ip_buf).ok()?;
            let upper = ip.upper_layer().ok()?;
            (upper.proto == ipv6::PROTO_SCTP).then(|| (upper.offset, ip.total_len()))
        }
        _ => None,
    }
}

/// The SCTP packet of `frame` (common header and at least one chunk header).
fn sctp_of(frame: &[u8]) -> Option<&[u8]> {
    let (hl, total) = sctp_bounds(frame)?;
    let l4 = frame.get(ethernet::HEADER_LEN + hl..ethernet::HEADER_LEN + total)?;
    (l4.len() >= sctp::MIN_LEN).then_some(l4)
}

/// The initiate tag of an INIT ACK (the tag the client will write into its packets).
fn init_ack_tag(frame: &[u8]) -> Option<u32> {
    let l4 = sctp_of(frame)?;
    if l4[FIRST_CHUNK] != sctp::CHUNK_INIT_ACK || l4.len() < sctp::HEADER_LEN + INIT_FIXED_LEN {
        return None;
    }
    let at = sctp::HEADER_LEN + 4;
    Some(u32::from_be_bytes(l4[at..at + 4].try_into().ok()?))
}

fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

/// Replaces the address parameters of the INIT or INIT ACK chunk in `buf[..frame_len]` (the
/// packet's only chunk, as RFC 9260 requires) by one parameter per address of `addresses`,
/// keeping every other parameter (the state cookie first of all) in order; fixes the chunk
/// and IP lengths, the IPv4 header checksum and the CRC32c. The frame may grow into the
/// buffer's room after `frame_len` (by 8 bytes per IPv4 address, 20 per IPv6 address, less
/// what was removed); without the room it is refused as truncated. Returns the new length.
pub fn rewrite_addresses(
    buf: &mut [u8],
    frame_len: usize,
    addresses: &[IpAddr],
) -> Result<usize, WireError> {
    let (hl, total) = sctp_bounds(&buf[..frame_len]).ok_or(WireError::Malformed)?;
    let l4_at = ethernet::HEADER_LEN + hl;
    let l4_end = ethernet::HEADER_LEN + total;
    if l4_end > frame_len || l4_at + sctp::HEADER_LEN + INIT_FIXED_LEN > l4_end {
        return Err(WireError::Truncated);
    }
    let chunk_at = l4_at + sctp::HEADER_LEN;
    let chunk_len = usize::from(u16::from_be_bytes([buf[chunk_at + 2], buf[chunk_at + 3]]));
    if chunk_len < INIT_FIXED_LEN || chunk_at + chunk_len > l4_end {
        return Err(WireError::Malformed);
    }
    // Bundling with INIT or INIT ACK is forbidden: anything after the chunk is refused rather
    // than silently lost.
    if pad4(chunk_at + chunk_len - l4_at) < l4_end - l4_at {
        return Err(WireError::Malformed);
    }
    let params_end = chunk_at + chunk_len;
    let mut read = chunk_at + INIT_FIXED_LEN;
    let mut write = read;
    while read + 4 <= params_end {
        let ty = u16::from_be_bytes([buf[read], buf[read + 1]]);
        let len = usize::from(u16::from_be_bytes([buf[read + 2], buf[read + 3]]));
        if len < 4 || read + len > params_end {
            return Err(WireError::Malformed);
        }
        if ty != PARAM_IPV4 && ty != PARAM_IPV6 {
            // A last parameter without its padding on the wire gets it here.
            if write + pad4(len) > buf.len() {
                return Err(WireError::Truncated);
            }
            // Moving down only (write <= read): the source is never overwritten before read.
            buf.copy_within(read..read + len, write);
            buf[write + len..write + pad4(len)].fill(0);
            write += pad4(len);
        }
        read += pad4(len);
    }
    let added: usize = addresses
        .iter()
        .map(|a| if a.is_ipv4() { 8 } else { 20 })
        .sum();
    let new_end = write + added;
    if new_end > buf.len() {
        return Err(WireError::Truncated);
    }
    for addr in addresses {
        let (ty, bytes): (u16, &[u8]) = match addr {
            IpAddr::V4(a) => (PARAM_IPV4, &a.octets()[..]),
            IpAddr::V6(a) => (PARAM_IPV6, &a.octets()[..]),
        };
        let len = 4 + bytes.len();
        buf[write..write + 2].copy_from_slice(&ty.to_be_bytes());
        buf[write + 2..write + 4].copy_from_slice(&(len as u16).to_be_bytes());
        buf[write + 4..write + len].copy_from_slice(bytes);
        write += len;
    }
    // Every parameter now ends on a 4-byte boundary except possibly a kept last one, whose
    // padding the chunk length leaves out.
    let new_chunk_len = if addresses.is_empty() {
        trailing_len(buf, chunk_at, write)
    } else {
        write - chunk_at
    };
    // The chunk's length field follows its type and flags.
    let len_at = chunk_at + 2;
    buf[len_at..len_at + 2].copy_from_slice(&(new_chunk_len as u16).to_be_bytes());
    let ip_len = write - ethernet::HEADER_LEN;
    let ip_at = ethernet::HEADER_LEN;
    if buf[ip_at] >> 4 == 6 {
        let payload = (ip_len - ipv6::HEADER_LEN) as u16;
        buf[ip_at + 4..ip_at + 6].copy_from_slice(&payload.to_be_bytes());
    } else {
        buf[ip_at + 2..ip_at + 4].copy_from_slice(&(ip_len as u16).to_be_bytes());
        let c = crate::checksum::ipv4_header(&buf[ip_at..ip_at + hl]);
        buf[ip_at + 10..ip_at + 12].copy_from_slice(&c.to_be_bytes());
    }
    let mut p = sctp::Packet::new_checked(&mut buf[l4_at..write])?;
    p.fill_checksum();
    Ok(write)
}

/// The chunk length when the kept parameters end the chunk: the last one's own length,
/// without its padding. Walks the compacted parameters from the chunk's fixed part.
fn trailing_len(buf: &[u8], chunk_at: usize, end: usize) -> usize {
    let mut at = chunk_at + INIT_FIXED_LEN;
    let mut last_end = at;
    while at + 4 <= end {
        let len = usize::from(u16::from_be_bytes([buf[at + 2], buf[at + 3]]));
        last_end = at + len;
        at += pad4(len);
    }
    last_end - chunk_at
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    /// An IPv4 frame carrying one SCTP chunk of `chunk_type` with `params` after its fixed
    /// part, in a buffer with 64 bytes of room.
    fn frame(chunk_type: u8, params: &[u8]) -> (Vec<u8>, usize) {
        let chunk_len = INIT_FIXED_LEN + params.len();
        let ip_len = 20 + 12 + pad4(chunk_len);
        let mut f = vec![0u8; 14];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&[0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 132, 0, 0]);
        f.extend_from_slice(&[198, 18, 31, 1, 198, 18, 0, 1]);
        f[16..18].copy_from_slice(&(ip_len as u16).to_be_bytes());
        let c = crate::checksum::ipv4_header(&f[14..34]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&[0x27, 0x0f, 0x9c, 0x40, 0, 0, 0, 1, 0, 0, 0, 0]);
        f.extend_from_slice(&[chunk_type, 0]);
        f.extend_from_slice(&(chunk_len as u16).to_be_bytes());
        f.extend_from_slice(&[0xaa, 0xbb, 0xcc, 0xdd, 0, 1, 0, 0, 0, 1, 0, 1, 0, 0, 0, 9]);
        f.extend_from_slice(params);
        f.resize(14 + ip_len, 0);
        let len = f.len();
        f.resize(len + 64, 0);
        (f, len)
    }

    #[test]
    fn address_parameters_are_replaced_and_a_cookie_is_kept() {
        // Cookie (7) of 5 bytes (padded to 8), IPv4 address 198.18.31.2, IPv6 address.
        let mut params = vec![0, 7, 0, 9, 1, 2, 3, 4, 5, 0, 0, 0];
        params.extend_from_slice(&[0, 5, 0, 8, 198, 18, 31, 2]);
        params.extend_from_slice(&[0, 6, 0, 20]);
        params.extend_from_slice(&[0xfd; 16]);
        let (mut buf, len) = frame(sctp::CHUNK_INIT_ACK, &params);
        let secs = [
            IpAddr::from(Ipv4Addr::new(198, 18, 101, 1)),
            Ipv4Addr::new(198, 18, 102, 1).into(),
        ];
        let out = rewrite_addresses(&mut buf, len, &secs).unwrap();
        assert_eq!(out, len - 28 + 16);
        let chunk = &buf[14 + 20 + 12..out];
        assert_eq!(&chunk[2..4], &((20 + 12 + 16) as u16).to_be_bytes());
        assert_eq!(&chunk[20..32], &[0, 7, 0, 9, 1, 2, 3, 4, 5, 0, 0, 0]);
        assert_eq!(
            &chunk[32..],
            &[0, 5, 0, 8, 198, 18, 101, 1, 0, 5, 0, 8, 198, 18, 102, 1]
        );
        let ip = ipv4::Packet::new_checked(&buf[14..out]).unwrap();
        assert_eq!(ip.total_len(), out - 14);
        assert_eq!(crate::checksum::ipv4_header(ip.header()), ip.checksum());
        assert!(sctp::Packet::new_checked(&buf[34..out])
            .unwrap()
            .checksum_ok());
    }

    #[test]
    fn without_room_to_grow_the_rewrite_is_refused() {
        let (mut buf, len) = frame(sctp::CHUNK_INIT_ACK, &[0, 7, 0, 8, 1, 2, 3, 4]);
        let secs = [IpAddr::from(Ipv4Addr::new(198, 18, 101, 1))];
        assert_eq!(
            rewrite_addresses(&mut buf[..len], len, &secs),
            Err(WireError::Truncated)
        );
    }

    #[test]
    fn a_parameter_running_past_the_chunk_is_malformed() {
        let (mut buf, len) = frame(sctp::CHUNK_INIT_ACK, &[0, 7, 0, 40, 1, 2, 3, 4]);
        let secs = [IpAddr::from(Ipv4Addr::new(198, 18, 101, 1))];
        assert_eq!(
            rewrite_addresses(&mut buf, len, &secs),
            Err(WireError::Malformed)
        );
    }

    #[test]
    fn corrupted_chunks_are_refused_or_rewritten_within_the_buffer_never_panicking() {
        let mut params = vec![0, 7, 0, 9, 1, 2, 3, 4, 5, 0, 0, 0];
        params.extend_from_slice(&[0, 5, 0, 8, 198, 18, 31, 2]);
        let (good, len) = frame(sctp::CHUNK_INIT_ACK, &params);
        let secs = [IpAddr::from(Ipv4Addr::new(198, 18, 101, 1))];
        let mut seed = 0x9e37_79b9_u64;
        for round in 0..20_000 {
            let mut buf = good.clone();
            for _ in 0..1 + round % 4 {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let at = 14 + (seed >> 33) as usize % (len - 14);
                buf[at] = (seed >> 20) as u8;
            }
            let room = (seed >> 40) as usize % 24;
            let cut = (len + room).min(buf.len());
            if let Ok(out) = rewrite_addresses(&mut buf[..cut], len.min(cut), &secs) {
                assert!(out <= cut);
            }
        }
    }

    #[test]
    fn a_last_parameter_without_its_padding_is_padded_or_refused_without_room() {
        // A cookie of 5 bytes ends the chunk and the packet, its 3 padding bytes left out.
        let (mut buf, len) = frame(sctp::CHUNK_INIT_ACK, &[0, 7, 0, 9, 1, 2, 3, 4, 5]);
        let len = len - 3;
        buf[16..18].copy_from_slice(&((len - 14) as u16).to_be_bytes());
        let secs = [IpAddr::from(Ipv4Addr::new(198, 18, 101, 1))];
        let mut tight = buf[..len].to_vec();
        assert_eq!(
            rewrite_addresses(&mut tight, len, &secs),
            Err(WireError::Truncated)
        );
        let out = rewrite_addresses(&mut buf, len, &secs).unwrap();
        assert_eq!(out, len + 3 + 8);
        let chunk = &buf[14 + 20 + 12..out];
        assert_eq!(
            &chunk[20..],
            &[0, 7, 0, 9, 1, 2, 3, 4, 5, 0, 0, 0, 0, 5, 0, 8, 198, 18, 101, 1]
        );
        assert_eq!(&chunk[2..4], &40u16.to_be_bytes());
        assert!(sctp::Packet::new_checked(&buf[34..out])
            .unwrap()
            .checksum_ok());
    }

    #[test]
    fn the_initiate_tag_is_read_from_an_init_ack_only() {
        let (buf, len) = frame(sctp::CHUNK_INIT_ACK, &[]);
        assert_eq!(init_ack_tag(&buf[..len]), Some(0xaabb_ccdd));
        let (buf, len) = frame(sctp::CHUNK_INIT, &[]);
        assert_eq!(init_ack_tag(&buf[..len]), None);
    }
}
