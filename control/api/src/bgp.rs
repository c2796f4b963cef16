//! BGP configuration in loxilb's shapes (`POST /netlox/v1/config/bgp/global`, `POST
//! /config/bgp/neigh`, `DELETE /config/bgp/neigh/{ip_address}`, `GET /config/bgp/neigh/all`)
//! and its validation into typed values.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use utoipa::ToSchema;

/// The port BGP uses unless told otherwise; loxilb's `0` means it.
pub const BGP_PORT: u16 = 179;
/// RFC 6793's stand-in for four-octet AS numbers; never a speaker's own AS.
const AS_TRANS: i64 = 23456;

/// The body of `POST /netlox/v1/config/bgp/global` (loxilb's `BGPGlobalConfig`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(
    as = BGPGlobalConfig,
    example = json!({"localAs": 65001, "routerId": "198.18.0.1"})
)]
pub struct BgpGlobalEntry {
    /// This speaker's AS number, 1 to 4294967295 (not 23456, AS_TRANS).
    #[serde(rename = "localAs")]
    #[schema(minimum = 1, maximum = 4294967295_i64)]
    pub local_as: i64,
    /// This speaker's BGP identifier, an IPv4 address other than 0.0.0.0.
    #[serde(rename = "routerId")]
    #[schema(format = Ipv4)]
    pub router_id: String,
    /// The port neighbours' connections are accepted on; 0 (or absent) means 179.
    #[serde(rename = "listenPort", default, skip_serializing_if = "is_zero")]
    #[schema(minimum = 0, maximum = 65535)]
    pub listen_port: i64,
    /// loxilb's next-hop-self policy. The routes oxlb advertises are its own, so their next
    /// hop is always this speaker's address; accepted and kept for loxilb's clients. loxilb's
    /// swagger spells it `SetNextHopSelf`, which is accepted too.
    #[serde(
        rename = "setNextHopSelf",
        alias = "SetNextHopSelf",
        default,
        skip_serializing_if = "is_false"
    )]
    pub set_next_hop_self: bool,
    /// oxlb's own: the NEXT_HOP of IPv4 VIPs instead of each session's local address; needed
    /// to advertise IPv4 VIPs over IPv6 sessions. Empty (or absent): the local address.
    #[serde(
        rename = "nextHopIPv4",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    #[schema(format = Ipv4)]
    pub next_hop_ipv4: String,
    /// oxlb's own: the NEXT_HOP of IPv6 VIPs instead of each session's local address; needed
    /// to advertise IPv6 VIPs over IPv4 sessions. Empty (or absent): the local address.
    #[serde(
        rename = "nextHopIPv6",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    #[schema(format = Ipv6)]
    pub next_hop_ipv6: String,
}

/// The body of `POST /netlox/v1/config/bgp/neigh` (loxilb's `BGPNeigh`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(
    as = BGPNeigh,
    example = json!({"ipAddress": "198.18.1.2", "remoteAs": 65002})
)]
pub struct BgpNeighEntry {
    /// The neighbour's address (IPv4 or IPv6).
    #[serde(rename = "ipAddress")]
    pub ip_address: String,
    /// The neighbour's AS: equal to `localAs` for iBGP, another for eBGP.
    #[serde(rename = "remoteAs")]
    #[schema(minimum = 1, maximum = 4294967295_i64)]
    pub remote_as: i64,
    /// The neighbour's port; 0 (or absent) means 179.
    #[serde(rename = "remotePort", default, skip_serializing_if = "is_zero")]
    #[schema(minimum = 0, maximum = 65535)]
    pub remote_port: i64,
    /// eBGP to a neighbour more than one hop away: the session's TTL is 255 instead of 1.
    #[serde(rename = "setMultiHop", default, skip_serializing_if = "is_false")]
    pub set_multi_hop: bool,
}

/// One item of `GET /netlox/v1/config/bgp/neigh/all` (loxilb's `BGPNeighGetEntry`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = BGPNeighGetEntry)]
pub struct BgpNeighGetEntry {
    #[serde(rename = "ipAddress")]
    pub ip_address: String,
    #[serde(rename = "remoteAs")]
    pub remote_as: i64,
    /// The session's state as GoBGP names it: `IDLE`, `CONNECT`, `ACTIVE`, `OPENSENT`,
    /// `OPENCONFIRM` or `ESTABLISHED`.
    pub state: String,
    /// How long the session has been up (or down, since it last was up), `HH:MM:SS`, or
    /// `never`.
    pub updowntime: String,
}

