//! Hands IP packets to the kernel's own output path, for next hops whose MAC is not known yet.
//!
//! A raw IPPROTO_RAW socket sends the already rewritten IP packet as it is (header included);
//! the kernel routes it, resolves the neighbour and queues the packet until the answer comes,
//! so the first packets of a flow towards a new endpoint are delayed, not lost.

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io;
use std::net::{IpAddr, SocketAddr};

pub struct KernelTx {
    sock: Socket,
    /// IPv6's IPPROTO_RAW also means "header included" (Linux 4.5 and later).
    sock6: Socket,
}

impl KernelTx {
    pub fn new() -> io::Result<KernelTx> {
        // IPPROTO_RAW implies IP_HDRINCL: the kernel sends our header, filling only id/checksum
        // where they are zero.
        let sock = Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(Protocol::from(libc::IPPROTO_RAW)),
        )?;
        sock.set_nonblocking(true)?;
        let sock6 = Socket::new(
            Domain::IPV6,
            Type::RAW,
            Some(Protocol::from(libc::IPPROTO_RAW)),
        )?;
        sock6.set_nonblocking(true)?;
        Ok(KernelTx { sock, sock6 })
    }

    /// Sends the IP packet `ip` (header first, of `dst`'s family) towards `dst`.
    pub fn send(&self, ip: &[u8], dst: IpAddr) -> io::Result<()> {
        let addr = SockAddr::from(SocketAddr::new(dst, 0));
        match dst {
            IpAddr::V4(_) => self.sock.send_to(ip, &addr),
            IpAddr::V6(_) => self.sock6.send_to(ip, &addr),
        }
        .map(|_| ())
    }
}
