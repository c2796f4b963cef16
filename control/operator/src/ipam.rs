//! Service address management: pools from `--externalCIDR` / `--cidrPools`, shared addresses
//! by default (Services on different ports share one address), one address per Service with
//! `--setUniqueIP`, static requests honoured or refused, and rebuilding from the addresses
//! Services already show. Pure: no I/O; the reconciler owns one `Ipam` behind a lock.
//!
//! The invariant every operation keeps: no (address, port, protocol) is held by two Services.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// kube-loxilb's name for the pool `--externalCIDR` defines.
pub const DEFAULT_POOL: &str = "defaultPool";

/// A port of a Service, as IPAM tracks it: (port, protocol in lower case).
pub type PortKey = (u16, String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("pool definition {0:?} is invalid: use name=CIDR or name=FIRST-LAST (IPv4)")]
    BadPool(String),
    #[error("pool {0:?} is defined twice")]
    DuplicatePool(String),
    #[error("pool {0:?} does not exist (pools: {1})")]
    UnknownPool(String, String),
    #[error("pool {0:?} has no free address for ports {1}")]
    Exhausted(String, String),
    #[error("address {ip} port {port}/{protocol} is already used by Service {owner}")]
    PortTaken {
        ip: Ipv4Addr,
        port: u16,
        protocol: String,
        owner: String,
    },
    #[error("address {ip} is already used by Service {owner} and --setUniqueIP is set")]
    AddressTaken { ip: Ipv4Addr, owner: String },
}

/// A named range of addresses (inclusive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub name: String,
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
}

impl Pool {
    /// Parses `CIDR` or `FIRST-LAST`. A CIDR shorter than /31 leaves out its network and
    /// broadcast addresses.
    pub fn parse(name: &str, def: &str) -> Result<Pool, IpamError> {
        let bad = || IpamError::BadPool(format!("{name}={def}"));
        let (first, last) = if let Some((a, b)) = def.split_once('-') {
            let a: Ipv4Addr = a.trim().parse().map_err(|_| bad())?;
            let b: Ipv4Addr = b.trim().parse().map_err(|_| bad())?;
            (a, b)
        } else {
            let (ip, len) = def.split_once('/').ok_or_else(bad)?;
            let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
            let len: u32 = len.parse().map_err(|_| bad())?;
            if len > 32 {
                return Err(bad());
            }
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            let net = u32::from(ip) & mask;
            let bcast = net | !mask;
            if len < 31 {
                (Ipv4Addr::from(net + 1), Ipv4Addr::from(bcast - 1))
            } else {
                (Ipv4Addr::from(net), Ipv4Addr::from(bcast))
            }
        };
        if u32::from(first) > u32::from(last) || name.is_empty() {
            return Err(bad());
        }
        Ok(Pool {
            name: name.to_owned(),
            first,
            last,
        })
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        (u32::from(self.first)..=u32::from(self.last)).contains(&u32::from(ip))
    }
}

/// Parses `--cidrPools` (`name=CIDR|FIRST-LAST,...`), or `--externalCIDR` as `defaultPool`
/// (which then replaces `--cidrPools`, as in kube-loxilb).
pub fn pools_from_flags(external_cidr: &str, cidr_pools: &str) -> Result<Vec<Pool>, IpamError> {
    let defs: Vec<(String, String)> = if !external_cidr.is_empty() {
        vec![(DEFAULT_POOL.to_owned(), external_cidr.to_owned())]
    } else {
        cidr_pools
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|d| {
                d.split_once('=')
                    .map(|(n, c)| (n.trim().to_owned(), c.trim().to_owned()))
                    .ok_or_else(|| IpamError::BadPool(d.to_owned()))
            })
            .collect::<Result<_, _>>()?
    };
    let mut pools: Vec<Pool> = Vec::new();
    for (name, def) in defs {
        if pools.iter().any(|p| p.name == name) {
            return Err(IpamError::DuplicatePool(name));
        }
        pools.push(Pool::parse(&name, &def)?);
    }
    Ok(pools)
}