/// The body of `GET /netlox/v1/config/bgp/neigh/all`; loxilb names the array `bgpNeiAttr`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BgpNeighList {
    #[serde(rename = "bgpNeiAttr", default)]
    pub bgp_nei_attr: Vec<BgpNeighGetEntry>,
}

/// The validated global configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BgpGlobal {
    pub local_as: u32,
    pub router_id: Ipv4Addr,
    pub listen_port: u16,
    pub next_hop_self: bool,
    pub next_hop_v4: Option<Ipv4Addr>,
    pub next_hop_v6: Option<Ipv6Addr>,
}

/// A validated neighbour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BgpNeighbor {
    /// IPv4-mapped IPv6 addresses are kept as IPv4.
    pub addr: IpAddr,
    pub remote_as: u32,
    pub remote_port: u16,
    pub multihop: bool,
}

/// The BGP part of the desired state: the global configuration (none until it is posted) and
/// the neighbours by address, one per address as loxilb keeps them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BgpConfig {
    pub global: Option<BgpGlobal>,
    pub neighbors: BTreeMap<IpAddr, BgpNeighbor>,
}

impl BgpConfig {
    pub fn is_empty(&self) -> bool {
        self.global.is_none() && self.neighbors.is_empty()
    }
}

/// Why a BGP body was refused; each message names the field and what to send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BgpError {
    #[error(
        "localAs {0} is not a usable AS number: send 1 to 4294967295, except 23456 (AS_TRANS)"
    )]
    LocalAs(i64),
    #[error(
        "routerId {0:?} is not usable: send an IPv4 address other than 0.0.0.0, such as 198.18.0.1"
    )]
    RouterId(String),
    #[error("listenPort {0} is not a port: send 1 to 65535, or 0 for 179")]
    ListenPort(i64),
    #[error("nextHopIPv4 {0:?} is not a unicast IPv4 address: send one, or leave it empty")]
    NextHopV4(String),
    #[error("nextHopIPv6 {0:?} is not a unicast IPv6 address: send one, or leave it empty")]
    NextHopV6(String),
    #[error(
        "ipAddress {0:?} is not a usable neighbour address: send a unicast IPv4 or IPv6 address"
    )]
    Address(String),
    #[error(
        "remoteAs {0} is not a usable AS number: send 1 to 4294967295, except 23456 (AS_TRANS)"
    )]
    RemoteAs(i64),
    #[error("remotePort {0} is not a port: send 1 to 65535, or 0 for 179")]
    RemotePort(i64),
}

impl BgpError {
    /// The JSON name of the offending field.
    pub fn field(&self) -> &'static str {
        match self {
            BgpError::LocalAs(_) => "localAs",
            BgpError::RouterId(_) => "routerId",
            BgpError::ListenPort(_) => "listenPort",
            BgpError::NextHopV4(_) => "nextHopIPv4",
            BgpError::NextHopV6(_) => "nextHopIPv6",
            BgpError::Address(_) => "ipAddress",
            BgpError::RemoteAs(_) => "remoteAs",
            BgpError::RemotePort(_) => "remotePort",
        }
    }
}

/// An AS number as a speaker may use it, or `None`.
fn asn(v: i64) -> Option<u32> {
    u32::try_from(v).ok().filter(|&a| a != 0 && v != AS_TRANS)
}

fn port_or_default(v: i64) -> Option<u16> {
    match v {
        0 => Some(BGP_PORT),
        p => u16::try_from(p).ok(),
    }
}

