//! Asks the kernel over rtnetlink for an interface's index and the XDP program it runs.
//!
//! Uses a netlink socket opened by the calling thread, so the answer is about the calling
//! thread's network namespace (the same one `bpf_link_create` resolves an ifindex in); sysfs
//! would describe the namespace sysfs was mounted in instead.

use std::io;

use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};
use netlink_packet_route::{
    link::{LinkAttribute, LinkMessage, LinkXdp, XdpAttached},
    RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// What the kernel says about one interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LinkXdpState {
    pub ifindex: u32,
    /// The attached XDP program, if any: (attach mode as the kernel names it, program id).
    pub attached: Option<(&'static str, u32)>,
}

#[derive(Debug)]
pub(crate) enum QueryError {
    NoSuchInterface,
    Io(io::Error),
}

impl From<io::Error> for QueryError {
    fn from(error: io::Error) -> Self {
        QueryError::Io(error)
    }
}

/// RTM_GETLINK for `name` in the calling thread's network namespace.
pub(crate) fn query(name: &str) -> Result<LinkXdpState, QueryError> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;

    let mut request_body = LinkMessage::default();
    request_body
        .attributes
        .push(LinkAttribute::IfName(name.to_owned()));
    let mut request = NetlinkMessage::from(RouteNetlinkMessage::GetLink(request_body));
    request.header.flags = NLM_F_REQUEST;
    request.header.sequence_number = 1;
    request.finalize();
    let mut buf = vec![0u8; request.buffer_len()];
    request.serialize(&mut buf);
    socket.send(&buf, 0)?;

    let (reply, _) = socket.recv_from_full()?;
    let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    match message.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => Ok(LinkXdpState {
            ifindex: link.header.index,
            attached: attached_program(&link.attributes),
        }),
        NetlinkPayload::Error(error) => match error.code.map(|c| -c.get()) {
            Some(libc::ENODEV) => Err(QueryError::NoSuchInterface),
            Some(errno) => Err(QueryError::Io(io::Error::from_raw_os_error(errno))),
            None => Err(QueryError::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                "RTM_GETLINK answered with an ACK instead of the link",
            ))),
        },
        other => Err(QueryError::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected RTM_GETLINK answer: {other:?}"),
        ))),
    }
}

fn attached_program(attributes: &[LinkAttribute]) -> Option<(&'static str, u32)> {
    let xdp = attributes.iter().find_map(|attribute| match attribute {
        LinkAttribute::Xdp(xdp) => Some(xdp),
        _ => None,
    })?;
    let mut mode = None;
    let mut prog_id = 0;
    for nla in xdp {
        match nla {
            LinkXdp::Attached(XdpAttached::None) => return None,
            LinkXdp::Attached(XdpAttached::Driver) => mode = Some("native (xdpdrv)"),
            LinkXdp::Attached(XdpAttached::SocketBuffer) => mode = Some("generic (xdpgeneric)"),
            LinkXdp::Attached(XdpAttached::Hardware) => mode = Some("offload (xdpoffload)"),
            LinkXdp::Attached(_) => mode = Some("several modes"),
            LinkXdp::ProgId(id) => prog_id = *id,
            LinkXdp::DrvProgId(id) | LinkXdp::SkbProgId(id) | LinkXdp::HwProgId(id)
                if prog_id == 0 =>
            {
                prog_id = *id
            }
            _ => {}
        }
    }
    mode.map(|mode| (mode, prog_id))
}