/// The allocations of every Service.
#[derive(Debug, Clone)]
pub struct Ipam {
    pools: Vec<Pool>,
    unique: bool,
    /// address -> (port -> owning Service `namespace/name`).
    used: BTreeMap<Ipv4Addr, BTreeMap<PortKey, String>>,
    /// Service -> its address.
    by_service: BTreeMap<String, Ipv4Addr>,
}

fn ports_text(ports: &[PortKey]) -> String {
    let v: Vec<String> = ports.iter().map(|(p, pr)| format!("{p}/{pr}")).collect();
    v.join(",")
}

impl Ipam {
    pub fn new(pools: Vec<Pool>, unique: bool) -> Ipam {
        Ipam {
            pools,
            unique,
            used: BTreeMap::new(),
            by_service: BTreeMap::new(),
        }
    }

    /// The address `service` holds, if any.
    pub fn address_of(&self, service: &str) -> Option<Ipv4Addr> {
        self.by_service.get(service).copied()
    }

    /// The first conflict `service` would have holding `ip` with `ports`.
    fn conflict(&self, service: &str, ip: Ipv4Addr, ports: &[PortKey]) -> Option<IpamError> {
        let held = self.used.get(&ip)?;
        if self.unique {
            if let Some(owner) = held.values().find(|o| *o != service) {
                return Some(IpamError::AddressTaken {
                    ip,
                    owner: owner.clone(),
                });
            }
        }
        ports.iter().find_map(|k| {
            held.get(k)
                .filter(|o| *o != service)
                .map(|owner| IpamError::PortTaken {
                    ip,
                    port: k.0,
                    protocol: k.1.clone(),
                    owner: owner.clone(),
                })
        })
    }

    /// Records that `service` holds `ip` for exactly `ports` (replacing what it held).
    fn record(&mut self, service: &str, ip: Ipv4Addr, ports: &[PortKey]) {
        self.release(service);
        let held = self.used.entry(ip).or_default();
        for k in ports {
            held.insert(k.clone(), service.to_owned());
        }
        self.by_service.insert(service.to_owned(), ip);
    }

    /// Gives `service` the address `ip` it asks for (a static IP, `spec.loadBalancerIP`, or an
    /// address it already shows in its status). Addresses outside every pool are allowed, as in
    /// kube-loxilb; conflicts are refused.
    pub fn claim(
        &mut self,
        service: &str,
        ip: Ipv4Addr,
        ports: &[PortKey],
    ) -> Result<(), IpamError> {
        if let Some(e) = self.conflict(service, ip, ports) {
            return Err(e);
        }
        self.record(service, ip, ports);
        Ok(())
    }

    /// The address of `service`: the one it holds if its ports still fit there, else the first
    /// free one of `pool` (`defaultPool` when `None`).
    pub fn allocate(
        &mut self,
        service: &str,
        pool: Option<&str>,
        ports: &[PortKey],
    ) -> Result<Ipv4Addr, IpamError> {
        if let Some(ip) = self.address_of(service) {
            self.claim(service, ip, ports)?;
            return Ok(ip);
        }
        let name = pool.unwrap_or(DEFAULT_POOL);
        let p = self
            .pools
            .iter()
            .find(|p| p.name == name)
            .cloned()
            .ok_or_else(|| {
                let names: Vec<&str> = self.pools.iter().map(|p| p.name.as_str()).collect();
                IpamError::UnknownPool(name.to_owned(), names.join(","))
            })?;
        for n in u32::from(p.first)..=u32::from(p.last) {
            let ip = Ipv4Addr::from(n);
            if self.conflict(service, ip, ports).is_none() {
                self.record(service, ip, ports);
                return Ok(ip);
            }
        }
        Err(IpamError::Exhausted(p.name, ports_text(ports)))
    }

    /// Adds a pool at run time (a LoxiURL of type `cidrpool`); the same definition again
    /// changes nothing, another one of the same name is refused.
    pub fn add_pool(&mut self, pool: Pool) -> Result<(), IpamError> {
        match self.pools.iter().find(|p| p.name == pool.name) {
            Some(p) if *p == pool => Ok(()),
            Some(_) => Err(IpamError::DuplicatePool(pool.name)),
            None => {
                self.pools.push(pool);
                Ok(())
            }
        }
    }

