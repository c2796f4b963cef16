//! Finds, for a backend's IPv4 or IPv6 address, the output interface and the two MAC addresses
//! the AF_XDP workers write into the Ethernet header, by asking the kernel's routing and
//! neighbour tables over rtnetlink; asks the kernel to resolve a neighbour it does not know yet.
//!
//! One synchronous NETLINK_ROUTE socket, one request in flight at a time. The socket belongs to
//! the network namespace of the thread that opened it, so every answer is about that namespace.
//! Each receive is bounded by a socket timeout and each exchange by a deadline, so a kernel that
//! does not answer costs at most [`RECEIVE_TIMEOUT`] + [`EXCHANGE_DEADLINE`] and yields
//! [`NextHopError::Timeout`], never a hang.
//!
//! Requests are built with netlink-packet-route; answers are read as views over the kernel's
//! bytes (header fields and the few attributes that matter) instead of being decoded whole, so
//! an attribute newer than netlink-packet-route cannot make a whole link dump fail.
//!
//! Asking for resolution uses RTM_NEWNEIGH with NTF_USE (and NLM_F_CREATE, without NLM_F_EXCL
//! or NLM_F_REPLACE). In `neigh_add()` (net/core/neighbour.c, Linux 5.16 and later; behaviour
//! checked on 6.18 by tests/nexthop_netns.rs) that creates a missing entry in state NONE, leaves
//! an existing entry's state and link-layer address alone (NEIGH_UPDATE_F_USE only clears
//! NUD_PERMANENT, and permanent entries count as Ready, so they are never sent one), and calls
//! `neigh_event_send()`, which moves NONE/FAILED to INCOMPLETE and starts the ARP probes, as a
//! first packet to the neighbour would. Because that administrative update also rewrites
//! NTF_EXT_LEARNED and the NDA_FLAGS_EXT flags (managed), entries carrying those belong to
//! someone else and are left alone.
//!
//! IPv6 goes the same way, with neighbour solicitations instead of ARP. With no packet waiting
//! to copy a source address from, the kernel solicits from the interface's link-local address,
//! so nothing is sent while that address is still tentative (duplicate address detection, about
//! a second after the link comes up); the kernel's retry a second later is sent.

use std::{
    collections::HashMap,
    fmt, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd, AsRawFd},
    time::{Duration, Instant},
};

use netlink_packet_core::{
    NetlinkBuffer, NetlinkMessage, NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_CREATE,
    NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use netlink_packet_route::{
    address::{AddressMessage, AddressMessageBuffer},
    link::{LinkMessage, LinkMessageBuffer},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage},
    neighbour::{NeighbourMessageBuffer, NeighbourState},
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteMessageBuffer},
    AddressFamily, RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// How long one receive waits for the kernel.
pub const RECEIVE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one request/answer exchange (including a whole dump) may take.
pub const EXCHANGE_DEADLINE: Duration = Duration::from_secs(2);
/// How often a link dump the kernel marks as interrupted (NLM_F_DUMP_INTR) is retried.
const DUMP_ATTEMPTS: u32 = 3;

// Netlink control messages (linux/netlink.h).
const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_OVERRUN: u16 = 4;
const NLMSG_HDRLEN: usize = 16;
const NLMSGERR_ATTR_MSG: u16 = 1;

// rtnetlink (linux/rtnetlink.h, linux/if_link.h, linux/neighbour.h, linux/if_arp.h).
const RTM_NEWLINK: u16 = 16;
const RTM_NEWROUTE: u16 = 24;
const RTM_NEWNEIGH: u16 = 28;
const RTM_NEWADDR: u16 = 20;
const IFA_ADDRESS: u16 = 1;
const IFA_FLAGS: u16 = 8;
const RT_SCOPE_UNIVERSE: u8 = 0;
/// Address flags that make an address unusable as a source (linux/if_addr.h): DAD failed,
/// deprecated, tentative (DAD still running).
const IFA_F_UNUSABLE: u32 = 0x08 | 0x20 | 0x40;
const RTN_UNICAST: u8 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_VIA: u16 = 18;
const RTA_PREFSRC: u16 = 7;
const IFLA_ADDRESS: u16 = 1;
const IFLA_MTU: u16 = 4;
const ARPHRD_ETHER: u16 = 1;
const NDA_LLADDR: u16 = 2;
const NDA_FLAGS_EXT: u16 = 15;
const NTF_EXT_LEARNED: u8 = 0x10;

const NUD_INCOMPLETE: u16 = 0x01;
const NUD_REACHABLE: u16 = 0x02;
const NUD_STALE: u16 = 0x04;
const NUD_DELAY: u16 = 0x08;
const NUD_PROBE: u16 = 0x10;
const NUD_FAILED: u16 = 0x20;
const NUD_NOARP: u16 = 0x40;
const NUD_PERMANENT: u16 = 0x80;
/// States whose link-layer address may be used; STALE only means "not confirmed lately".
const NUD_USABLE: u16 =
    NUD_REACHABLE | NUD_STALE | NUD_DELAY | NUD_PROBE | NUD_PERMANENT | NUD_NOARP;

