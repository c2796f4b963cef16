//! Compiles the desired state into what the fast path uses: a dataplane snapshot and the key
//! sets of the XDP program's maps. Pure functions: no I/O, easy to test.

use crate::state::DesiredState;
use oxlb_api::{Protocol, ServiceSpec};
use oxlb_dataplane::select::Algorithm;
use oxlb_dataplane::snapshot::{self, Endpoint, NextHop, OnEndpointDown, Proto, Service, Snapshot};
use oxlb_xdp::LbKey;
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::Duration;

/// What the kernel told us about reaching the endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reachability {
    /// Endpoints whose neighbour MAC is known.
    pub next_hops: HashMap<IpAddr, NextHop>,
    /// Our own address on the route toward each endpoint (known before the MAC is), of the
    /// endpoint's family.
    pub sources: HashMap<IpAddr, IpAddr>,
    /// The IP MTU of every Ethernet interface, by ifindex.
    pub link_mtus: HashMap<u32, u16>,
}

/// The keys the XDP program matches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct XdpKeys {
    /// Destinations steered to us: the VIPs.
    pub dst: BTreeSet<LbKey>,
    /// Sources steered to us: endpoints answering DNAT flows.
    pub src: BTreeSet<LbKey>,
    /// Our addresses whose SNAT port range is steered to us (port 0 in the key).
    pub snat: BTreeSet<LbKey>,
}

/// One probed endpoint of one service: services probe their endpoints independently, as their
/// probe settings differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HealthKey {
    pub service: oxlb_api::ServiceKey,
    pub endpoint: IpAddr,
    pub target_port: u16,
}

/// Endpoints whose probe reports them down; every other endpoint is up.
pub type Down = BTreeSet<HealthKey>;

/// IP protocol number of ICMPv4.
const ICMP: u8 = 1;
/// IP protocol number of ICMPv6.
const ICMPV6: u8 = 58;

pub fn proto(p: Protocol) -> Proto {
    match p {
        Protocol::Tcp => Proto::Tcp,
        Protocol::Udp => Proto::Udp,
        Protocol::Sctp => Proto::Sctp,
    }
}

pub fn service_key(spec: &ServiceSpec) -> snapshot::ServiceKey {
    snapshot::ServiceKey {
        vip: spec.key.external_ip,
        port: spec.key.port,
        proto: proto(spec.key.protocol),
    }
}

fn mode(m: oxlb_api::NatMode) -> snapshot::NatMode {
    match m {
        oxlb_api::NatMode::Dnat => snapshot::NatMode::Dnat,
        oxlb_api::NatMode::OneArm => snapshot::NatMode::OneArm,
        oxlb_api::NatMode::FullNat => snapshot::NatMode::FullNat,
        oxlb_api::NatMode::Dsr => snapshot::NatMode::Dsr,
    }
}

fn algorithm(s: oxlb_api::Selection) -> Algorithm {
    match s {
        oxlb_api::Selection::RoundRobin => Algorithm::RoundRobin,
        oxlb_api::Selection::Hash => Algorithm::Hash,
        oxlb_api::Selection::Priority => Algorithm::Weighted,
        oxlb_api::Selection::Persist => Algorithm::Persist,
        oxlb_api::Selection::LeastConnections => Algorithm::LeastConnections,
    }
}

/// The dataplane's service; fails only for what validation already refuses (duplicate
/// endpoints), so an error here is a bug worth reporting, not a user mistake.
fn service(spec: &ServiceSpec, down: &Down) -> Result<Service, String> {
    let endpoints = spec
        .endpoints
        .iter()
        .map(|e| Endpoint {
            addr: e.ip,
            port: e.target_port,
            weight: e.weight,
        })
        .collect();
    Service::new(
        service_key(spec),
        spec.name.clone(),
        mode(spec.mode),
        algorithm(spec.selection),
        endpoints,
        Duration::from_secs(u64::from(spec.inactive_timeout_secs)),
    )
    .map(|mut svc| {
        svc.port_max = spec.port_max;
        svc.allowed_sources = spec.allowed_sources.iter().filter_map(|p| p.v4()).collect();
        svc.allowed_sources_v6 = spec.allowed_sources.iter().filter_map(|p| p.v6()).collect();
        svc.block_new_flows = spec.block_new_flows;
        svc.secondaries = spec.secondary_ips.clone();
        svc.on_endpoint_down = match spec.on_endpoint_down {
            oxlb_api::OnEndpointDown::Keep => OnEndpointDown::Keep,
            oxlb_api::OnEndpointDown::Reset => OnEndpointDown::Reset,
        };
        if spec.monitor.is_some() {
            svc.live = spec
                .endpoints
                .iter()
                .map(|e| {
                    !down.contains(&HealthKey {
                        service: spec.key,
                        endpoint: e.ip,
                        target_port: e.target_port,
                    })
                })
                .collect();
        }
        svc
    })
    .map_err(|e| format!("service {}: {e}", spec.key))
}

