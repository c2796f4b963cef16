//! Errors of loading, attaching and programming the XDP redirect program.

use std::io;

/// Anything that can go wrong in [`crate::XdpRedirect`]. Messages say what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    /// The kernel refused the program or its maps.
    #[error(
        "loading the XDP program into the kernel failed: {0}. Run as root (or with CAP_BPF, \
         CAP_NET_ADMIN and CAP_PERFMON) on Linux 5.9 or newer"
    )]
    Load(#[source] Box<aya::EbpfError>),

    /// The embedded object lacks a map or program the loader expects (a build mismatch).
    #[error(
        "the embedded XDP object has no {what} `{name}`: bpf/redirect.bpf.c and src/ disagree; \
         rebuild oxlb-xdp"
    )]
    ObjectMismatch {
        what: &'static str,
        name: &'static str,
    },

    /// The kernel refused to load the program.
    #[error("the kernel rejected the XDP program `oxlb_redirect`: {0}")]
    Verify(#[source] Box<aya::programs::ProgramError>),

    /// No interface was given.
    #[error("no interface given: name at least one interface to attach XDP to")]
    NoInterfaces,

    /// More interfaces than XSKMAP slots.
    #[error("{count} interfaces given, but at most {max} are supported")]
    TooManyInterfaces { count: usize, max: u32 },

    /// The same interface twice.
    #[error("interface `{name}` is listed twice; list each interface once")]
    DuplicateInterface { name: String },

    /// The interface does not exist here.
    #[error(
        "interface `{name}` does not exist in this network namespace; check the name with \
         `ip link show`"
    )]
    UnknownInterface { name: String },

    /// Another XDP program already runs on the interface.
    #[error(
        "interface `{name}` already has an XDP program attached{detail}; oxlb will not replace \
         it. See it with `ip link show dev {name}` (and `bpftool net`); if nothing needs it, \
         remove it with `ip link set dev {name} xdp off` and start again"
    )]
    AlreadyAttached { name: String, detail: String },

    /// Asking the kernel about the interface failed.
    #[error("asking the kernel (rtnetlink) about interface `{name}` failed: {source}")]
    Query {
        name: String,
        #[source]
        source: io::Error,
    },

    /// Neither native nor generic attach worked.
    #[error(
        "attaching XDP to `{name}` failed: native mode: {native}; generic mode: {generic}. \
         Check that the interface is up and its MTU fits XDP (`ip link show dev {name}`)"
    )]
    Attach {
        name: String,
        native: Box<aya::programs::ProgramError>,
        generic: Box<aya::programs::ProgramError>,
    },

    /// A socket was registered for an interface oxlb is not attached to.
    #[error(
        "interface index {ifindex} is not one oxlb attached XDP to (attached: {attached}); \
         register sockets only for interfaces passed to `XdpRedirect::attach`"
    )]
    NotAttached { ifindex: u32, attached: String },

    /// The queue id does not fit in the XSKMAP layout.
    #[error(
        "queue {queue} is out of range: at most {max} queues per interface are supported; \
         reduce the queue count with `ethtool -L <dev> combined N`"
    )]
    QueueOutOfRange { queue: u32, max: u32 },

    /// More keys than the map holds.
    #[error(
        "{count} keys for map `{map}` exceed its capacity of {max}; reduce the number of \
         services/endpoints or raise max_entries in bpf/redirect.bpf.c"
    )]
    TooManyKeys {
        map: &'static str,
        count: usize,
        max: usize,
    },

    /// A map operation failed.
    #[error("updating the BPF map `{map}` failed: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}