/// Where to send frames for one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    pub ifindex: u32,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// The gateway if the route has one
    pub gateway: Option<IpAddr>,
    /// Our own address the kernel would send from (the route's preferred source; for IPv6
    /// without one, the interface's first global address).
    pub source: Option<IpAddr>,
}

/// What the kernel knows about reaching one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    Ready(Resolved),
    /// Route known, neighbour not (yet) reachable: resolution was asked of the kernel.
    Pending {
        ifindex: u32,
        next_hop: IpAddr,
        /// Our own address toward it, already known from the route.
        source: Option<IpAddr>,
    },
    /// No route to the address. Also a blackhole, prohibit or unreachable route, and a route
    /// that does not forward (local, broadcast, multicast): nothing the workers can send to.
    NoRoute,
}

/// The rtnetlink request an error is about; shown in messages with the `ip` command that asks
/// the same question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetlinkRequest {
    /// RTM_GETROUTE for one address.
    Route(IpAddr),
    /// RTM_GETNEIGH for one neighbour.
    Neighbour { ifindex: u32, addr: IpAddr },
    /// RTM_NEWNEIGH with NTF_USE: "resolve this neighbour".
    ResolveNeighbour { ifindex: u32, addr: IpAddr },
    /// RTM_GETADDR dump of the IPv6 addresses of one interface.
    Ipv6Addresses(u32),
    /// RTM_GETLINK for one interface.
    Link(u32),
    /// RTM_GETLINK dump of all interfaces.
    LinkDump,
}

impl fmt::Display for NetlinkRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            NetlinkRequest::Route(addr) => {
                write!(f, "RTM_GETROUTE for {addr} (like `ip route get {addr}`)")
            }
            NetlinkRequest::Neighbour { ifindex, addr } => write!(
                f,
                "RTM_GETNEIGH for {addr} on interface index {ifindex} (like `ip neigh get {addr} \
                 dev <interface>`)"
            ),
            NetlinkRequest::ResolveNeighbour { ifindex, addr } => write!(
                f,
                "RTM_NEWNEIGH with NTF_USE (resolve) for {addr} on interface index {ifindex}"
            ),
            NetlinkRequest::Link(ifindex) => write!(
                f,
                "RTM_GETLINK for interface index {ifindex} (like `ip link show`)"
            ),
            NetlinkRequest::LinkDump => write!(f, "RTM_GETLINK dump (like `ip link show`)"),
            NetlinkRequest::Ipv6Addresses(ifindex) => write!(
                f,
                "RTM_GETADDR dump of IPv6 addresses for interface index {ifindex} (like `ip -6 \
                 addr show`)"
            ),
        }
    }
}

/// What can go wrong while resolving next hops. Every variant has a metric label
/// ([`NextHopError::label`]).
#[derive(Debug, thiserror::Error)]
pub enum NextHopError {
    /// The netlink socket could not be opened or set up.
    #[error(
        "cannot open a NETLINK_ROUTE socket to read the kernel's routes and neighbours: {0}; \
         check that the process may create netlink sockets (seccomp, LSM policy)"
    )]
    Socket(#[source] io::Error),

    /// A request could not be sent.
    #[error("sending {request} to the kernel failed: {source}")]
    Send {
        request: NetlinkRequest,
        #[source]
        source: io::Error,
    },

    /// An answer could not be received.
    #[error("receiving the kernel's answer to {request} failed: {source}")]
    Receive {
        request: NetlinkRequest,
        #[source]
        source: io::Error,
    },

    /// The kernel did not answer in time.
    #[error(
        "the kernel did not answer {request} within {} ms; the host may be overloaded or the \
         RTNL lock held for long (check `dmesg`); the next attempt asks again",
        waited.as_millis()
    )]
    Timeout {
        request: NetlinkRequest,
        waited: Duration,
    },

    /// The kernel refused a request.
    #[error("the kernel refused {request}: {source}{detail}{hint}")]
    Refused {
        request: NetlinkRequest,
        #[source]
        source: io::Error,
        /// The kernel's own explanation (extended ACK), prefixed with ": ", or empty.
        detail: String,
        /// What to do about it, prefixed with "; ", or empty.
        hint: &'static str,
    },

    /// The link table changed during every dump attempt.
    #[error(
        "the interface list kept changing while {request} ran ({attempts} attempts); the next \
         attempt asks again"
    )]
    DumpInterrupted {
        request: NetlinkRequest,
        attempts: u32,
    },

    /// An answer did not have the layout the kernel documents.
    #[error(
        "could not read the kernel's answer to {request}: {detail}; please report this with \
         the output of `uname -r`"
    )]
    Malformed {
        request: NetlinkRequest,
        detail: String,
    },

    /// The route leaves through an interface without an Ethernet address.
    #[error(
        "the route to {dst} leaves through interface index {ifindex}, which is not an Ethernet \
         interface (no MAC address); oxlb only reaches backends over Ethernet: check \
         `ip route get {dst}` and `ip link show`"
    )]
    NotEthernet { dst: IpAddr, ifindex: u32 },

    /// The route's next hop is an IPv6 address (an IPv4 route `via inet6 ...`).
    #[error(
        "the route to {dst} has an IPv6 next hop (`via inet6`), which oxlb does not support; \
         add an IPv4 route for it (check `ip route get {dst}`)"
    )]
    Ipv6NextHop { dst: IpAddr },

    /// A neighbour entry in a usable state carries no Ethernet address.
    #[error(
        "the kernel's neighbour entry for {next_hop} on interface index {ifindex} is {state} but \
         has no 6-byte link-layer address; check `ip neigh show {next_hop}` and replace the entry \
         with one that has a MAC (`ip neigh replace {next_hop} lladdr <mac> dev <interface>`)"
    )]
    NeighbourWithoutMac {
        next_hop: IpAddr,
        ifindex: u32,
        state: &'static str,
    },
}

