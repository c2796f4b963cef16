//! Typed, validated service specifications: what the API accepted, independent of its JSON shape.

use std::fmt;
use std::net::IpAddr;

/// The transport protocol of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// The name loxilb uses on the wire and in URLs.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What identifies a service: loxilb keys rules by external IP, port and protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// IPv4 or IPv6; an IPv6 address may front IPv4 endpoints (NAT64).
    pub external_ip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.external_ip {
            IpAddr::V4(a) => write!(f, "{a}:{}/{}", self.port, self.protocol),
            IpAddr::V6(a) => write!(f, "[{a}]:{}/{}", self.port, self.protocol),
        }
    }
}

/// How the load balancer rewrites packets (loxilb's `mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NatMode {
    /// mode 0: the destination is rewritten, the endpoint sees the client's address.
    Dnat,
    /// mode 1: the source is also rewritten, to the LB's own address toward the endpoint.
    OneArm,
    /// mode 2: the source is also rewritten, to the VIP.
    FullNat,
    /// mode 3: only the MAC is rewritten; the endpoint holds the VIP and answers directly.
    Dsr,
}

impl NatMode {
    /// loxilb's number for the mode.
    pub fn number(self) -> i64 {
        match self {
            NatMode::Dnat => 0,
            NatMode::OneArm => 1,
            NatMode::FullNat => 2,
            NatMode::Dsr => 3,
        }
    }
}

/// How a new flow picks its endpoint (loxilb's `sel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Selection {
    /// sel 0: strict rotation over the endpoints.
    RoundRobin,
    /// sel 1: consistent hash (Maglev) of the flow's addresses and ports.
    Hash,
    /// sel 2: by endpoint weight, deterministically (weights 80/20 give 80 % / 20 %).
    Priority,
    /// sel 3: a client address sticks to one endpoint for the inactivity timeout.
    Persist,
    /// sel 4: the endpoint with the fewest open flows.
    LeastConnections,
}

impl Selection {
    /// loxilb's number for the algorithm.
    pub fn number(self) -> i64 {
        match self {
            Selection::RoundRobin => 0,
            Selection::Hash => 1,
            Selection::Priority => 2,
            Selection::Persist => 3,
            Selection::LeastConnections => 4,
        }
    }
}

/// One backend of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EndpointSpec {
    /// The service's family, or IPv4 behind an IPv6 service (NAT64).
    pub ip: IpAddr,
    pub target_port: u16,
    pub weight: u8,
}

/// A validated load-balancer rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// loxilb's rule key; `key.port` is the first port of the range.
    pub key: ServiceKey,
    /// The last destination port the rule covers (loxilb's `portMax`); `key.port` for a
    /// single port. Every port of `key.port..=port_max` reaches the same endpoints, each
    /// rewritten to the endpoint's `targetPort`, as loxilb does.
    pub port_max: u16,
    /// loxilb's `name`; may be empty.
    pub name: String,
    pub mode: NatMode,
    pub selection: Selection,
    /// Never empty: validation refuses a rule without endpoints.
    pub endpoints: Vec<EndpointSpec>,
    /// Seconds of inactivity after which an established flow is forgotten (loxilb's
    /// `inactiveTimeOut`; 0 in the request means the default).
    pub inactive_timeout_secs: u32,
    /// Sources allowed to open flows (loxilb's `allowedSources`); empty allows every source.
    pub allowed_sources: Vec<IpPrefix>,
    /// loxilb's `block` (non-zero): no new flows; established ones continue.
    pub block_new_flows: bool,
    /// loxilb's `monitor` and probe settings: endpoints are probed and skipped for new flows
    /// while down. `None` when `monitor` is off.
    pub monitor: Option<ProbeSpec>,
    /// loxilb's `bgp`: the external address is advertised to the BGP neighbours as a host
    /// route while the rule exists.
    pub bgp: bool,
    /// loxilb's `secondaryIPs` (SCTP only, at most [`MAX_SECONDARY_IPS`], the external
    /// address's family, sorted): further addresses of the service that a multi-homed SCTP
    /// association may use as paths. Each takes the rule's ports as the external address does.
    pub secondary_ips: Vec<IpAddr>,
    /// What established flows do when a health probe marks their endpoint down
    /// (`onEndpointDown`, oxlb's own).
    pub on_endpoint_down: OnEndpointDown,
}

/// What a rule's established flows do when a health probe marks their endpoint down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum OnEndpointDown {
    /// They continue until they end or time out (loxilb's behaviour).
    #[default]
    Keep,
    /// They end at their next packet (a TCP client gets a RST).
    Reset,
}

