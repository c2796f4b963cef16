//! Typed, validated service specifications: what the API accepted, independent of its JSON shape.

use std::fmt;
use std::net::Ipv4Addr;

/// The transport protocol of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// The name loxilb uses on the wire and in URLs.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
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
    pub external_ip: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.external_ip, self.port, self.protocol)
    }
}

/// How the load balancer rewrites packets (loxilb's `mode`). This slice implements DNAT only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NatMode {
    /// mode 0: the destination is rewritten, the endpoint sees the client's address.
    Dnat,
}

/// How a new flow picks its endpoint (loxilb's `sel`). This slice implements round robin only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Selection {
    /// sel 0: strict rotation over the endpoints.
    RoundRobin,
}

/// One backend of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EndpointSpec {
    pub ip: Ipv4Addr,
    pub target_port: u16,
    pub weight: u8,
}

/// A validated load-balancer rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    pub key: ServiceKey,
    /// loxilb's `name`; may be empty.
    pub name: String,
    pub mode: NatMode,
    pub selection: Selection,
    /// Never empty: validation refuses a rule without endpoints.
    pub endpoints: Vec<EndpointSpec>,
    /// Seconds of inactivity after which an established flow is forgotten (loxilb's
    /// `inactiveTimeOut`; 0 in the request means the default).
    pub inactive_timeout_secs: u32,
}

/// kube-loxilb's default inactivity timeout, used when a request leaves it at 0.
pub const DEFAULT_INACTIVE_TIMEOUT_SECS: u32 = 1800;
