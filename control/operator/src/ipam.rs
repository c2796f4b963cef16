//! Service address management: IPv4 pools from `--externalCIDR` / `--cidrPools`, IPv6 pools
//! from `--cidr6Pools`, shared addresses by default (Services on different ports share one
//! address), one address per Service with `--setUniqueIP`, static requests honoured or
//! refused, and rebuilding from the addresses Services already show. A Service holds at most
//! one address per family (a dual-stack Service one of each). Pure: no I/O; the reconciler
//! owns one `Ipam` behind a lock.
//!
//! The invariant every operation keeps: no (address, port, protocol) is held by two Services.

use kube_watcher::Family;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// kube-loxilb's name for the pool `--externalCIDR` defines, and for its default pools.
pub const DEFAULT_POOL: &str = "defaultPool";

/// kube-loxilb's IPv4 pool when neither `--externalCIDR` nor `--cidrPools` is given.
pub const DEFAULT_POOL4: &str = "123.123.123.0/24";
/// kube-loxilb's IPv6 pool when `--cidr6Pools` is not given.
pub const DEFAULT_POOL6: &str = "3ffe:cafe::1/96";

/// A port of a Service, as IPAM tracks it: (port, protocol in lower case).
pub type PortKey = (u16, String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("pool definition {0:?} is invalid: use name=CIDR or name=FIRST-LAST")]
    BadPool(String),
    #[error("pool definition {0:?} is not {1}: IPv4 pools go in --externalCIDR / --cidrPools, IPv6 ones in --cidr6Pools")]
    WrongFamily(String, Family),
    #[error("{1} pool {0:?} is defined twice")]
    DuplicatePool(String, Family),
    #[error("{1} pool {0:?} does not exist ({1} pools: {2})")]
    UnknownPool(String, Family, String),
    #[error("pool {0:?} has no free address for ports {1}")]
    Exhausted(String, String),
    #[error("address {ip} port {port}/{protocol} is already used by Service {owner}")]
    PortTaken {
        ip: IpAddr,
        port: u16,
        protocol: String,
        owner: String,
    },
    #[error("address {ip} is already used by Service {owner} and --setUniqueIP is set")]
    AddressTaken { ip: IpAddr, owner: String },
    #[error(
        "--externalSecondaryCIDRs entry {0:?} is invalid: use CIDR or FIRST-LAST, comma-separated"
    )]
    BadSecondaryPool(String),
    #[error("--externalSecondaryCIDRs has {0} pools; at most {MAX_SECONDARY_POOLS} are allowed (one per secondary address)")]
    TooManySecondaryPools(usize),
    #[error("loxilb.io/num-secondary-networks asks for {wanted} secondary address(es) but --externalSecondaryCIDRs defines {pools} pool(s)")]
    NotEnoughSecondaryPools { wanted: usize, pools: usize },
}

/// kube-loxilb's limit on `--externalSecondaryCIDRs` pools (a rule carries at most three
/// secondary addresses).
pub const MAX_SECONDARY_POOLS: usize = 3;

/// The name of the `n`th (from 1) `--externalSecondaryCIDRs` pool; secondary address `n` of a
/// Service comes from it.
pub fn secondary_pool_name(n: usize) -> String {
    format!("secondary{n}")
}

/// The key under which a Service holds its `n`th secondary address in the secondary `Ipam`.
pub fn secondary_holder(service: &str, n: usize) -> String {
    format!("{service}#secondary{n}")
}

/// Parses `--externalSecondaryCIDRs` (`CIDR|FIRST-LAST,...`, at most three), kube-loxilb's
/// pools of secondary (multi-homed SCTP) addresses, named `secondary1`...`secondary3`.
pub fn secondary_pools_from_flag(list: &str) -> Result<Vec<Pool>, IpamError> {
    let defs: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if defs.len() > MAX_SECONDARY_POOLS {
        return Err(IpamError::TooManySecondaryPools(defs.len()));
    }
    defs.iter()
        .enumerate()
        .map(|(i, d)| {
            Pool::parse(&secondary_pool_name(i + 1), d)
                .map_err(|_| IpamError::BadSecondaryPool((*d).to_owned()))
        })
        .collect()
}

