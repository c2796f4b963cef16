//! Loads the XDP program that steers load-balancer traffic into AF_XDP sockets, attaches it to
//! the appliance's interfaces, and keeps its maps (VIP keys, endpoint keys, sockets) in sync.
//!
//! The program (`bpf/redirect.bpf.c`) redirects a packet to the AF_XDP socket of its
//! (interface, RX queue) when its destination is a key of `lb_dst` (a VIP) or its source is a
//! key of `lb_src` (an endpoint answering in DNAT mode); everything else goes to the kernel.
//!
//! Attachment uses a BPF link (`bpf_link_create`, Linux 5.9+): the kernel detaches the program
//! when the link's file descriptor closes, so a crashed or killed process leaves no XDP program
//! behind, and dropping [`XdpRedirect`] detaches it from every interface.
#![deny(unsafe_code)]

mod error;
mod key;
mod link_query;
mod redirect;

pub use error::XdpError;
pub use key::{LbKey, FAMILY_V4, FAMILY_V6};
pub use redirect::{AttachMode, AttachedInterface, XdpRedirect, XdpStats};

/// XSKMAP slots per interface: RX queue ids 0..64.
pub const MAX_QUEUES_PER_IFACE: u32 = 64;
/// Interfaces one [`XdpRedirect`] can attach to (XSKMAP has `MAX_IFACES * MAX_QUEUES_PER_IFACE`
/// entries).
pub const MAX_IFACES: u32 = 4;
/// Capacity of each of `lb_dst` and `lb_src` (`max_entries` in the C program).
pub const MAX_KEYS: usize = 65_536;
