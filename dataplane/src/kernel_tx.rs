//! Hands IP packets to the kernel's own output path, for next hops whose MAC is not known yet.
//!
//! A raw IPPROTO_RAW socket sends the already rewritten IP packet as it is (header included);
//! the kernel routes it, resolves the neighbour and queues the packet until the answer comes,
//! so the first packets of a flow towards a new endpoint are delayed, not lost.

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};

pub struct KernelTx {
    sock: Socket,
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
        Ok(KernelTx { sock })
    }

    /// Sends the IPv4 packet `ip` (header first) towards `dst`.
    pub fn send(&self, ip: &[u8], dst: Ipv4Addr) -> io::Result<()> {
        let addr = SockAddr::from(SocketAddrV4::new(dst, 0));
        self.sock.send_to(ip, &addr).map(|_| ())
    }
}
