//! The immutable rule snapshot that workers read: services, their endpoints and next hops.
//!
//! The control plane compiles a new `Snapshot` on every change and publishes it atomically; a
//! worker loads it once per RX batch and never sees a half-applied change.

use crate::select::{Algorithm, EndpointKey, SelectorError, ServiceSelector, WeightedEndpoint};
use hashbrown::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// IP protocol numbers the engine handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Proto {
    Tcp = 6,
    Udp = 17,
    Sctp = 132,
}

impl Proto {
    pub fn from_ip_proto(p: u8) -> Option<Proto> {
        match p {
            6 => Some(Proto::Tcp),
            17 => Some(Proto::Udp),
            132 => Some(Proto::Sctp),
            _ => None,
        }
    }
}

/// Destination that identifies a service: VIP, port, protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// An IPv4 or IPv6 address; an IPv6 VIP may front IPv4 endpoints (NAT64).
    pub vip: IpAddr,
    pub port: u16,
    pub proto: Proto,
}

/// How packets of a service are rewritten (loxilb's `mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatMode {
    /// Destination rewritten; the endpoint sees the client's address and answers through us.
    Dnat,
    /// Destination rewritten and source rewritten to our own address on the interface toward
    /// the endpoint, so endpoints need no route back through us.
    OneArm,
    /// Destination rewritten and source rewritten to the VIP (or the service's SNAT address).
    FullNat,
    /// Only the MAC rewritten: the endpoint holds the VIP itself and answers the client
    /// directly; we see the client's direction only.
    Dsr,
}

impl NatMode {
    /// Every mode, for code and tests that must cover them all.
    pub const ALL: [NatMode; 4] = [
        NatMode::Dnat,
        NatMode::OneArm,
        NatMode::FullNat,
        NatMode::Dsr,
    ];

    /// Whether the source is translated, so replies come back to an address and port we chose.
    pub fn translates_source(self) -> bool {
        matches!(self, NatMode::OneArm | NatMode::FullNat)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub addr: IpAddr,
    pub port: u16,
    pub weight: u8,
}

/// What a service's established flows do when a health probe marks their endpoint down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnEndpointDown {
    /// They continue until they end or time out, as in loxilb: a probe can fail while the
    /// endpoint still serves its connections (a restart of the probed port, a busy endpoint).
    #[default]
    Keep,
    /// They end at their next packet, so clients find out at once instead of waiting on an
    /// endpoint that may be gone: a client's TCP segment is answered with a RST from the VIP,
    /// a client's UDP datagram opens a new flow to a live endpoint, an SCTP packet is dropped
    /// (the association restarts with an INIT); the endpoint's own packets are dropped.
    Reset,
}

#[derive(Debug, Clone)]
pub struct Service {
    /// The rule's key: its first port. Selection state, per-endpoint counters and deletion go
    /// by this key whichever port of the range a packet came to.
    pub key: ServiceKey,
    /// The last destination port of the rule (loxilb's `portMax`); `key.port` for one port.
    /// Every port of the range maps to the endpoint's own port, as in loxilb.
    pub port_max: u16,
    pub name: String,
    pub mode: NatMode,
    /// Endpoint selection: built once per publication (a Maglev table for hashing), shared by
    /// every worker; its endpoint indices are those of `endpoints`.
    pub selector: Arc<ServiceSelector>,
    pub endpoints: Vec<Endpoint>,
    /// Whether each endpoint (same index as `endpoints`) may take new flows: false while its
    /// health probe says it is down. What its established flows do then is
    /// `on_endpoint_down`.
    pub live: Vec<bool>,
    pub on_endpoint_down: OnEndpointDown,
    /// Idle time after which an established flow is forgotten.
    pub inactive_timeout: Duration,
    /// Full NAT: the source address written into requests; the VIP when not set (an IPv6
    /// VIP in front of IPv4 endpoints translates to our own IPv4 address toward them).
    pub snat_addr: Option<IpAddr>,
    /// IPv4 sources allowed to open flows as (network, mask). When this and
    /// `allowed_sources_v6` are both empty every source is allowed; otherwise only a source
    /// inside one of the prefixes of its own family.
    pub allowed_sources: Vec<(u32, u32)>,
    /// IPv6 sources allowed to open flows as (network, mask).
    pub allowed_sources_v6: Vec<(u128, u128)>,
    /// No new flows (loxilb's `block`); established flows continue.
    pub block_new_flows: bool,
    /// Further addresses of the service (loxilb's `secondaryIPs`, SCTP only), in the VIP's
    /// family. Each is a key of `Snapshot::services` on every port of the rule, mapping to this
    /// service; see `sctp_multihome` for what the engine does with them.
    pub secondaries: Vec<IpAddr>,
}

