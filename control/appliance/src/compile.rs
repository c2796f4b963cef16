//! Compiles the desired state into what the fast path uses: a dataplane snapshot and the key
//! sets of the XDP program's maps. Pure functions: no I/O, easy to test.

use oxlb_api::{Protocol, ServiceSpec};
use oxlb_dataplane::snapshot::{self, Endpoint, NextHop, Proto, Service, Snapshot};
use oxlb_xdp::LbKey;
use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::time::Duration;

pub fn proto(p: Protocol) -> Proto {
    match p {
        Protocol::Tcp => Proto::Tcp,
        Protocol::Udp => Proto::Udp,
    }
}

pub fn service_key(spec: &ServiceSpec) -> snapshot::ServiceKey {
    snapshot::ServiceKey {
        vip: spec.key.external_ip,
        port: spec.key.port,
        proto: proto(spec.key.protocol),
    }
}

fn service(spec: &ServiceSpec) -> Service {
    Service {
        key: service_key(spec),
        name: spec.name.clone(),
        mode: match spec.mode {
            oxlb_api::NatMode::Dnat => snapshot::NatMode::Dnat,
        },
        selection: match spec.selection {
            oxlb_api::Selection::RoundRobin => snapshot::Selection::RoundRobin,
        },
        endpoints: spec
            .endpoints
            .iter()
            .map(|e| Endpoint {
                addr: e.ip,
                port: e.target_port,
                weight: e.weight,
            })
            .collect(),
        inactive_timeout: Duration::from_secs(u64::from(spec.inactive_timeout_secs)),
    }
}

/// Every endpoint address of the given services (the next hops to resolve).
pub fn endpoint_addrs<'a>(specs: impl Iterator<Item = &'a ServiceSpec>) -> BTreeSet<Ipv4Addr> {
    specs
        .flat_map(|s| s.endpoints.iter().map(|e| e.ip))
        .collect()
}

/// The snapshot for `specs` with the next hops known so far.
pub fn snapshot<'a>(
    specs: impl Iterator<Item = &'a ServiceSpec>,
    next_hops: &HashMap<Ipv4Addr, NextHop>,
) -> Snapshot {
    let mut snap = Snapshot::default();
    for spec in specs {
        let svc = service(spec);
        for ep in &svc.endpoints {
            if let Some(nh) = next_hops.get(&ep.addr) {
                snap.next_hops.insert(ep.addr, *nh);
            }
        }
        snap.services.insert(svc.key, svc);
    }
    snap
}

/// Keys for the XDP program: destinations to steer (the VIPs) and sources to steer (endpoints
/// answering a DNAT flow).
pub fn xdp_keys<'a>(
    specs: impl Iterator<Item = &'a ServiceSpec>,
) -> (BTreeSet<LbKey>, BTreeSet<LbKey>) {
    let mut dst = BTreeSet::new();
    let mut src = BTreeSet::new();
    for spec in specs {
        let p = proto(spec.key.protocol) as u8;
        dst.insert(LbKey::v4(spec.key.external_ip, spec.key.port, p));
        for e in &spec.endpoints {
            src.insert(LbKey::v4(e.ip, e.target_port, p));
        }
    }
    (dst, src)
}
