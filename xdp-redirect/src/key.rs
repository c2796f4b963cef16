//! The BPF map key `struct lb_key`, mirrored byte for byte. The only module with `unsafe`.
#![allow(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// `family` value of a key holding an IPv4 address (as IPv4-mapped IPv6).
pub const FAMILY_V4: u8 = 4;
/// `family` value of a key holding an IPv6 address.
pub const FAMILY_V6: u8 = 6;

/// Key of the `lb_dst` and `lb_src` maps: (address, port, IP protocol).
///
/// Mirrors `struct lb_key` in `bpf/redirect.bpf.c`: 16 address bytes (IPv4 as `::ffff:a.b.c.d`),
/// the port in network byte order, the protocol number, then the family (4 or 6). 20 bytes,
/// no padding, so the kernel hashes exactly the bytes the XDP program builds.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LbKey {
    addr: [u8; 16],
    port: [u8; 2],
    proto: u8,
    family: u8,
}

impl LbKey {
    /// A key for an IPv4 address; `port` in host order (TCP/UDP port, as users write it).
    pub fn v4(addr: Ipv4Addr, port: u16, proto: u8) -> LbKey {
        LbKey {
            addr: addr.to_ipv6_mapped().octets(),
            port: port.to_be_bytes(),
            proto,
            family: FAMILY_V4,
        }
    }

    /// A key for an IPv6 address; `port` in host order.
    pub fn v6(addr: Ipv6Addr, port: u16, proto: u8) -> LbKey {
        LbKey {
            addr: addr.octets(),
            port: port.to_be_bytes(),
            proto,
            family: FAMILY_V6,
        }
    }

    /// A key for either address family.
    pub fn new(addr: IpAddr, port: u16, proto: u8) -> LbKey {
        match addr {
            IpAddr::V4(v4) => LbKey::v4(v4, port, proto),
            IpAddr::V6(v6) => LbKey::v6(v6, port, proto),
        }
    }

    /// The address, as the family says (an IPv4 key gives back an [`IpAddr::V4`]).
    pub fn addr(&self) -> IpAddr {
        let v6 = Ipv6Addr::from(self.addr);
        match (self.family, v6.to_ipv4_mapped()) {
            (FAMILY_V4, Some(v4)) => IpAddr::V4(v4),
            _ => IpAddr::V6(v6),
        }
    }

    /// The port in host order.
    pub fn port(&self) -> u16 {
        u16::from_be_bytes(self.port)
    }

    /// The IP protocol number (6 TCP, 17 UDP).
    pub fn proto(&self) -> u8 {
        self.proto
    }

    /// 4 or 6.
    pub fn family(&self) -> u8 {
        self.family
    }

    /// The 20 bytes the kernel hashes, in `struct lb_key` order.
    pub fn as_bytes(&self) -> [u8; 20] {
        let mut out = [0u8; 20];
        out[..16].copy_from_slice(&self.addr);
        out[16..18].copy_from_slice(&self.port);
        out[18] = self.proto;
        out[19] = self.family;
        out
    }
}

// SAFETY: `LbKey` is `repr(C)` and made only of `u8` and `[u8; N]` fields (alignment 1), so it
// has no padding bytes (size 20 = 16 + 2 + 1 + 1, checked by a unit test) and every bit pattern
// is a valid value. aya may therefore copy it to and from kernel memory as raw bytes.
unsafe impl aya::Pod for LbKey {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lb_key_is_twenty_bytes_without_padding_like_the_c_struct() {
        assert_eq!(std::mem::size_of::<LbKey>(), 20);
        assert_eq!(std::mem::align_of::<LbKey>(), 1);
    }

    #[test]
    fn v4_keys_hold_ipv4_mapped_addresses_and_network_order_ports() {
        let key = LbKey::v4(Ipv4Addr::new(198, 18, 0, 1), 8080, 6);
        let bytes = key.as_bytes();
        assert_eq!(&bytes[..10], &[0u8; 10]);
        assert_eq!(&bytes[10..12], &[0xff, 0xff]);
        assert_eq!(&bytes[12..16], &[198, 18, 0, 1]);
        assert_eq!(&bytes[16..18], &[0x1f, 0x90]);
        assert_eq!(bytes[18], 6);
        assert_eq!(bytes[19], FAMILY_V4);
        assert_eq!(key.addr(), IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)));
        assert_eq!(key.port(), 8080);
    }

    #[test]
    fn v6_keys_hold_the_address_as_is() {
        let addr: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let key = LbKey::v6(addr, 53, 17);
        assert_eq!(&key.as_bytes()[..16], &addr.octets());
        assert_eq!(key.family(), FAMILY_V6);
        assert_eq!(key.addr(), IpAddr::V6(addr));
        assert_eq!(key.proto(), 17);
    }

    #[test]
    fn an_ipv4_key_differs_from_the_same_address_written_as_mapped_ipv6() {
        let v4 = Ipv4Addr::new(198, 18, 0, 1);
        assert_ne!(LbKey::v4(v4, 80, 6), LbKey::v6(v4.to_ipv6_mapped(), 80, 6));
    }
}