impl OnEndpointDown {
    /// The API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            OnEndpointDown::Keep => "keep",
            OnEndpointDown::Reset => "reset",
        }
    }
}

impl ServiceSpec {
    /// The destination ports the rule covers.
    pub fn ports(&self) -> std::ops::RangeInclusive<u16> {
        self.key.port..=self.port_max
    }

    /// The external address followed by the secondary ones: every address the rule's ports
    /// are served on.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        std::iter::once(self.key.external_ip).chain(self.secondary_ips.iter().copied())
    }
}

/// The most secondary addresses a rule may have, as in loxilb (`LLB_MAX_MHOSTS`).
pub const MAX_SECONDARY_IPS: usize = 3;

/// The most ports one rule may cover. Every port of a range is one key of the XDP program's
/// destination map, which holds 65 536 keys for all rules together, and one entry of the
/// snapshot's service map; 1024 keeps one rule under 2 % of that map while covering the uses
/// ranges serve (media, passive FTP, game servers: tens to hundreds of ports).
pub const MAX_PORT_RANGE: u32 = 1024;

/// How an endpoint is probed (loxilb's `probetype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    /// A TCP connection is opened and closed.
    Tcp,
    /// A datagram is sent; an answer (containing `response`, if set) must come back.
    Udp,
    /// `GET request` answered with a 2xx or 3xx status (and a body containing `response`).
    Http,
    /// As `Http`, over TLS; the endpoint's certificate is not verified (as loxilb does).
    Https,
    /// An ICMP echo request is answered; the port, `request` and `response` are ignored.
    Ping,
    /// Monitored, but never probed: every endpoint stays up.
    None,
}

impl ProbeKind {
    /// The name loxilb uses on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeKind::Tcp => "tcp",
            ProbeKind::Udp => "udp",
            ProbeKind::Http => "http",
            ProbeKind::Https => "https",
            ProbeKind::Ping => "ping",
            ProbeKind::None => "none",
        }
    }
}

/// A validated health probe of a service's endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProbeSpec {
    pub kind: ProbeKind,
    /// The port probed; 0 probes each endpoint's `targetPort`. Kept but unused for ping.
    pub port: u16,
    /// http, https: the path to GET (empty: `/`); udp: the payload to send (empty: one zero
    /// byte).
    pub request: String,
    /// A substring the answer (http, https: its body) must contain; empty accepts any answer.
    pub response: String,
    /// Seconds to wait for one probe's answer; never 0.
    pub timeout_secs: u32,
    /// Consecutive failures that take an endpoint down; never 0.
    pub retries: u32,
}

impl ProbeSpec {
    /// The port probed on `endpoint`.
    pub fn port_of(&self, endpoint: &EndpointSpec) -> u16 {
        if self.port == 0 {
            endpoint.target_port
        } else {
            self.port
        }
    }
}

/// An IPv4 or IPv6 prefix such as `198.18.0.0/24` or `fd00::/8`; host bits are zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpPrefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl IpPrefix {
    /// The network and mask of an IPv4 prefix.
    pub fn v4(self) -> Option<(u32, u32)> {
        let IpAddr::V4(a) = self.addr else {
            return None;
        };
        let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
        Some((u32::from(a) & mask, mask))
    }

    /// The network and mask of an IPv6 prefix.
    pub fn v6(self) -> Option<(u128, u128)> {
        let IpAddr::V6(a) = self.addr else {
            return None;
        };
        let mask = u128::MAX
            .checked_shl(128 - u32::from(self.len))
            .unwrap_or(0);
        Some((u128::from(a) & mask, mask))
    }

    pub fn contains(self, ip: IpAddr) -> bool {
        match (ip, self.v4(), self.v6()) {
            (IpAddr::V4(ip), Some((net, mask)), _) => u32::from(ip) & mask == net,
            (IpAddr::V6(ip), _, Some((net, mask))) => u128::from(ip) & mask == net,
            _ => false,
        }
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Probe timeout used when a request leaves `probeTimeout` at 0.
pub const DEFAULT_PROBE_TIMEOUT_SECS: u32 = 1;
/// Consecutive failures used when a request leaves `probeRetries` at 0.
pub const DEFAULT_PROBE_RETRIES: u32 = 2;

/// kube-loxilb's default inactivity timeout, used when a request leaves it at 0.
pub const DEFAULT_INACTIVE_TIMEOUT_SECS: u32 = 1800;