/// Validates a `POST /config/bgp/global` body.
pub fn validate_bgp_global(e: &BgpGlobalEntry) -> Result<BgpGlobal, BgpError> {
    let local_as = asn(e.local_as).ok_or(BgpError::LocalAs(e.local_as))?;
    let router_id = e
        .router_id
        .trim()
        .parse::<Ipv4Addr>()
        .ok()
        .filter(|a| !a.is_unspecified())
        .ok_or_else(|| BgpError::RouterId(e.router_id.clone()))?;
    let listen_port = port_or_default(e.listen_port).ok_or(BgpError::ListenPort(e.listen_port))?;
    let next_hop_v4 = match e.next_hop_ipv4.trim() {
        "" => None,
        text => Some(
            text.parse::<Ipv4Addr>()
                .ok()
                .filter(|a| !(a.is_unspecified() || a.is_multicast() || a.is_broadcast()))
                .ok_or_else(|| BgpError::NextHopV4(e.next_hop_ipv4.clone()))?,
        ),
    };
    let next_hop_v6 = match e.next_hop_ipv6.trim() {
        "" => None,
        text => Some(
            text.parse::<Ipv6Addr>()
                .ok()
                .filter(|a| !(a.is_unspecified() || a.is_multicast()))
                .ok_or_else(|| BgpError::NextHopV6(e.next_hop_ipv6.clone()))?,
        ),
    };
    Ok(BgpGlobal {
        local_as,
        router_id,
        listen_port,
        next_hop_self: e.set_next_hop_self,
        next_hop_v4,
        next_hop_v6,
    })
}

/// Parses a neighbour address as the API and the delete path take it.
pub fn neighbor_address(text: &str) -> Result<IpAddr, BgpError> {
    let addr = text
        .trim()
        .parse::<IpAddr>()
        .map_err(|_| BgpError::Address(text.to_owned()))?
        .to_canonical();
    let unusable = addr.is_unspecified()
        || addr.is_multicast()
        || matches!(addr, IpAddr::V4(a) if a.is_broadcast());
    if unusable {
        return Err(BgpError::Address(text.to_owned()));
    }
    Ok(addr)
}

/// Validates a `POST /config/bgp/neigh` body.
pub fn validate_bgp_neighbor(e: &BgpNeighEntry) -> Result<BgpNeighbor, BgpError> {
    let addr = neighbor_address(&e.ip_address)?;
    let remote_as = asn(e.remote_as).ok_or(BgpError::RemoteAs(e.remote_as))?;
    let remote_port = port_or_default(e.remote_port).ok_or(BgpError::RemotePort(e.remote_port))?;
    Ok(BgpNeighbor {
        addr,
        remote_as,
        remote_port,
        multihop: e.set_multi_hop,
    })
}

/// Validates a `remoteAs` given to the delete path.
pub fn validate_remote_as(v: i64) -> Result<u32, BgpError> {
    asn(v).ok_or(BgpError::RemoteAs(v))
}

/// The body that posts `g` again, as the state file keeps it.
pub fn to_bgp_global_entry(g: &BgpGlobal) -> BgpGlobalEntry {
    BgpGlobalEntry {
        local_as: i64::from(g.local_as),
        router_id: g.router_id.to_string(),
        listen_port: if g.listen_port == BGP_PORT {
            0
        } else {
            i64::from(g.listen_port)
        },
        set_next_hop_self: g.next_hop_self,
        next_hop_ipv4: g.next_hop_v4.map(|a| a.to_string()).unwrap_or_default(),
        next_hop_ipv6: g.next_hop_v6.map(|a| a.to_string()).unwrap_or_default(),
    }
}