/// A named range of addresses of one family (inclusive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub name: String,
    pub first: IpAddr,
    pub last: IpAddr,
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn from_u128(family: Family, n: u128) -> IpAddr {
    match family {
        // Only called with values between two IPv4 addresses.
        Family::V4 => IpAddr::V4(Ipv4Addr::from(n as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(n)),
    }
}

impl Pool {
    /// Parses `CIDR` or `FIRST-LAST`, IPv4 or IPv6. An IPv4 CIDR shorter than /31 leaves out
    /// its network and broadcast addresses; an IPv6 CIDR shorter than /127 leaves out its
    /// all-zero (subnet-router anycast) address.
    pub fn parse(name: &str, def: &str) -> Result<Pool, IpamError> {
        let bad = || IpamError::BadPool(format!("{name}={def}"));
        let (first, last) = if let Some((a, b)) = def.split_once('-') {
            let a: IpAddr = a.trim().parse().map_err(|_| bad())?;
            let b: IpAddr = b.trim().parse().map_err(|_| bad())?;
            if Family::of(a) != Family::of(b) {
                return Err(bad());
            }
            (a, b)
        } else {
            let (ip, len) = def.split_once('/').ok_or_else(bad)?;
            let ip: IpAddr = ip.trim().parse().map_err(|_| bad())?;
            let len: u32 = len.trim().parse().map_err(|_| bad())?;
            let family = Family::of(ip);
            let bits = if family == Family::V4 { 32 } else { 128 };
            if len > bits {
                return Err(bad());
            }
            let host_bits = bits - len;
            let host_mask: u128 = if host_bits == 128 {
                u128::MAX
            } else {
                (1u128 << host_bits) - 1
            };
            let net = to_u128(ip) & !host_mask;
            let top = net | host_mask;
            let (a, b) = match family {
                Family::V4 if len < 31 => (net + 1, top - 1),
                Family::V6 if len < 127 => (net + 1, top),
                _ => (net, top),
            };
            (from_u128(family, a), from_u128(family, b))
        };
        if to_u128(first) > to_u128(last) || name.is_empty() {
            return Err(bad());
        }
        Ok(Pool {
            name: name.to_owned(),
            first,
            last,
        })
    }

    pub fn family(&self) -> Family {
        Family::of(self.first)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        Family::of(ip) == self.family()
            && (to_u128(self.first)..=to_u128(self.last)).contains(&to_u128(ip))
    }
}

fn parse_defs(list: &str) -> Result<Vec<(String, String)>, IpamError> {
    list.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|d| {
            d.split_once('=')
                .map(|(n, c)| (n.trim().to_owned(), c.trim().to_owned()))
                .ok_or_else(|| IpamError::BadPool(d.to_owned()))
        })
        .collect()
}

fn pools_of(defs: Vec<(String, String)>, family: Family) -> Result<Vec<Pool>, IpamError> {
    let mut pools: Vec<Pool> = Vec::new();
    for (name, def) in defs {
        if pools.iter().any(|p| p.name == name) {
            return Err(IpamError::DuplicatePool(name, family));
        }
        let p = Pool::parse(&name, &def)?;
        if p.family() != family {
            return Err(IpamError::WrongFamily(format!("{name}={def}"), family));
        }
        pools.push(p);
    }
    Ok(pools)
}

/// Parses `--cidrPools` (`name=CIDR|FIRST-LAST,...`), or `--externalCIDR` as `defaultPool`
/// (which then replaces `--cidrPools`, as in kube-loxilb). IPv4 only.
pub fn pools_from_flags(external_cidr: &str, cidr_pools: &str) -> Result<Vec<Pool>, IpamError> {
    let defs = if !external_cidr.is_empty() {
        vec![(DEFAULT_POOL.to_owned(), external_cidr.to_owned())]
    } else {
        parse_defs(cidr_pools)?
    };
    pools_of(defs, Family::V4)
}

/// Parses `--cidr6Pools` (same syntax as `--cidrPools`), IPv6 only.
pub fn pools6_from_flag(cidr6_pools: &str) -> Result<Vec<Pool>, IpamError> {
    pools_of(parse_defs(cidr6_pools)?, Family::V6)
}

/// The allocations of every Service.
#[derive(Debug, Clone)]
pub struct Ipam {
    /// Pools of both families; a name is unique within its family.
    pools: Vec<Pool>,
    unique: bool,
    /// address -> (port -> owning Service `namespace/name`).
    used: BTreeMap<IpAddr, BTreeMap<PortKey, String>>,
    /// (Service, family) -> its address of that family.
    by_service: BTreeMap<(String, Family), IpAddr>,
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

    /// The address of `family` that `service` holds, if any.
    pub fn address_of(&self, service: &str, family: Family) -> Option<IpAddr> {
        self.by_service.get(&(service.to_owned(), family)).copied()
    }

