//! Source ports for the source-translating modes, owned by one worker.
//!
//! Each worker takes every n-th port of the configured range (worker i of n: the ports whose
//! offset from the start is i modulo n), so workers never hand out the same port and need no
//! coordination. A port is unique per (our address, protocol): the reply tuple then identifies
//! the flow whatever endpoint answers. Exhaustion is reported, never papered over.

use crate::snapshot::{PortRange, Proto};
use hashbrown::HashMap;
use std::net::IpAddr;

/// The worker whose slice holds `port` (any port of `range`) when there are `workers`.
pub fn owner(range: PortRange, workers: u16, port: u16) -> u16 {
    port.wrapping_sub(range.first) % workers.max(1)
}

pub struct PortPools {
    range: PortRange,
    worker: u16,
    workers: u16,
    /// Free ports per (address, protocol), created on first use. A freed port is handed out
    /// again first (LIFO); its old flow's conntrack entry is gone by then, so the reply tuple
    /// cannot be confused with the old flow's.
    pools: HashMap<(IpAddr, Proto), Vec<u16>>,
}

impl PortPools {
    pub fn new(range: PortRange, worker: u16, workers: u16) -> Self {
        PortPools {
            range,
            worker,
            workers: workers.max(1),
            pools: HashMap::new(),
        }
    }

    fn slice(&self) -> Vec<u16> {
        (self.range.first..=self.range.last)
            .filter(|&p| owner(self.range, self.workers, p) == self.worker)
            .rev()
            .collect()
    }

    /// A free port for `addr`, or `None` when all of this worker's ports are in use.
    pub fn allocate(&mut self, addr: IpAddr, proto: Proto) -> Option<u16> {
        if !self.pools.contains_key(&(addr, proto)) {
            let slice = self.slice();
            self.pools.insert((addr, proto), slice);
        }
        self.pools.get_mut(&(addr, proto))?.pop()
    }

    /// Gives a port back. Ports outside this worker's slice (a range change since) are dropped.
    pub fn release(&mut self, addr: IpAddr, proto: Proto, port: u16) {
        let in_slice = port >= self.range.first
            && port <= self.range.last
            && owner(self.range, self.workers, port) == self.worker;
        if let (true, Some(pool)) = (in_slice, self.pools.get_mut(&(addr, proto))) {
            pool.push(port);
        }
    }

    /// Ports still free for `addr` (a fresh address has the whole slice).
    pub fn free(&self, addr: IpAddr, proto: Proto) -> usize {
        self.pools
            .get(&(addr, proto))
            .map_or_else(|| self.slice().len(), Vec::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 100, 1));

    #[test]
    fn two_workers_never_hand_out_the_same_port() {
        let range = PortRange {
            first: 100,
            last: 199,
        };
        let mut w0 = PortPools::new(range, 0, 2);
        let mut w1 = PortPools::new(range, 1, 2);
        let mut seen = std::collections::HashSet::new();
        while let Some(p) = w0.allocate(A, Proto::Tcp) {
            assert!(seen.insert(p));
        }
        while let Some(p) = w1.allocate(A, Proto::Tcp) {
            assert!(seen.insert(p), "port {p} given twice");
        }
        assert_eq!(seen.len(), 100);
    }

    #[test]
    fn an_exhausted_pool_says_so_and_a_released_port_is_reused() {
        let mut w = PortPools::new(
            PortRange {
                first: 10,
                last: 12,
            },
            0,
            1,
        );
        let ports: Vec<u16> = (0..3).map(|_| w.allocate(A, Proto::Udp).unwrap()).collect();
        assert_eq!(w.allocate(A, Proto::Udp), None);
        w.release(A, Proto::Udp, ports[1]);
        assert_eq!(w.allocate(A, Proto::Udp), Some(ports[1]));
    }

    #[test]
    fn protocols_and_addresses_have_separate_pools() {
        let mut w = PortPools::new(
            PortRange {
                first: 10,
                last: 10,
            },
            0,
            1,
        );
        assert_eq!(w.allocate(A, Proto::Tcp), Some(10));
        assert_eq!(w.allocate(A, Proto::Udp), Some(10));
        assert_eq!(
            w.allocate(Ipv4Addr::new(198, 18, 31, 254).into(), Proto::Tcp),
            Some(10)
        );
    }
}