    /// Removes pool `name`. Addresses already given from it stay with their Services, as
    /// kube-loxilb leaves them: taking a live Service's address away is worse than a pool
    /// that shrinks only for new Services.
    pub fn remove_pool(&mut self, name: &str) -> bool {
        let before = self.pools.len();
        self.pools.retain(|p| p.name != name);
        self.pools.len() != before
    }

    /// Frees everything `service` holds.
    pub fn release(&mut self, service: &str) {
        if let Some(ip) = self.by_service.remove(service) {
            if let Some(held) = self.used.get_mut(&ip) {
                held.retain(|_, o| o != service);
                if held.is_empty() {
                    self.used.remove(&ip);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_added_at_run_time_serves_new_services_and_its_removal_keeps_given_addresses() {
        let mut ipam = Ipam::new(pools_from_flags("198.18.100.0/30", "").unwrap(), false);
        let ports = vec![(80, "tcp".to_owned())];
        assert!(ipam.allocate("a/x", Some("extra"), &ports).is_err());
        let extra = Pool::parse("extra", "198.18.200.5-198.18.200.6").unwrap();
        ipam.add_pool(extra.clone()).unwrap();
        ipam.add_pool(extra).unwrap();
        let other = Pool::parse("extra", "198.18.201.0/24").unwrap();
        assert_eq!(
            ipam.add_pool(other),
            Err(IpamError::DuplicatePool("extra".into()))
        );
        let ip = ipam.allocate("a/x", Some("extra"), &ports).unwrap();
        assert_eq!(ip, "198.18.200.5".parse::<Ipv4Addr>().unwrap());
        assert!(ipam.remove_pool("extra"));
        assert!(!ipam.remove_pool("extra"));
        assert_eq!(ipam.allocate("a/x", Some("extra"), &ports).unwrap(), ip);
        assert!(ipam.allocate("a/y", Some("extra"), &ports).is_err());
    }

    fn tcp(p: u16) -> PortKey {
        (p, "tcp".to_owned())
    }
    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }
    fn ipam(unique: bool) -> Ipam {
        Ipam::new(pools_from_flags("198.18.100.0/24", "").unwrap(), unique)
    }

    #[test]
    fn external_cidr_is_the_default_pool_without_network_and_broadcast() {
        let p = pools_from_flags("198.18.100.0/24", "ignored=1.2.3.0/24").unwrap();
        assert_eq!(
            p,
            vec![Pool {
                name: DEFAULT_POOL.into(),
                first: ip("198.18.100.1"),
                last: ip("198.18.100.254")
            }]
        );
        assert_eq!(
            Pool::parse("one", "198.18.100.9/32").unwrap().first,
            ip("198.18.100.9")
        );
    }

    #[test]
    fn cidr_pools_accept_cidrs_and_ranges_and_refuse_nonsense() {
        let p = pools_from_flags(
            "",
            "defaultPool=198.18.100.0/30,pool2=198.18.101.5-198.18.101.7",
        )
        .unwrap();
        assert_eq!(
            (p[0].first, p[0].last),
            (ip("198.18.100.1"), ip("198.18.100.2"))
        );
        assert_eq!(
            (p[1].first, p[1].last),
            (ip("198.18.101.5"), ip("198.18.101.7"))
        );
        for bad in [
            "x",
            "a=1.2.3.4",
            "a=1.2.3.0/33",
            "a=1.2.3.9-1.2.3.1",
            "a=::1/64",
            "a=1.2.3.0/24,a=1.2.4.0/24",
        ] {
            assert!(pools_from_flags("", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn services_on_different_ports_share_an_address() {
        let mut i = ipam(false);
        let a = i.allocate("ns/a", None, &[tcp(80)]).unwrap();
        let b = i.allocate("ns/b", None, &[tcp(443)]).unwrap();
        assert_eq!((a, b), (ip("198.18.100.1"), ip("198.18.100.1")));
    }

    #[test]
    fn the_same_port_and_protocol_never_get_the_same_address() {
        let mut i = ipam(false);
        let a = i.allocate("ns/a", None, &[tcp(80)]).unwrap();
        let b = i.allocate("ns/b", None, &[tcp(80)]).unwrap();
        let c = i.allocate("ns/c", None, &[(80, "udp".into())]).unwrap();
        assert_ne!(a, b);
        assert_eq!(c, a, "udp/80 may share with tcp/80");
    }

    #[test]
    fn unique_mode_gives_every_service_its_own_address() {
        let mut i = ipam(true);
        let a = i.allocate("ns/a", None, &[tcp(80)]).unwrap();
        let b = i.allocate("ns/b", None, &[tcp(443)]).unwrap();
        assert_ne!(a, b);
        let e = i.claim("ns/c", a, &[tcp(8080)]).unwrap_err();
        assert!(matches!(e, IpamError::AddressTaken { .. }), "{e}");
    }

    #[test]
    fn allocation_is_stable_and_follows_port_changes() {
        let mut i = ipam(false);
        let a = i.allocate("ns/a", None, &[tcp(80)]).unwrap();
        assert_eq!(i.allocate("ns/a", None, &[tcp(80), tcp(81)]).unwrap(), a);
        // a now holds 81 on its address, so b must go elsewhere.
        let b = i.allocate("ns/b", None, &[tcp(81)]).unwrap();
        assert_ne!(a, b);
        assert_eq!(i.allocate("ns/a", None, &[tcp(82)]).unwrap(), a);
        let c = i.allocate("ns/c", None, &[tcp(80)]).unwrap();
        assert_eq!(
            c, a,
            "a dropped port 80, so it is free on a's address again"
        );
    }

    #[test]
    fn static_requests_are_honoured_or_refused() {
        let mut i = ipam(false);
        i.claim("ns/a", ip("198.18.100.50"), &[tcp(80)]).unwrap();
        i.claim("ns/out", ip("203.0.113.9"), &[tcp(80)]).unwrap();
        let e = i
            .claim("ns/b", ip("198.18.100.50"), &[tcp(80)])
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "address 198.18.100.50 port 80/tcp is already used by Service ns/a"
        );
        i.claim("ns/b", ip("198.18.100.50"), &[tcp(443)]).unwrap();
    }

    #[test]
    fn release_returns_the_address_to_the_pool() {
        let mut i = ipam(true);
        let a = i.allocate("ns/a", None, &[tcp(80)]).unwrap();
        i.release("ns/a");
        assert_eq!(i.address_of("ns/a"), None);
        assert_eq!(i.allocate("ns/b", None, &[tcp(80)]).unwrap(), a);
    }

    #[test]
    fn rebuilding_from_statuses_keeps_addresses_and_new_services_avoid_them() {
        let mut i = ipam(true);
        i.claim("ns/a", ip("198.18.100.1"), &[tcp(80)]).unwrap();
        i.claim("ns/b", ip("198.18.100.3"), &[tcp(80)]).unwrap();
        assert_eq!(
            i.allocate("ns/a", None, &[tcp(80)]).unwrap(),
            ip("198.18.100.1")
        );
        assert_eq!(
            i.allocate("ns/c", None, &[tcp(80)]).unwrap(),
            ip("198.18.100.2")
        );
        assert_eq!(
            i.allocate("ns/d", None, &[tcp(80)]).unwrap(),
            ip("198.18.100.4")
        );
    }

    #[test]
    fn unknown_pools_and_exhaustion_are_reported() {
        let mut i = Ipam::new(pools_from_flags("", "small=198.18.100.1/32").unwrap(), true);
        let e = i.allocate("ns/a", None, &[tcp(80)]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "pool \"defaultPool\" does not exist (pools: small)"
        );
        i.allocate("ns/a", Some("small"), &[tcp(80)]).unwrap();
        let e = i.allocate("ns/b", Some("small"), &[tcp(80)]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "pool \"small\" has no free address for ports 80/tcp"
        );
    }
}