    /// The first conflict `service` would have holding `ip` with `ports`.
    fn conflict(&self, service: &str, ip: IpAddr, ports: &[PortKey]) -> Option<IpamError> {
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

    /// Records that `service` holds `ip` for exactly `ports` (replacing what it held in that
    /// family).
    fn record(&mut self, service: &str, ip: IpAddr, ports: &[PortKey]) {
        self.release_family(service, Family::of(ip));
        let held = self.used.entry(ip).or_default();
        for k in ports {
            held.insert(k.clone(), service.to_owned());
        }
        self.by_service
            .insert((service.to_owned(), Family::of(ip)), ip);
    }

    /// Gives `service` the address `ip` it asks for (a static IP, `spec.loadBalancerIP`, or an
    /// address it already shows in its status). Addresses outside every pool are allowed, as in
    /// kube-loxilb; conflicts are refused.
    pub fn claim(&mut self, service: &str, ip: IpAddr, ports: &[PortKey]) -> Result<(), IpamError> {
        if let Some(e) = self.conflict(service, ip, ports) {
            return Err(e);
        }
        self.record(service, ip, ports);
        Ok(())
    }

    /// The address of `family` of `service`: the one it holds if its ports still fit there,
    /// else the first free one of `pool` (`defaultPool` when `None`) of that family.
    pub fn allocate(
        &mut self,
        service: &str,
        family: Family,
        pool: Option<&str>,
        ports: &[PortKey],
    ) -> Result<IpAddr, IpamError> {
        if let Some(ip) = self.address_of(service, family) {
            self.claim(service, ip, ports)?;
            return Ok(ip);
        }
        let name = pool.unwrap_or(DEFAULT_POOL);
        let p = self
            .pools
            .iter()
            .find(|p| p.name == name && p.family() == family)
            .cloned()
            .ok_or_else(|| {
                let names: Vec<&str> = self
                    .pools
                    .iter()
                    .filter(|p| p.family() == family)
                    .map(|p| p.name.as_str())
                    .collect();
                IpamError::UnknownPool(name.to_owned(), family, names.join(","))
            })?;
        // Every address skipped is held by someone, so this loop ends after at most as many
        // steps as there are addresses in use, even in a /64.
        let mut n = to_u128(p.first);
        loop {
            let ip = from_u128(family, n);
            if self.conflict(service, ip, ports).is_none() {
                self.record(service, ip, ports);
                return Ok(ip);
            }
            if n >= to_u128(p.last) {
                return Err(IpamError::Exhausted(p.name, ports_text(ports)));
            }
            n += 1;
        }
    }

    /// Adds a pool at run time (a LoxiURL of type `cidrpool`); the same definition again
    /// changes nothing, another one of the same name and family is refused.
    pub fn add_pool(&mut self, pool: Pool) -> Result<(), IpamError> {
        match self
            .pools
            .iter()
            .find(|p| p.name == pool.name && p.family() == pool.family())
        {
            Some(p) if *p == pool => Ok(()),
            Some(_) => Err(IpamError::DuplicatePool(pool.name.clone(), pool.family())),
            None => {
                self.pools.push(pool);
                Ok(())
            }
        }
    }

    /// Removes the pools named `name`. Addresses already given from them stay with their
    /// Services, as kube-loxilb leaves them: taking a live Service's address away is worse
    /// than a pool that shrinks only for new Services.
    pub fn remove_pool(&mut self, name: &str) -> bool {
        let before = self.pools.len();
        self.pools.retain(|p| p.name != name);
        self.pools.len() != before
    }

    /// Frees the address of `family` that `service` holds.
    pub fn release_family(&mut self, service: &str, family: Family) {
        if let Some(ip) = self.by_service.remove(&(service.to_owned(), family)) {
            if let Some(held) = self.used.get_mut(&ip) {
                held.retain(|_, o| o != service);
                if held.is_empty() {
                    self.used.remove(&ip);
                }
            }
        }
    }

    /// Frees everything `service` holds.
    pub fn release(&mut self, service: &str) {
        self.release_family(service, Family::V4);
        self.release_family(service, Family::V6);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube_watcher::Family::{V4, V6};

    #[test]
    fn secondary_cidrs_become_numbered_pools_and_bad_or_too_many_are_refused() {
        let pools =
            secondary_pools_from_flag("124.124.124.0/24, 125.125.125.10-125.125.125.20").unwrap();
        let got: Vec<(String, IpAddr, IpAddr)> = pools
            .iter()
            .map(|p| (p.name.clone(), p.first, p.last))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "secondary1".to_owned(),
                    ip("124.124.124.1"),
                    ip("124.124.124.254")
                ),
                (
                    "secondary2".to_owned(),
                    ip("125.125.125.10"),
                    ip("125.125.125.20")
                ),
            ]
        );
        assert_eq!(secondary_pools_from_flag("").unwrap(), []);
        assert_eq!(
            secondary_pools_from_flag("10.0.0.0/24,nonsense"),
            Err(IpamError::BadSecondaryPool("nonsense".to_owned()))
        );
        assert_eq!(
            secondary_pools_from_flag("10.0.1.0/24,10.0.2.0/24,10.0.3.0/24,10.0.4.0/24"),
            Err(IpamError::TooManySecondaryPools(4))
        );
    }

    #[test]
    fn a_pool_added_at_run_time_serves_new_services_and_its_removal_keeps_given_addresses() {
        let mut ipam = Ipam::new(pools_from_flags("198.18.100.0/30", "").unwrap(), false);
        let ports = vec![(80, "tcp".to_owned())];
        assert!(ipam.allocate("a/x", V4, Some("extra"), &ports).is_err());
        let extra = Pool::parse("extra", "198.18.200.5-198.18.200.6").unwrap();
        ipam.add_pool(extra.clone()).unwrap();
        ipam.add_pool(extra).unwrap();
        let other = Pool::parse("extra", "198.18.201.0/24").unwrap();
        assert_eq!(
            ipam.add_pool(other),
            Err(IpamError::DuplicatePool("extra".into(), V4))
        );
        let ip = ipam.allocate("a/x", V4, Some("extra"), &ports).unwrap();
        assert_eq!(ip, "198.18.200.5".parse::<IpAddr>().unwrap());
        assert!(ipam.remove_pool("extra"));
        assert!(!ipam.remove_pool("extra"));
        assert_eq!(ipam.allocate("a/x", V4, Some("extra"), &ports).unwrap(), ip);
        assert!(ipam.allocate("a/y", V4, Some("extra"), &ports).is_err());
    }

    fn tcp(p: u16) -> PortKey {
        (p, "tcp".to_owned())
    }
    fn ip(s: &str) -> IpAddr {
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
            "a=198.18.0.1-fd00::1",
            "a=1.2.3.0/24,a=1.2.4.0/24",
        ] {
            assert!(pools_from_flags("", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn services_on_different_ports_share_an_address() {
        let mut i = ipam(false);
        let a = i.allocate("ns/a", V4, None, &[tcp(80)]).unwrap();
        let b = i.allocate("ns/b", V4, None, &[tcp(443)]).unwrap();
        assert_eq!((a, b), (ip("198.18.100.1"), ip("198.18.100.1")));
    }

    #[test]
    fn the_same_port_and_protocol_never_get_the_same_address() {
        let mut i = ipam(false);
        let a = i.allocate("ns/a", V4, None, &[tcp(80)]).unwrap();
        let b = i.allocate("ns/b", V4, None, &[tcp(80)]).unwrap();
        let c = i.allocate("ns/c", V4, None, &[(80, "udp".into())]).unwrap();
        assert_ne!(a, b);
        assert_eq!(c, a, "udp/80 may share with tcp/80");
    }

    #[test]
    fn unique_mode_gives_every_service_its_own_address() {
        let mut i = ipam(true);
        let a = i.allocate("ns/a", V4, None, &[tcp(80)]).unwrap();
        let b = i.allocate("ns/b", V4, None, &[tcp(443)]).unwrap();
        assert_ne!(a, b);
        let e = i.claim("ns/c", a, &[tcp(8080)]).unwrap_err();
        assert!(matches!(e, IpamError::AddressTaken { .. }), "{e}");
    }

    #[test]
    fn allocation_is_stable_and_follows_port_changes() {
        let mut i = ipam(false);
        let a = i.allocate("ns/a", V4, None, &[tcp(80)]).unwrap();
        assert_eq!(
            i.allocate("ns/a", V4, None, &[tcp(80), tcp(81)]).unwrap(),
            a
        );
        // a now holds 81 on its address, so b must go elsewhere.
        let b = i.allocate("ns/b", V4, None, &[tcp(81)]).unwrap();
        assert_ne!(a, b);
        assert_eq!(i.allocate("ns/a", V4, None, &[tcp(82)]).unwrap(), a);
        let c = i.allocate("ns/c", V4, None, &[tcp(80)]).unwrap();
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
        let a = i.allocate("ns/a", V4, None, &[tcp(80)]).unwrap();
        i.release("ns/a");
        assert_eq!(i.address_of("ns/a", V4), None);
        assert_eq!(i.allocate("ns/b", V4, None, &[tcp(80)]).unwrap(), a);
    }

    #[test]
    fn rebuilding_from_statuses_keeps_addresses_and_new_services_avoid_them() {
        let mut i = ipam(true);
        i.claim("ns/a", ip("198.18.100.1"), &[tcp(80)]).unwrap();
        i.claim("ns/b", ip("198.18.100.3"), &[tcp(80)]).unwrap();
        assert_eq!(
            i.allocate("ns/a", V4, None, &[tcp(80)]).unwrap(),
            ip("198.18.100.1")
        );
        assert_eq!(
            i.allocate("ns/c", V4, None, &[tcp(80)]).unwrap(),
            ip("198.18.100.2")
        );
        assert_eq!(
            i.allocate("ns/d", V4, None, &[tcp(80)]).unwrap(),
            ip("198.18.100.4")
        );
    }

    #[test]
    fn unknown_pools_and_exhaustion_are_reported() {
        let mut i = Ipam::new(pools_from_flags("", "small=198.18.100.1/32").unwrap(), true);
        let e = i.allocate("ns/a", V4, None, &[tcp(80)]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "IPv4 pool \"defaultPool\" does not exist (IPv4 pools: small)"
        );
        i.allocate("ns/a", V4, Some("small"), &[tcp(80)]).unwrap();
        let e = i
            .allocate("ns/b", V4, Some("small"), &[tcp(80)])
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "pool \"small\" has no free address for ports 80/tcp"
        );
    }

    #[test]
    fn ipv6_pools_parse_like_ipv4_ones_and_stay_in_their_family() {
        let p = pools6_from_flag("defaultPool=3ffe:cafe::1/96,r=fd00::5-fd00::6").unwrap();
        assert_eq!(
            (p[0].first, p[0].last),
            (ip("3ffe:cafe::1"), ip("3ffe:cafe::ffff:ffff"))
        );
        assert_eq!((p[1].first, p[1].last), (ip("fd00::5"), ip("fd00::6")));
        assert!(matches!(
            pools6_from_flag("p=198.18.0.0/24"),
            Err(IpamError::WrongFamily(_, V6))
        ));
        assert!(matches!(
            pools_from_flags("", "p=fd00::/64"),
            Err(IpamError::WrongFamily(_, V4))
        ));
        assert!(pools6_from_flag("p=fd00::/129").is_err());
        let huge = pools6_from_flag("p=fd00::/8").unwrap();
        assert_eq!(huge[0].first, ip("fd00::1"));
    }

    #[test]
    fn a_dual_stack_service_holds_one_address_per_family_and_frees_both() {
        let mut pools = pools_from_flags("198.18.100.0/30", "").unwrap();
        pools.extend(pools6_from_flag("defaultPool=fd00::/126").unwrap());
        let mut i = Ipam::new(pools, false);
        let a4 = i.allocate("ns/a", V4, None, &[tcp(80)]).unwrap();
        let a6 = i.allocate("ns/a", V6, None, &[tcp(80)]).unwrap();
        assert_eq!((a4, a6), (ip("198.18.100.1"), ip("fd00::1")));
        // Same port: the next Service gets the next address of each family.
        assert_eq!(
            i.allocate("ns/b", V6, None, &[tcp(80)]).unwrap(),
            ip("fd00::2")
        );
        assert_eq!(
            i.allocate("ns/c", V6, None, &[tcp(80)]).unwrap(),
            ip("fd00::3")
        );
        assert!(matches!(
            i.allocate("ns/d", V6, None, &[tcp(80)]),
            Err(IpamError::Exhausted(..))
        ));
        i.release_family("ns/a", V6);
        assert_eq!(i.address_of("ns/a", V4), Some(a4));
        assert_eq!(i.allocate("ns/d", V6, None, &[tcp(80)]).unwrap(), a6);
        i.release("ns/a");
        assert_eq!(i.address_of("ns/a", V4), None);
        let e = i
            .allocate("ns/e", V6, Some("other"), &[tcp(80)])
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "IPv6 pool \"other\" does not exist (IPv6 pools: defaultPool)"
        );
    }

    #[test]
    fn allocation_in_a_huge_ipv6_pool_takes_the_first_free_address_quickly() {
        let mut i = Ipam::new(pools6_from_flag("defaultPool=fd00::/64").unwrap(), true);
        for n in 1..=100u16 {
            let got = i
                .allocate(&format!("ns/s{n}"), V6, None, &[tcp(80)])
                .unwrap();
            assert_eq!(got, ip(&format!("fd00::{n:x}")));
        }
    }
}