/// The body that posts `n` again, as the state file keeps it.
pub fn to_bgp_neigh_entry(n: &BgpNeighbor) -> BgpNeighEntry {
    BgpNeighEntry {
        ip_address: n.addr.to_string(),
        remote_as: i64::from(n.remote_as),
        remote_port: if n.remote_port == BGP_PORT {
            0
        } else {
            i64::from(n.remote_port)
        },
        set_multi_hop: n.multihop,
    }
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

fn is_false(v: &bool) -> bool {
    !*v
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn global(v: serde_json::Value) -> Result<BgpGlobal, BgpError> {
        validate_bgp_global(&serde_json::from_value(v).expect("the body parses"))
    }

    fn neigh(v: serde_json::Value) -> Result<BgpNeighbor, BgpError> {
        validate_bgp_neighbor(&serde_json::from_value(v).expect("the body parses"))
    }

    #[test]
    fn loxilbs_global_body_is_accepted_with_port_179_by_default_in_either_spelling() {
        let g = global(json!({"localAs": 65001, "routerId": "198.18.0.1", "SetNextHopSelf": true}))
            .unwrap();
        assert_eq!(
            g,
            BgpGlobal {
                local_as: 65001,
                router_id: Ipv4Addr::new(198, 18, 0, 1),
                listen_port: 179,
                next_hop_self: true,
                next_hop_v4: None,
                next_hop_v6: None,
            }
        );
        let back = serde_json::to_value(to_bgp_global_entry(&g)).unwrap();
        assert_eq!(
            back,
            json!({"localAs": 65001, "routerId": "198.18.0.1", "setNextHopSelf": true})
        );
        let g =
            global(json!({"localAs": 4200000000_u32, "routerId": "1.1.1.1", "listenPort": 1790}))
                .unwrap();
        assert_eq!((g.local_as, g.listen_port), (4_200_000_000, 1790));
    }

    #[test]
    fn unusable_global_values_are_refused_naming_their_field() {
        for (body, field) in [
            (json!({"localAs": 0, "routerId": "198.18.0.1"}), "localAs"),
            (
                json!({"localAs": 23456, "routerId": "198.18.0.1"}),
                "localAs",
            ),
            (
                json!({"localAs": 4294967296_i64, "routerId": "198.18.0.1"}),
                "localAs",
            ),
            (json!({"localAs": 65001, "routerId": "0.0.0.0"}), "routerId"),
            (json!({"localAs": 65001, "routerId": "fd00::1"}), "routerId"),
            (
                json!({"localAs": 65001, "routerId": "1.1.1.1", "nextHopIPv4": "fd00::1"}),
                "nextHopIPv4",
            ),
            (
                json!({"localAs": 65001, "routerId": "1.1.1.1", "nextHopIPv6": "198.18.0.1"}),
                "nextHopIPv6",
            ),
            (
                json!({"localAs": 65001, "routerId": "198.18.0.1", "listenPort": 65536}),
                "listenPort",
            ),
            (
                json!({"localAs": 65001, "routerId": "198.18.0.1", "listenPort": -1}),
                "listenPort",
            ),
        ] {
            let e = global(body.clone()).expect_err("refused");
            assert_eq!(e.field(), field, "{body}: {e}");
            assert!(e.to_string().starts_with(field), "{e}");
        }
        assert!(serde_json::from_value::<BgpGlobalEntry>(json!({"localAs": 1})).is_err());
        assert!(serde_json::from_value::<BgpGlobalEntry>(
            json!({"localAs": 1, "routerId": "1.1.1.1", "asn": 2})
        )
        .is_err());
    }

    #[test]
    fn a_neighbour_is_validated_and_a_mapped_ipv4_address_kept_as_ipv4() {
        let n = neigh(
            json!({"ipAddress": "::ffff:198.18.1.2", "remoteAs": 65002, "setMultiHop": true}),
        )
        .unwrap();
        assert_eq!(n.addr, "198.18.1.2".parse::<IpAddr>().unwrap());
        assert_eq!((n.remote_as, n.remote_port, n.multihop), (65002, 179, true));
        let v6 = neigh(json!({"ipAddress": "fd00:1::2", "remoteAs": 65002, "remotePort": 1179}))
            .unwrap();
        assert_eq!(
            serde_json::to_value(to_bgp_neigh_entry(&v6)).unwrap(),
            json!({"ipAddress": "fd00:1::2", "remoteAs": 65002, "remotePort": 1179})
        );
        for (body, field) in [
            (json!({"ipAddress": "198.18.1", "remoteAs": 1}), "ipAddress"),
            (json!({"ipAddress": "0.0.0.0", "remoteAs": 1}), "ipAddress"),
            (
                json!({"ipAddress": "224.0.0.5", "remoteAs": 1}),
                "ipAddress",
            ),
            (
                json!({"ipAddress": "198.18.1.2", "remoteAs": -5}),
                "remoteAs",
            ),
            (
                json!({"ipAddress": "198.18.1.2", "remoteAs": 1, "remotePort": 70000}),
                "remotePort",
            ),
        ] {
            assert_eq!(
                neigh(body.clone()).expect_err("refused").field(),
                field,
                "{body}"
            );
        }
    }
}