impl NextHopError {
    /// The metric label of this error.
    pub fn label(&self) -> &'static str {
        match self {
            NextHopError::Socket(_) => "socket",
            NextHopError::Send { .. } => "send",
            NextHopError::Receive { .. } => "receive",
            NextHopError::Timeout { .. } => "timeout",
            NextHopError::Refused { .. } => "refused",
            NextHopError::DumpInterrupted { .. } => "dump_interrupted",
            NextHopError::Malformed { .. } => "malformed",
            NextHopError::NotEthernet { .. } => "not_ethernet",
            NextHopError::Ipv6NextHop { .. } => "ipv6_next_hop",
            NextHopError::NeighbourWithoutMac { .. } => "neighbour_without_mac",
        }
    }
}

/// Asks the kernel, over one netlink socket, how to reach backends. See the module docs.
pub struct NextHopResolver {
    socket: Socket,
    sequence: u32,
}

impl NextHopResolver {
    /// Opens the socket in the calling thread's network namespace.
    pub fn new() -> Result<Self, NextHopError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(NextHopError::Socket)?;
        socket.bind_auto().map_err(NextHopError::Socket)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(NextHopError::Socket)?;
        set_timeouts(&socket, RECEIVE_TIMEOUT).map_err(NextHopError::Socket)?;
        // Both only make errors smaller and more telling; a kernel without them still answers.
        let _ = socket.set_cap_ack(true);
        let _ = socket.set_ext_ack(true);
        Ok(NextHopResolver {
            socket,
            sequence: 0,
        })
    }

    /// Asks the kernel which route it would use for `dst` (RTM_GETROUTE for one address, like
    /// `ip route get`), then looks up the neighbour of the next hop (the gateway, or dst itself
    /// on a connected route) on the output interface, and the interface's own MAC.
    /// A neighbour in state REACHABLE/STALE/DELAY/PROBE/PERMANENT/NOARP counts as Ready
    /// (STALE is still a usable MAC, and the kernel is asked to re-confirm it);
    /// INCOMPLETE/FAILED/absent -> the kernel is asked to resolve
    /// it (RTM_NEWNEIGH with NTF_USE, see the module docs) and Pending is returned. An entry
    /// owned by someone else (externally learned or managed) is not asked about: its owner
    /// resolves it, and the answer stays Pending until it does.
    pub fn resolve(&mut self, dst: IpAddr) -> Result<Resolution, NextHopError> {
        let Some(mut route) = self.route(dst)? else {
            return Ok(Resolution::NoRoute);
        };
        if route.source.is_none() && dst.is_ipv6() {
            route.source = self.global_ipv6(route.ifindex)?.map(IpAddr::V6);
        }
        let ifindex = route.ifindex;
        let next_hop = route.gateway.unwrap_or(dst);
        let src_mac = self
            .link_mac(ifindex)?
            .ok_or(NextHopError::NotEthernet { dst, ifindex })?;
        let neighbour = self.neighbour(ifindex, next_hop)?;
        match neighbour {
            Some(neighbour) if neighbour.state & NUD_USABLE != 0 => {
                // Frames the workers send never confirm the kernel's entry, so a STALE MAC would
                // stay STALE (and possibly wrong, after a backend moved) for ever. Asking again
                // makes the kernel re-probe it with one unicast ARP; the MAC stays usable
                // meanwhile, so a failure to ask is not an error for this lookup.
                if neighbour.state == NUD_STALE && !neighbour.owned_elsewhere {
                    if let Err(e) = self.ask_to_resolve(ifindex, next_hop) {
                        log::debug!("re-probing stale neighbour {next_hop}: {e}");
                    }
                }
                let dst_mac = neighbour
                    .mac
                    .ok_or_else(|| NextHopError::NeighbourWithoutMac {
                        next_hop,
                        ifindex,
                        state: state_name(neighbour.state),
                    })?;
                Ok(Resolution::Ready(Resolved {
                    ifindex,
                    src_mac,
                    dst_mac,
                    gateway: route.gateway,
                    source: route.source,
                }))
            }
            Some(neighbour) if neighbour.owned_elsewhere => Ok(Resolution::Pending {
                ifindex,
                next_hop,
                source: route.source,
            }),
            _ => {
                self.ask_to_resolve(ifindex, next_hop)?;
                Ok(Resolution::Pending {
                    ifindex,
                    next_hop,
                    source: route.source,
                })
            }
        }
    }

    /// The Ethernet interfaces by ifindex, from one RTM_GETLINK dump. Only Ethernet interfaces
    /// (link type ARPHRD_ETHER: physical NICs, veth, bond, bridge, VLAN, macvlan) are listed;
    /// others have no MAC the workers could write.
    pub fn links(&mut self) -> Result<HashMap<u32, Link>, NextHopError> {
        let request = NetlinkRequest::LinkDump;
        for _ in 0..DUMP_ATTEMPTS {
            let mut links = HashMap::new();
            let ending = self.exchange(
                request,
                RouteNetlinkMessage::GetLink(LinkMessage::default()),
                NLM_F_REQUEST | NLM_F_DUMP,
                |kind, payload| {
                    if kind == RTM_NEWLINK {
                        if let Some((ifindex, link)) = parse_link(request, payload)? {
                            links.insert(ifindex, link);
                        }
                    }
                    Ok(())
                },
            )?;
            match ending {
                Ending::Complete { interrupted: false } => return Ok(links),
                Ending::Complete { interrupted: true } => continue,
                Ending::Refused(refusal) => return Err(refusal.into_error(request)),
            }
        }
        Err(NextHopError::DumpInterrupted {
            request,
            attempts: DUMP_ATTEMPTS,
        })
    }

    /// The route the kernel would use for `dst`; None if there is none it forwards on.
    fn route(&mut self, dst: IpAddr) -> Result<Option<Route>, NextHopError> {
        let request = NetlinkRequest::Route(dst);
        let mut message = RouteMessage::default();
        let (family, len, addr) = match dst {
            IpAddr::V4(a) => (AddressFamily::Inet, 32, RouteAddress::Inet(a)),
            IpAddr::V6(a) => (AddressFamily::Inet6, 128, RouteAddress::Inet6(a)),
        };
        message.header.address_family = family;
        message.header.destination_prefix_length = len;
        message.attributes.push(RouteAttribute::Destination(addr));
        let mut answer = None;
        let ending = self.exchange(
            request,
            RouteNetlinkMessage::GetRoute(message),
            NLM_F_REQUEST | NLM_F_ACK,
            |kind, payload| {
                if kind == RTM_NEWROUTE {
                    answer = Some(parse_route(request, dst, payload)?);
                }
                Ok(())
            },
        )?;
        if let Ending::Refused(refusal) = ending {
            return match refusal.errno {
                // No route at all, `unreachable`, `prohibit`.
                libc::ENETUNREACH | libc::EHOSTUNREACH | libc::EACCES => Ok(None),
                // A `blackhole` route fails the lookup with a bare EINVAL; a request the kernel
                // finds malformed comes with an explanation instead.
                libc::EINVAL if refusal.detail.is_none() => Ok(None),
                _ => Err(refusal.into_error(request)),
            };
        }
        answer.ok_or_else(|| NextHopError::Malformed {
            request,
            detail: "the kernel acknowledged the request without sending a route".to_owned(),
        })
    }

    /// The first global, usable (neither tentative nor deprecated) IPv6 address of
    /// `ifindex`, in the kernel's order: our source toward an IPv6 endpoint when the route
    /// names none.
    fn global_ipv6(&mut self, ifindex: u32) -> Result<Option<Ipv6Addr>, NextHopError> {
        let request = NetlinkRequest::Ipv6Addresses(ifindex);
        let mut message = AddressMessage::default();
        message.header.family = AddressFamily::Inet6;
        message.header.index = ifindex;
        let mut found = None;
        let ending = self.exchange(
            request,
            RouteNetlinkMessage::GetAddress(message),
            NLM_F_REQUEST | NLM_F_DUMP,
            |kind, payload| {
                if kind == RTM_NEWADDR && found.is_none() {
                    found = parse_global_ipv6(request, ifindex, payload)?;
                }
                Ok(())
            },
        )?;
        match ending {
            Ending::Complete { .. } => Ok(found),
            Ending::Refused(refusal) => Err(refusal.into_error(request)),
        }
    }

    /// The MAC of interface `ifindex`, or None if it is not an Ethernet interface.
    fn link_mac(&mut self, ifindex: u32) -> Result<Option<[u8; 6]>, NextHopError> {
        let request = NetlinkRequest::Link(ifindex);
        let mut message = LinkMessage::default();
        message.header.index = ifindex;
        let mut answer = None;
        let ending = self.exchange(
            request,
            RouteNetlinkMessage::GetLink(message),
            NLM_F_REQUEST | NLM_F_ACK,
            |kind, payload| {
                if kind == RTM_NEWLINK {
                    answer = Some(parse_link(request, payload)?.map(|(_, link)| link.mac));
                }
                Ok(())
            },
        )?;
        if let Ending::Refused(refusal) = ending {
            return Err(refusal.into_error(request));
        }
        answer.ok_or_else(|| NextHopError::Malformed {
            request,
            detail: "the kernel acknowledged the request without sending the link".to_owned(),
        })
    }

    /// The kernel's neighbour entry for `addr` on `ifindex`, if there is one.
    fn neighbour(&mut self, ifindex: u32, addr: IpAddr) -> Result<Option<Neighbour>, NextHopError> {
        let request = NetlinkRequest::Neighbour { ifindex, addr };
        let mut answer = None;
        let ending = self.exchange(
            request,
            RouteNetlinkMessage::GetNeighbour(neighbour_message(
                ifindex,
                addr,
                NeighbourFlags::empty(),
            )),
            NLM_F_REQUEST | NLM_F_ACK,
            |kind, payload| {
                if kind == RTM_NEWNEIGH {
                    answer = Some(parse_neighbour(request, payload)?);
                }
                Ok(())
            },
        )?;
        match ending {
            Ending::Complete { .. } => Ok(answer),
            Ending::Refused(refusal) if refusal.errno == libc::ENOENT => Ok(None),
            Ending::Refused(refusal) => Err(refusal.into_error(request)),
        }
    }

    /// Makes the kernel start ARP (IPv4) or neighbour discovery (IPv6) for `addr` on
    /// `ifindex` (see the module docs).
    fn ask_to_resolve(&mut self, ifindex: u32, addr: IpAddr) -> Result<(), NextHopError> {
        let request = NetlinkRequest::ResolveNeighbour { ifindex, addr };
        let ending = self.exchange(
            request,
            RouteNetlinkMessage::NewNeighbour(neighbour_message(
                ifindex,
                addr,
                NeighbourFlags::Use,
            )),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE,
            |_, _| Ok(()),
        )?;
        match ending {
            Ending::Complete { .. } => Ok(()),
            Ending::Refused(refusal) => Err(refusal.into_error(request)),
        }
    }

    /// Sends `message` and hands every answer message to `on_answer` until the kernel ends the
    /// exchange: an ACK or error (NLMSG_ERROR) or the end of a dump (NLMSG_DONE). Messages of
    /// earlier exchanges (late answers after a timeout, the rest of an abandoned dump) are
    /// skipped by sequence number.
    fn exchange(
        &mut self,
        request: NetlinkRequest,
        message: RouteNetlinkMessage,
        flags: u16,
        mut on_answer: impl FnMut(u16, &[u8]) -> Result<(), NextHopError>,
    ) -> Result<Ending, NextHopError> {
        self.sequence = self.sequence.wrapping_add(1);
        let sequence = self.sequence;
        let mut message = NetlinkMessage::from(message);
        message.header.flags = flags;
        message.header.sequence_number = sequence;
        message.finalize();
        let mut buf = vec![0u8; message.buffer_len()];
        message.serialize(&mut buf);
        self.socket
            .send(&buf, 0)
            .map_err(|source| NextHopError::Send { request, source })?;

        let started = Instant::now();
        let mut interrupted = false;
        loop {
            if started.elapsed() > EXCHANGE_DEADLINE {
                return Err(NextHopError::Timeout {
                    request,
                    waited: started.elapsed(),
                });
            }
            let datagram = match self.socket.recv_from_full() {
                Ok((datagram, _)) => datagram,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(NextHopError::Timeout {
                        request,
                        waited: started.elapsed(),
                    })
                }
                Err(source) => return Err(NextHopError::Receive { request, source }),
            };
            let mut rest = datagram.as_slice();
            while !rest.is_empty() {
                let answer =
                    NetlinkBuffer::new_checked(rest).map_err(|e| NextHopError::Malformed {
                        request,
                        detail: format!("bad netlink message header: {e}"),
                    })?;
                // new_checked made sure that 16 <= length <= rest.len().
                let next = align4(answer.length() as usize).min(rest.len());
                if answer.sequence_number() == sequence {
                    interrupted |= answer.flags() & NLM_F_DUMP_INTR != 0;
                    match answer.message_type() {
                        NLMSG_NOOP => {}
                        NLMSG_ERROR | NLMSG_DONE => {
                            return Ok(ending(answer.flags(), answer.payload(), interrupted))
                        }
                        NLMSG_OVERRUN => {
                            return Err(NextHopError::Malformed {
                                request,
                                detail: "the kernel reported a netlink overrun".to_owned(),
                            })
                        }
                        kind => on_answer(kind, answer.payload())?,
                    }
                }
                rest = &rest[next..];
            }
        }
    }
}

