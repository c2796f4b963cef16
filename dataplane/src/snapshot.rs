//! The immutable rule snapshot that workers read: services, their endpoints and next hops.
//!
//! The control plane compiles a new `Snapshot` on every change and publishes it atomically; a
//! worker loads it once per RX batch and never sees a half-applied change.

use hashbrown::HashMap;
use std::net::Ipv4Addr;
use std::time::Duration;

/// IP protocol numbers the engine handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Proto {
    Tcp = 6,
    Udp = 17,
}

impl Proto {
    pub fn from_ip_proto(p: u8) -> Option<Proto> {
        match p {
            6 => Some(Proto::Tcp),
            17 => Some(Proto::Udp),
            _ => None,
        }
    }
}

/// Destination that identifies a service: VIP, port, protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub vip: Ipv4Addr,
    pub port: u16,
    pub proto: Proto,
}

/// How packets of a service are rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatMode {
    Dnat,
}

/// How a new flow picks its endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    RoundRobin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub weight: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub key: ServiceKey,
    pub name: String,
    pub mode: NatMode,
    pub selection: Selection,
    pub endpoints: Vec<Endpoint>,
    /// Idle time after which an established flow is forgotten.
    pub inactive_timeout: Duration,
}

/// Where a packet to some IPv4 address leaves: interface and the two MACs to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextHop {
    pub ifindex: u32,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
}

#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Increases with every publication; lets workers notice a change cheaply.
    pub generation: u64,
    pub services: HashMap<ServiceKey, Service>,
    /// Resolved next hops by destination (endpoint) address. A missing entry means the
    /// neighbour is not resolved yet: the worker hands the packet to the kernel instead.
    pub next_hops: HashMap<Ipv4Addr, NextHop>,
}