/// Every endpoint address of the state (the next hops to resolve).
pub fn endpoint_addrs(state: &DesiredState) -> BTreeSet<IpAddr> {
    state
        .services()
        .flat_map(|s| s.endpoints.iter().map(|e| e.ip))
        .collect()
}

/// The snapshot for `state` with what is known about reaching its endpoints and which of them
/// are down. Only monitored services honour `down`, so a stale entry cannot stop traffic.
pub fn snapshot(
    state: &DesiredState,
    reach: &Reachability,
    down: &Down,
) -> Result<Snapshot, String> {
    let mut snap = Snapshot {
        link_mtus: reach.link_mtus.iter().map(|(&i, &m)| (i, m)).collect(),
        ..Snapshot::default()
    };
    for spec in state.services() {
        let svc = service(spec, down)?;
        for ep in &svc.endpoints {
            if let Some(nh) = reach.next_hops.get(&ep.addr) {
                snap.next_hops.insert(ep.addr, *nh);
            }
            if let Some(src) = reach.sources.get(&ep.addr) {
                snap.sources.insert(ep.addr, *src);
                snap.own_addrs.insert(*src);
            }
        }
        // One entry per port of the range and address of the rule (see
        // `Snapshot::services`): a secondary address maps to the service as the VIP does. The
        // API refuses overlapping rules, and this refuses them again rather than let one
        // shadow another.
        for vip in spec.addresses() {
            snap.vips.insert(vip);
            for port in spec.ports() {
                let at = snapshot::ServiceKey {
                    vip,
                    port,
                    ..svc.key
                };
                if let Some(other) = snap.services.insert(at, svc.clone()) {
                    return Err(format!(
                        "service {}: {vip} port {port} is also a port of {}:{}-{}/{}",
                        spec.key, other.key.vip, other.key.port, other.port_max, spec.key.protocol
                    ));
                }
            }
        }
    }
    Ok(snap)
}