/// The part of a route that matters for forwarding.
#[derive(Debug, Clone, Copy)]
struct Route {
    ifindex: u32,
    gateway: Option<IpAddr>,
    source: Option<IpAddr>,
}

/// The part of a neighbour entry that matters here.
#[derive(Debug, Clone, Copy)]
struct Neighbour {
    state: u16,
    mac: Option<[u8; 6]>,
    /// Externally learned or carrying extended flags (managed, ...): an administrative update
    /// from us would rewrite those flags, so we do not send one.
    owned_elsewhere: bool,
}

/// How the kernel ended an exchange.
#[derive(Debug)]
enum Ending {
    /// An ACK, or the end of a dump; `interrupted` if the dump saw a table change.
    Complete {
        interrupted: bool,
    },
    Refused(Refusal),
}

#[derive(Debug)]
struct Refusal {
    /// Positive errno.
    errno: i32,
    /// The kernel's extended-ACK message, if it sent one.
    detail: Option<String>,
}

impl Refusal {
    fn into_error(self, request: NetlinkRequest) -> NextHopError {
        let hint = match (request, self.errno) {
            (NetlinkRequest::ResolveNeighbour { .. }, libc::EPERM | libc::EACCES) => {
                "; asking the kernel to resolve a neighbour (RTM_NEWNEIGH) needs CAP_NET_ADMIN \
                 in the network namespace: keep that capability for the control plane"
            }
            (_, libc::ENODEV) => {
                "; the interface disappeared meanwhile (check `ip link show`); the next attempt \
                 asks again"
            }
            _ => "",
        };
        NextHopError::Refused {
            request,
            source: io::Error::from_raw_os_error(self.errno),
            detail: self.detail.map(|d| format!(": {d}")).unwrap_or_default(),
            hint,
        }
    }
}