impl Service {
    /// Whether `src` may open a flow to this service.
    pub fn allows(&self, src: IpAddr) -> bool {
        if self.allowed_sources.is_empty() && self.allowed_sources_v6.is_empty() {
            return true;
        }
        match src {
            IpAddr::V4(v4) => {
                let ip = u32::from(v4);
                self.allowed_sources
                    .iter()
                    .any(|&(net, mask)| ip & mask == net)
            }
            IpAddr::V6(v6) => {
                let ip = u128::from(v6);
                self.allowed_sources_v6
                    .iter()
                    .any(|&(net, mask)| ip & mask == net)
            }
        }
    }

    /// A service whose selector is built from `endpoints` with the default Maglev table size.
    pub fn new(
        key: ServiceKey,
        name: String,
        mode: NatMode,
        algorithm: Algorithm,
        endpoints: Vec<Endpoint>,
        inactive_timeout: Duration,
    ) -> Result<Service, SelectorError> {
        let weighted: Vec<WeightedEndpoint> = endpoints
            .iter()
            .map(|e| WeightedEndpoint {
                key: EndpointKey::new(e.addr, e.port),
                weight: e.weight,
            })
            .collect();
        let selector =
            ServiceSelector::new(algorithm, &weighted, crate::select::DEFAULT_TABLE_SIZE)?;
        Ok(Service {
            key,
            port_max: key.port,
            name,
            mode,
            selector: Arc::new(selector),
            live: vec![true; endpoints.len()],
            endpoints,
            inactive_timeout,
            snat_addr: None,
            allowed_sources: Vec::new(),
            allowed_sources_v6: Vec::new(),
            block_new_flows: false,
            secondaries: Vec::new(),
            on_endpoint_down: OnEndpointDown::default(),
        })
    }
}

/// Where a packet to some address leaves: interface and the two MACs to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextHop {
    pub ifindex: u32,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
}

/// Ports the source-translating modes allocate from, fixed for the life of the process. The
/// XDP program steers replies to these ports on our addresses; they must be kept out of the
/// kernel's own ephemeral range (the appliance reserves them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl Default for PortRange {
    fn default() -> Self {
        PortRange {
            first: 40000,
            last: 49999,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Increases with every publication; lets workers notice a change cheaply.
    pub generation: u64,
    /// Services by destination: a rule covering a port range appears once per port of it,
    /// each entry a copy with the rule's own `key` (they share the selector), so a new flow
    /// finds its rule with one lookup whichever port it came to, as fast as a single port.
    pub services: HashMap<ServiceKey, Service>,
    /// Every VIP address, whatever its ports: ICMP echo to them is answered.
    pub vips: hashbrown::HashSet<IpAddr>,
    /// Resolved next hops by destination (endpoint) address. A missing entry means the
    /// neighbour is not resolved yet: the worker hands the packet to the kernel instead.
    pub next_hops: HashMap<IpAddr, NextHop>,
    /// Our own address on the route toward each endpoint (one-arm's source), known as soon as
    /// the route is, even before the neighbour's MAC. Same family as the endpoint.
    pub sources: HashMap<IpAddr, IpAddr>,
    /// The IP MTU of each interface frames may leave by, by ifindex. A packet bigger than its
    /// egress interface's MTU with DF set earns its sender an ICMP "fragmentation needed";
    /// a missing entry is not checked.
    pub link_mtus: HashMap<u32, u16>,
    /// The distinct values of `sources`: our own addresses toward the endpoints. An endpoint's
    /// packet to one of them without a flow is the host's own connection (a health probe).
    pub own_addrs: hashbrown::HashSet<IpAddr>,
}