/// The XDP keys for `state`: which packets are the load balancer's.
pub fn xdp_keys(state: &DesiredState, reach: &Reachability) -> XdpKeys {
    let mut keys = XdpKeys::default();
    for spec in state.services() {
        let p = proto(spec.key.protocol) as u8;
        let vip = spec.key.external_ip;
        // A range is steered with one key per port rather than a range-aware lookup in the
        // XDP program: the per-packet path stays one hash lookup, the C program unchanged, and
        // the API caps a rule at MAX_PORT_RANGE (1024) ports of the map's 65 536 keys.
        // Secondary addresses (multi-homed SCTP) are steered exactly as the VIP.
        let icmp = if vip.is_ipv4() { ICMP } else { ICMPV6 };
        for addr in spec.addresses() {
            for port in spec.ports() {
                keys.dst.insert(LbKey::new(addr, port, p));
            }
            // ICMP to the VIP (echo) comes to us too; port 0 is how the XDP program keys it.
            // For ICMPv6 the program steers only echo requests with that key: neighbour
            // discovery to the VIP's address stays with the kernel.
            keys.dst.insert(LbKey::new(addr, 0, icmp));
        }
        match mode(spec.mode) {
            // Endpoints answer from their own address and port, straight to the client.
            // Their answers to our own address are the host's connections (health probes):
            // listing that address lets the XDP program pass those to the kernel.
            snapshot::NatMode::Dnat => {
                for e in &spec.endpoints {
                    // An endpoint that keeps the client's port (0) answers from any port of
                    // the rule.
                    if e.target_port == 0 {
                        keys.src
                            .extend(spec.ports().map(|port| LbKey::new(e.ip, port, p)));
                    } else {
                        keys.src.insert(LbKey::new(e.ip, e.target_port, p));
                    }
                    // Port 0: the later fragments of an endpoint's datagrams (no ports).
                    keys.src.insert(LbKey::new(e.ip, 0, p));
                    if let Some(src) = reach.sources.get(&e.ip) {
                        keys.snat.insert(LbKey::new(*src, 0, p));
                    }
                }
            }
            // Endpoints answer to the VIP, on a port of the SNAT range; an IPv4 endpoint of an
            // IPv6 VIP (NAT64) answers our own IPv4 address toward it instead.
            snapshot::NatMode::FullNat => {
                for e in &spec.endpoints {
                    if e.ip.is_ipv4() == vip.is_ipv4() {
                        keys.snat.insert(LbKey::new(vip, 0, p));
                    } else if let Some(src) = reach.sources.get(&e.ip) {
                        keys.snat.insert(LbKey::new(*src, 0, p));
                    }
                }
            }
            // Endpoints answer to our address on their side, on a port of the SNAT range.
            snapshot::NatMode::OneArm => {
                for e in &spec.endpoints {
                    if let Some(src) = reach.sources.get(&e.ip) {
                        keys.snat.insert(LbKey::new(*src, 0, p));
                    }
                }
            }
            // Endpoints answer the client directly; nothing comes back through us.
            snapshot::NatMode::Dsr => {}
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxlb_api::NatMode;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn state(mode: NatMode) -> DesiredState {
        let mut s = DesiredState::default();
        s.upsert(ServiceSpec {
            mode,
            ..crate::state::test_spec(2020, &[1])
        });
        s
    }

    fn reach() -> Reachability {
        let mut r = Reachability::default();
        r.sources.insert(
            Ipv4Addr::new(198, 18, 31, 1).into(),
            Ipv4Addr::new(198, 18, 31, 254).into(),
        );
        r
    }

    fn down(state: &DesiredState) -> Down {
        let spec = state.services().next().unwrap();
        [HealthKey {
            service: spec.key,
            endpoint: Ipv4Addr::new(198, 18, 31, 1).into(),
            target_port: 8080,
        }]
        .into()
    }

    #[test]
    fn a_down_endpoint_of_a_monitored_service_is_not_live() {
        let mut s = state(NatMode::Dnat);
        let mut spec = s.services().next().unwrap().clone();
        spec.monitor = Some(oxlb_api::ProbeSpec {
            kind: oxlb_api::ProbeKind::Tcp,
            port: 0,
            request: String::new(),
            response: String::new(),
            timeout_secs: 1,
            retries: 2,
        });
        s.upsert(spec);
        let snap = snapshot(&s, &reach(), &down(&s)).unwrap();
        let svc = snap.services.values().next().unwrap();
        assert_eq!(svc.live, [false]);
        let snap = snapshot(&s, &reach(), &Down::new()).unwrap();
        assert_eq!(snap.services.values().next().unwrap().live, [true]);
    }

    #[test]
    fn secondary_addresses_are_steered_and_map_to_the_service_on_every_port() {
        let mut s = DesiredState::default();
        let sec: IpAddr = Ipv4Addr::new(198, 18, 101, 1).into();
        let mut spec = crate::state::test_spec(2020, &[1]);
        spec.key.protocol = oxlb_api::Protocol::Sctp;
        spec.port_max = 2021;
        spec.secondary_ips = vec![sec];
        s.upsert(spec);
        let k = xdp_keys(&s, &reach());
        for port in [2020, 2021] {
            assert!(k.dst.contains(&LbKey::new(sec, port, Proto::Sctp as u8)));
        }
        assert!(!k.dst.contains(&LbKey::new(sec, 2022, Proto::Sctp as u8)));
        let snap = snapshot(&s, &reach(), &Down::new()).unwrap();
        let at = |vip, port| snapshot::ServiceKey {
            vip,
            port,
            proto: Proto::Sctp,
        };
        let primary = at(Ipv4Addr::new(198, 18, 100, 1).into(), 2020);
        let svc = &snap.services[&at(sec, 2021)];
        assert_eq!(svc.key, primary);
        assert_eq!(svc.secondaries, [sec]);
        assert!(snap.vips.contains(&sec));
    }

    #[test]
    fn a_rules_on_endpoint_down_policy_reaches_its_service_in_the_snapshot() {
        for (policy, want) in [
            (oxlb_api::OnEndpointDown::Keep, OnEndpointDown::Keep),
            (oxlb_api::OnEndpointDown::Reset, OnEndpointDown::Reset),
        ] {
            let mut s = DesiredState::default();
            s.upsert(ServiceSpec {
                on_endpoint_down: policy,
                ..crate::state::test_spec(2020, &[1])
            });
            let snap = snapshot(&s, &reach(), &Down::new()).unwrap();
            assert_eq!(
                snap.services.values().next().unwrap().on_endpoint_down,
                want
            );
        }
    }

    #[test]
    fn an_unmonitored_service_ignores_a_stale_down_entry() {
        let s = state(NatMode::Dnat);
        let snap = snapshot(&s, &reach(), &down(&s)).unwrap();
        assert_eq!(snap.services.values().next().unwrap().live, [true]);
    }

    #[test]
    fn dnat_steers_the_vip_and_the_endpoints_answers_but_not_those_to_the_host() {
        let k = xdp_keys(&state(NatMode::Dnat), &reach());
        assert_eq!(k.dst.len(), 2, "the service's port and ICMP");
        assert!(k
            .src
            .contains(&LbKey::v4(Ipv4Addr::new(198, 18, 31, 1), 8080, 6)));
        // Our own address toward the endpoint: its answers to the host stay with the kernel.
        assert_eq!(
            k.snat.into_iter().collect::<Vec<_>>(),
            [LbKey::v4(Ipv4Addr::new(198, 18, 31, 254), 0, 6)]
        );
    }

    #[test]
    fn full_nat_steers_the_snat_range_on_the_vip_and_no_endpoint_sources() {
        let k = xdp_keys(&state(NatMode::FullNat), &reach());
        assert!(k.src.is_empty());
        assert_eq!(
            k.snat.into_iter().collect::<Vec<_>>(),
            [LbKey::v4(Ipv4Addr::new(198, 18, 100, 1), 0, 6)]
        );
    }

    #[test]
    fn one_arm_steers_the_snat_range_on_our_address_toward_the_endpoints() {
        let k = xdp_keys(&state(NatMode::OneArm), &reach());
        assert_eq!(
            k.snat.into_iter().collect::<Vec<_>>(),
            [LbKey::v4(Ipv4Addr::new(198, 18, 31, 254), 0, 6)]
        );
    }

    #[test]
    fn dsr_steers_only_the_vip() {
        let k = xdp_keys(&state(NatMode::Dsr), &reach());
        assert_eq!(k.dst.len(), 2);
        assert!(k.src.is_empty() && k.snat.is_empty());
    }

    #[test]
    fn a_port_range_is_one_snapshot_entry_and_one_xdp_key_per_port_sharing_the_rules_key() {
        let mut s = DesiredState::default();
        s.upsert(ServiceSpec {
            port_max: 2023,
            ..crate::state::test_spec(2020, &[1])
        });
        let snap = snapshot(&s, &reach(), &Down::new()).unwrap();
        assert_eq!(snap.services.len(), 4);
        assert!(snap
            .services
            .values()
            .all(|svc| svc.key.port == 2020 && svc.port_max == 2023));
        let k = xdp_keys(&s, &reach());
        assert_eq!(k.dst.len(), 5, "four ports and ICMP");
        assert!(k
            .dst
            .contains(&LbKey::v4(Ipv4Addr::new(198, 18, 100, 1), 2023, 6)));
    }

    #[test]
    fn overlapping_ranges_that_reach_the_compiler_are_refused_not_shadowed() {
        let mut s = DesiredState::default();
        s.upsert(ServiceSpec {
            port_max: 2023,
            ..crate::state::test_spec(2020, &[1])
        });
        s.upsert(crate::state::test_spec(2022, &[2]));
        let e = snapshot(&s, &reach(), &Down::new()).expect_err("port 2022 is in both");
        assert!(e.contains("port 2022"), "{e}");
    }

    const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 1);
    const EP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x31, 0, 0, 0, 0, 0, 1);
    const OWN6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x31, 0, 0, 0, 0, 0, 0xfe);

    /// VIP fd00:100::1 port 2020/tcp in `mode` over fd00:31::1 and 198.18.31.1 (port 8080).
    fn ipv6_state(mode: NatMode) -> DesiredState {
        let mut spec = crate::state::test_spec(2020, &[1]);
        spec.key.external_ip = VIP6.into();
        spec.mode = mode;
        let mut ep6 = spec.endpoints[0];
        ep6.ip = EP6.into();
        spec.endpoints.insert(0, ep6);
        let mut s = DesiredState::default();
        s.upsert(spec);
        s
    }

    fn ipv6_reach() -> Reachability {
        let mut r = reach();
        r.sources.insert(EP6.into(), OWN6.into());
        r
    }

    #[test]
    fn an_ipv6_vip_is_steered_with_ipv6_keys_and_its_echo_requests_with_icmpv6s_key() {
        let k = xdp_keys(&ipv6_state(NatMode::FullNat), &ipv6_reach());
        assert_eq!(
            k.dst.into_iter().collect::<Vec<_>>(),
            [LbKey::v6(VIP6, 0, 58), LbKey::v6(VIP6, 2020, 6)]
        );
    }

    #[test]
    fn nat64_full_nat_steers_the_snat_range_on_the_vip_and_on_our_ipv4_address() {
        let k = xdp_keys(&ipv6_state(NatMode::FullNat), &ipv6_reach());
        assert_eq!(
            k.snat,
            [
                LbKey::v6(VIP6, 0, 6),
                LbKey::v4(Ipv4Addr::new(198, 18, 31, 254), 0, 6)
            ]
            .into()
        );
    }

    #[test]
    fn one_arm_steers_our_own_address_of_each_family() {
        let k = xdp_keys(&ipv6_state(NatMode::OneArm), &ipv6_reach());
        assert_eq!(
            k.snat,
            [
                LbKey::v6(OWN6, 0, 6),
                LbKey::v4(Ipv4Addr::new(198, 18, 31, 254), 0, 6)
            ]
            .into()
        );
    }

    #[test]
    fn ipv6_dnat_steers_the_endpoints_answers_by_their_ipv6_source() {
        let mut s = ipv6_state(NatMode::Dnat);
        let mut spec = s.services().next().unwrap().clone();
        spec.endpoints.truncate(1);
        s.upsert(spec);
        let k = xdp_keys(&s, &ipv6_reach());
        assert!(k.src.contains(&LbKey::v6(EP6, 8080, 6)), "{:?}", k.src);
        assert!(k.src.iter().all(|key| key.addr() == IpAddr::from(EP6)));
        assert_eq!(k.snat, [LbKey::v6(OWN6, 0, 6)].into());
    }

    #[test]
    fn the_snapshot_knows_sources_and_own_addresses_of_both_families() {
        let snap = snapshot(&ipv6_state(NatMode::FullNat), &ipv6_reach(), &Down::new()).unwrap();
        assert_eq!(snap.sources.get(&IpAddr::from(EP6)), Some(&OWN6.into()));
        assert_eq!(
            snap.sources
                .get(&IpAddr::from(Ipv4Addr::new(198, 18, 31, 1))),
            Some(&Ipv4Addr::new(198, 18, 31, 254).into())
        );
        assert!(snap.own_addrs.contains(&IpAddr::from(OWN6)));
        assert!(snap.vips.contains(&IpAddr::from(VIP6)));
    }

    #[test]
    fn allowed_sources_of_both_families_reach_the_service() {
        let mut s = ipv6_state(NatMode::FullNat);
        let mut spec = s.services().next().unwrap().clone();
        spec.allowed_sources = vec![
            oxlb_api::IpPrefix {
                addr: "fd00::".parse().unwrap(),
                len: 16,
            },
            oxlb_api::IpPrefix {
                addr: "198.18.0.0".parse().unwrap(),
                len: 24,
            },
        ];
        s.upsert(spec);
        let snap = snapshot(&s, &ipv6_reach(), &Down::new()).unwrap();
        let svc = snap.services.values().next().unwrap();
        assert!(svc.allows("fd00::2".parse().unwrap()));
        assert!(!svc.allows("fd01::2".parse().unwrap()));
        assert!(svc.allows("198.18.0.2".parse().unwrap()));
        assert!(!svc.allows("198.18.1.2".parse().unwrap()));
    }
}