/// Reads NLMSG_ERROR (an error code, 0 for an ACK) or NLMSG_DONE (an error code in a dump's
/// end, 0 normally; older kernels may send no payload at all).
fn ending(flags: u16, payload: &[u8], interrupted: bool) -> Ending {
    let code = payload
        .get(..4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map_or(0, i32::from_ne_bytes);
    if code == 0 {
        return Ending::Complete { interrupted };
    }
    Ending::Refused(Refusal {
        errno: code.saturating_neg(),
        detail: ext_ack_message(flags, payload),
    })
}

/// The NLMSGERR_ATTR_MSG text of an extended ACK, if the kernel sent one. The attributes follow
/// the error code and the echoed request: only its header if the answer is NLM_F_CAPPED, else
/// the whole request.
fn ext_ack_message(flags: u16, payload: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let echoed = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        let length = payload.get(4..8)?;
        align4(u32::from_ne_bytes(length.try_into().ok()?) as usize)
    };
    let mut attributes = payload.get(4 + echoed..)?;
    while attributes.len() >= 4 {
        let length = usize::from(u16::from_ne_bytes([attributes[0], attributes[1]]));
        let kind = u16::from_ne_bytes([attributes[2], attributes[3]]);
        let value = attributes.get(4..length)?;
        if kind == NLMSGERR_ATTR_MSG {
            let text = value.split(|&b| b == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        attributes = attributes.get(align4(length).min(attributes.len())..)?;
    }
    None
}

fn parse_route(
    request: NetlinkRequest,
    dst: IpAddr,
    payload: &[u8],
) -> Result<Option<Route>, NextHopError> {
    let malformed = |detail: String| NextHopError::Malformed { request, detail };
    let route = RouteMessageBuffer::new_checked(payload)
        .map_err(|e| malformed(format!("bad route message: {e}")))?;
    if route.kind() != RTN_UNICAST {
        return Ok(None);
    }
    let mut ifindex = None;
    let mut gateway = None;
    let mut source = None;
    for attribute in route.attributes() {
        let attribute = attribute.map_err(|e| malformed(format!("bad route attribute: {e}")))?;
        match attribute.kind() {
            RTA_OIF => {
                ifindex = Some(read_u32(attribute.value()).ok_or_else(|| {
                    malformed(format!("RTA_OIF of {} bytes", attribute.value().len()))
                })?)
            }
            RTA_GATEWAY => {
                gateway = Some(read_addr(dst, attribute.value()).ok_or_else(|| {
                    malformed(format!("RTA_GATEWAY of {} bytes", attribute.value().len()))
                })?);
            }
            RTA_PREFSRC => {
                source = Some(read_addr(dst, attribute.value()).ok_or_else(|| {
                    malformed(format!("RTA_PREFSRC of {} bytes", attribute.value().len()))
                })?);
            }
            // An IPv4 route through an IPv6 next hop (`via inet6`).
            RTA_VIA if dst.is_ipv4() => return Err(NextHopError::Ipv6NextHop { dst }),
            _ => {}
        }
    }
    let ifindex = ifindex.ok_or_else(|| malformed("a unicast route without RTA_OIF".to_owned()))?;
    Ok(Some(Route {
        ifindex,
        gateway,
        source,
    }))
}

/// An Ethernet interface as the workers need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub mac: [u8; 6],
    /// The IP MTU; frames leaving by this link may carry at most this many IP bytes.
    pub mtu: u16,
}

/// `(ifindex, link)` of an Ethernet link; None for any other link or one without a MAC.
fn parse_link(
    request: NetlinkRequest,
    payload: &[u8],
) -> Result<Option<(u32, Link)>, NextHopError> {
    let malformed = |detail: String| NextHopError::Malformed { request, detail };
    let link = LinkMessageBuffer::new_checked(payload)
        .map_err(|e| malformed(format!("bad link message: {e}")))?;
    if link.link_layer_type() != ARPHRD_ETHER {
        return Ok(None);
    }
    let (mut mac, mut mtu) = (None, u16::MAX);
    for attribute in link.attributes() {
        let attribute = attribute.map_err(|e| malformed(format!("bad link attribute: {e}")))?;
        match attribute.kind() {
            IFLA_ADDRESS => mac = <[u8; 6]>::try_from(attribute.value()).ok(),
            IFLA_MTU => {
                if let Ok(v) = <[u8; 4]>::try_from(attribute.value()) {
                    // Jumbo MTUs beyond 65535 cannot be exceeded by an IPv4 packet anyway.
                    mtu = u16::try_from(u32::from_ne_bytes(v)).unwrap_or(u16::MAX);
                }
            }
            _ => {}
        }
    }
    Ok(mac.map(|mac| (link.link_index(), Link { mac, mtu })))
}

fn parse_neighbour(request: NetlinkRequest, payload: &[u8]) -> Result<Neighbour, NextHopError> {
    let malformed = |detail: String| NextHopError::Malformed { request, detail };
    let entry = NeighbourMessageBuffer::new_checked(payload)
        .map_err(|e| malformed(format!("bad neighbour message: {e}")))?;
    let mut neighbour = Neighbour {
        state: entry.state(),
        mac: None,
        owned_elsewhere: entry.flags() & NTF_EXT_LEARNED != 0,
    };
    for attribute in entry.attributes() {
        let attribute =
            attribute.map_err(|e| malformed(format!("bad neighbour attribute: {e}")))?;
        match attribute.kind() {
            NDA_LLADDR => neighbour.mac = <[u8; 6]>::try_from(attribute.value()).ok(),
            NDA_FLAGS_EXT => {
                neighbour.owned_elsewhere |= read_u32(attribute.value()).is_some_and(|f| f != 0)
            }
            _ => {}
        }
    }
    Ok(neighbour)
}

/// An address of `like`'s family from its bytes in a netlink attribute.
fn read_addr(like: IpAddr, bytes: &[u8]) -> Option<IpAddr> {
    match like {
        IpAddr::V4(_) => <[u8; 4]>::try_from(bytes)
            .ok()
            .map(Ipv4Addr::from)
            .map(IpAddr::V4),
        IpAddr::V6(_) => <[u8; 16]>::try_from(bytes)
            .ok()
            .map(Ipv6Addr::from)
            .map(IpAddr::V6),
    }
}

/// The address of an RTM_NEWADDR answer if it is a global, usable IPv6 address of `ifindex`.
fn parse_global_ipv6(
    request: NetlinkRequest,
    ifindex: u32,
    payload: &[u8],
) -> Result<Option<Ipv6Addr>, NextHopError> {
    let malformed = |detail: String| NextHopError::Malformed { request, detail };
    let entry = AddressMessageBuffer::new_checked(payload)
        .map_err(|e| malformed(format!("bad address message: {e}")))?;
    // The kernel filters a dump by interface only when strict checking is on: filter here.
    if entry.index() != ifindex || entry.scope() != RT_SCOPE_UNIVERSE {
        return Ok(None);
    }
    let mut flags = u32::from(entry.flags());
    let mut addr = None;
    for attribute in entry.attributes() {
        let attribute = attribute.map_err(|e| malformed(format!("bad address attribute: {e}")))?;
        match attribute.kind() {
            IFA_ADDRESS => {
                addr = <[u8; 16]>::try_from(attribute.value())
                    .ok()
                    .map(Ipv6Addr::from)
            }
            IFA_FLAGS => flags = read_u32(attribute.value()).unwrap_or(flags),
            _ => {}
        }
    }
    Ok(addr.filter(|_| flags & IFA_F_UNUSABLE == 0))
}

fn neighbour_message(ifindex: u32, addr: IpAddr, flags: NeighbourFlags) -> NeighbourMessage {
    let mut message = NeighbourMessage::default();
    message.header.ifindex = ifindex;
    message.header.state = NeighbourState::None;
    message.header.flags = flags;
    let (family, addr) = match addr {
        IpAddr::V4(a) => (AddressFamily::Inet, NeighbourAddress::Inet(a)),
        IpAddr::V6(a) => (AddressFamily::Inet6, NeighbourAddress::Inet6(a)),
    };
    message.header.family = family;
    message
        .attributes
        .push(NeighbourAttribute::Destination(addr));
    message
}

fn state_name(state: u16) -> &'static str {
    match state {
        NUD_INCOMPLETE => "INCOMPLETE",
        NUD_REACHABLE => "REACHABLE",
        NUD_STALE => "STALE",
        NUD_DELAY => "DELAY",
        NUD_PROBE => "PROBE",
        NUD_FAILED => "FAILED",
        NUD_NOARP => "NOARP",
        NUD_PERMANENT => "PERMANENT",
        _ => "in an unusual state",
    }
}

fn read_u32(bytes: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.try_into().ok()?))
}

fn align4(length: usize) -> usize {
    length.saturating_add(3) & !3
}

/// Bounds every send and receive on `socket` by `timeout`.
fn set_timeouts(socket: &Socket, timeout: Duration) -> io::Result<()> {
    let timeval = libc::timeval {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_usec: timeout.subsec_micros().into(),
    };
    for option in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
        // SAFETY: the fd is the open socket `socket` borrows for the whole call; the option
        // value points to a live `timeval` and its exact size is passed, which is what
        // SO_RCVTIMEO/SO_SNDTIMEO read. The kernel copies the value and keeps no pointer.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_fd().as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                std::ptr::from_ref(&timeval).cast::<libc::c_void>(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ack_ends_the_exchange_and_an_error_code_becomes_a_refusal() {
        let ack = 0i32.to_ne_bytes();
        assert!(matches!(
            ending(0, &ack, false),
            Ending::Complete { interrupted: false }
        ));
        let refused = (-libc::ENETUNREACH).to_ne_bytes();
        let Ending::Refused(refusal) = ending(0, &refused, false) else {
            panic!("an error code must be a refusal");
        };
        assert_eq!(refusal.errno, libc::ENETUNREACH);
        assert_eq!(refusal.detail, None);
    }

    #[test]
    fn the_kernels_extended_ack_message_is_read_after_a_capped_echo() {
        let mut payload = (-libc::EINVAL).to_ne_bytes().to_vec();
        payload.extend_from_slice(&[0u8; NLMSG_HDRLEN]);
        let text = b"Invalid values in header\0";
        let length = 4 + text.len();
        payload.extend_from_slice(&(length as u16).to_ne_bytes());
        payload.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        payload.extend_from_slice(text);
        payload.resize(payload.len() + align4(length) - length, 0);
        let Ending::Refused(refusal) = ending(NLM_F_CAPPED | NLM_F_ACK_TLVS, &payload, false)
        else {
            panic!("an error code must be a refusal");
        };
        assert_eq!(refusal.detail.as_deref(), Some("Invalid values in header"));
    }

    #[test]
    fn a_receive_without_an_answer_times_out_instead_of_blocking() {
        let resolver = NextHopResolver::new().expect("open a NETLINK_ROUTE socket");
        let started = Instant::now();
        let error = resolver
            .socket
            .recv_from_full()
            .expect_err("nothing was asked, so nothing arrives");
        assert_eq!(error.kind(), io::ErrorKind::WouldBlock);
        assert!(
            started.elapsed() < RECEIVE_TIMEOUT * 2,
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn the_kernels_explanation_of_a_refusal_reaches_the_error_message() {
        let mut resolver = NextHopResolver::new().expect("open a NETLINK_ROUTE socket");
        // Interface index 0 names no device: neigh_get() refuses with an extended ACK.
        let error = resolver
            .neighbour(0, Ipv4Addr::new(198, 18, 0, 1).into())
            .expect_err("a neighbour lookup without a device is refused");
        assert_eq!(error.label(), "refused");
        let NextHopError::Refused { ref detail, .. } = error else {
            panic!("expected a refusal, got {error:?}");
        };
        assert!(!detail.is_empty(), "no extended ACK text: {error}");
    }

    /// An RTM_NEWADDR payload: IPv6 `addr` of `ifindex` with `scope` and `flags` (IFA_FLAGS).
    fn address_message(ifindex: u32, addr: Ipv6Addr, scope: u8, flags: u32) -> Vec<u8> {
        let mut m = vec![10, 64, 0, scope];
        m.extend_from_slice(&ifindex.to_ne_bytes());
        m.extend_from_slice(&20u16.to_ne_bytes());
        m.extend_from_slice(&IFA_ADDRESS.to_ne_bytes());
        m.extend_from_slice(&addr.octets());
        m.extend_from_slice(&8u16.to_ne_bytes());
        m.extend_from_slice(&IFA_FLAGS.to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m
    }

    #[test]
    fn only_a_global_usable_ipv6_address_of_the_interface_is_a_source() {
        let request = NetlinkRequest::Ipv6Addresses(3);
        let global: Ipv6Addr = "fd00:31::fe".parse().unwrap();
        let parse = |m: Vec<u8>| parse_global_ipv6(request, 3, &m).unwrap();
        let permanent_nodad = 0x80 | 0x02;
        assert_eq!(
            parse(address_message(
                3,
                global,
                RT_SCOPE_UNIVERSE,
                permanent_nodad
            )),
            Some(global)
        );
        let tentative = 0x80 | 0x40;
        assert_eq!(
            parse(address_message(3, global, RT_SCOPE_UNIVERSE, tentative)),
            None
        );
        let link_scope = 253;
        let link_local: Ipv6Addr = "fe80::1".parse().unwrap();
        assert_eq!(
            parse(address_message(3, link_local, link_scope, 0x80)),
            None
        );
        assert_eq!(
            parse(address_message(4, global, RT_SCOPE_UNIVERSE, 0x80)),
            None,
            "another interface's address"
        );
    }

    #[test]
    fn a_truncated_extended_ack_yields_no_message_instead_of_a_panic() {
        let mut payload = (-libc::EINVAL).to_ne_bytes().to_vec();
        payload.extend_from_slice(&[0u8; NLMSG_HDRLEN]);
        payload.extend_from_slice(&[200, 0, 1, 0, b'x']);
        assert_eq!(
            ext_ack_message(NLM_F_CAPPED | NLM_F_ACK_TLVS, &payload),
            None
        );
        assert_eq!(ext_ack_message(NLM_F_ACK_TLVS, &payload[..6]), None);
    }
}
