//! The desired state of one Service: from the Service, its EndpointSlices, the Nodes and the
//! Service's address(es), the exact loxilb rules (`LoadBalancerEntry`) every appliance must
//! hold for it. Pure: no I/O, the same inputs always give the same rules, in the same order.
//!
//! Facts mirrored from kube-loxilb: rules are named `<namespace>_<service>:<zone>-inst<N>`; by
//! default the endpoints are the Ready nodes' addresses with the port's `nodePort` (traffic
//! enters the cluster through kube-proxy); with `usePodNetwork` they are the ready pod
//! addresses with the pod's port; `externalTrafficPolicy: Local` keeps only nodes running a
//! ready endpoint; nodes labelled `node.kubernetes.io/exclude-from-external-load-balancers`
//! are skipped; every endpoint has weight 1; `managed` is set.

use crate::annotations::{self, AddressKind, AnnotationError, EpSelect, ServiceOptions};
use k8s_openapi::api::core::v1::{Node, Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use oxlb_api::{AllowedSource, Endpoint, LoadBalancerEntry, SecondaryIp, ServiceArguments};
use std::collections::BTreeSet;
use std::net::IpAddr;

/// kube-loxilb's default load-balancer class (its `loxilbLoadBalancerClass`).
pub const LOXILB_CLASS: &str = "loxilb.io/loxilb";

/// Our own class, always served besides the configured one.
pub const OXLB_CLASS: &str = "oxlb.io/oxlb";

/// The label naming the Service an EndpointSlice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Nodes with this label never receive load-balancer traffic.
pub const EXCLUDE_NODE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

/// Operator-wide settings (from flags) that shape every rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `--zone` (`llb` by default, empty with `--noZoneName`).
    pub zone: String,
    /// `--setLBMode`: loxilb `mode` when the Service does not choose one.
    pub lb_mode: i64,
    /// `--monitor`: probe every rule's endpoints.
    pub monitor: bool,
    /// `--usePodNetwork`: pod addresses instead of node addresses + nodePort.
    pub use_pod_network: bool,
    /// `--setBGP` given: rules are advertised by BGP.
    pub bgp: bool,
    /// `loxilbLoadBalancerClass` (config file); `oxlb.io/oxlb` is served too.
    pub lb_class: String,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            zone: "llb".to_owned(),
            lb_mode: 0,
            monitor: false,
            use_pod_network: false,
            bgp: false,
            lb_class: LOXILB_CLASS.to_owned(),
        }
    }
}

/// Why a Service's rules cannot be computed. Each message says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DesiredError {
    #[error(transparent)]
    Annotation(#[from] AnnotationError),
    /// A port without a nodePort while node endpoints are in use.
    #[error(
        "port {port}/{protocol} has no nodePort (allocateLoadBalancerNodePorts is false?): \
         set loxilb.io/usepodnetwork=yes or let Kubernetes allocate node ports"
    )]
    NoNodePort { port: i32, protocol: String },
    #[error("port {port}/{protocol}: protocol {protocol} is not one of TCP, UDP, SCTP")]
    BadProtocol { port: i32, protocol: String },
    #[error("port {0} is out of range 1-65535")]
    BadPort(i32),
    #[error("spec.externalIPs entry {0:?} is not an IP address")]
    BadExternalIp(String),
    #[error("spec.ipFamilies entry {0:?} is not IPv4 or IPv6")]
    BadIpFamily(String),
    /// Secondary addresses asked for, but the Service has no SCTP port to carry them.
    #[error("secondary addresses (loxilb.io/num-secondary-networks, loxilb.io/secondaryIPs) are for SCTP multi-homing, but the Service has no SCTP port")]
    SecondaryWithoutSctp,
    /// Secondary addresses asked for with a NAT mode the appliance takes them in.
    #[error("secondary addresses are supported in lbmode default (dnat) only, not mode {0}: remove loxilb.io/lbmode or set it to default")]
    SecondaryMode(i64),
    /// A secondary address of another family than the Service's address.
    #[error("secondary address {secondary} is not of the family of the Service's address {vip}")]
    SecondaryFamily { secondary: IpAddr, vip: IpAddr },
    #[error("{ip} is an {family} address but the Service's addresses are {wanted} (loxilb.io/ipam, spec.ipFamilies)")]
    WrongFamily {
        ip: IpAddr,
        family: Family,
        wanted: String,
    },
}

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The name Kubernetes uses (`spec.ipFamilies`, EndpointSlice `addressType`).
    pub fn kube_name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kube_name())
    }
}

/// The families of the addresses the operator gives a Service, in order, and whether all of
/// them are required (`false`: only the first is; `PreferDualStack` makes do with one).
///
/// `loxilb.io/ipam` decides when given (kube-loxilb's only source: one family). Otherwise the
/// Service's own fields: `ipFamilyPolicy` `RequireDualStack` / `PreferDualStack` give one
/// address per family, in `spec.ipFamilies` order; a single-stack Service gets its first
/// family; a Service that names none gets IPv4, as kube-loxilb gives every Service.
pub fn address_families(svc: &Service) -> Result<(Vec<Family>, bool), DesiredError> {
    let opts = options(svc)?;
    match opts.ipam {
        Some(AddressKind::Ipv4) => return Ok((vec![Family::V4], true)),
        Some(AddressKind::Ipv6 | AddressKind::Ipv6To4) => return Ok((vec![Family::V6], true)),
        None => {}
    }
    let spec = svc.spec.clone().unwrap_or_default();
    let mut listed = Vec::new();
    for f in spec.ip_families.iter().flatten() {
        let fam = match f.as_str() {
            "IPv4" => Family::V4,
            "IPv6" => Family::V6,
            other => return Err(DesiredError::BadIpFamily(other.to_owned())),
        };
        if !listed.contains(&fam) {
            listed.push(fam);
        }
    }
    let first = listed.first().copied().unwrap_or(Family::V4);
    match spec.ip_family_policy.as_deref() {
        Some(p @ ("RequireDualStack" | "PreferDualStack")) => {
            let other = if first == Family::V4 {
                Family::V6
            } else {
                Family::V4
            };
            Ok((vec![first, other], p == "RequireDualStack"))
        }
        _ => Ok((vec![first], true)),
    }
}

/// The family of the endpoints of a rule for `vip`: the VIP's own, except IPv4 endpoints
/// behind an IPv6 address with `loxilb.io/ipam: ipv6to4` (the appliance translates, NAT64).
pub fn endpoint_family(vip: IpAddr, ipam: Option<AddressKind>) -> Family {
    match (Family::of(vip), ipam) {
        (Family::V6, Some(AddressKind::Ipv6To4)) => Family::V4,
        (f, _) => f,
    }
}

/// True when `svc` is a LoadBalancer Service of class `class` or `oxlb.io/oxlb`.
pub fn is_ours(svc: &Service, class: &str) -> bool {
    let Some(spec) = &svc.spec else { return false };
    spec.type_.as_deref() == Some("LoadBalancer")
        && spec
            .load_balancer_class
            .as_deref()
            .is_some_and(|c| c == class || c == OXLB_CLASS)
}

/// kube-loxilb's zone instance name: `<zone>-inst<N>`.
pub fn zone_inst_name(zone: &str, inst: u32) -> String {
    format!("{zone}-inst{inst}")
}

/// The prefix of every rule name of a Service: `<namespace>_<service>:`. The colon ends the
/// Service name, so `ns_web:` never matches the rules of `ns_web2`.
pub fn rule_prefix(namespace: &str, name: &str) -> String {
    format!("{namespace}_{name}:")
}

/// The rule name kube-loxilb gives a Service's rules.
pub fn rule_name(namespace: &str, name: &str, zone: &str, inst: u32) -> String {
    format!(
        "{}{}",
        rule_prefix(namespace, name),
        zone_inst_name(zone, inst)
    )
}

/// The Service's own annotations, parsed (empty when it has none).
pub fn options(svc: &Service) -> Result<ServiceOptions, AnnotationError> {
    match &svc.metadata.annotations {
        Some(a) => annotations::parse(a),
        None => Ok(ServiceOptions::default()),
    }
}

/// The addresses the Service asks for besides its allocated one: `spec.externalIPs`.
pub fn external_ips(svc: &Service) -> Result<Vec<IpAddr>, DesiredError> {
    let list = svc
        .spec
        .as_ref()
        .and_then(|s| s.external_ips.clone())
        .unwrap_or_default();
    list.iter()
        .map(|s| {
            s.parse::<IpAddr>()
                .map_err(|_| DesiredError::BadExternalIp(s.clone()))
        })
        .collect()
}

/// Refuses secondary addresses the appliance would refuse: they ride on SCTP rules, in mode 0
/// (dnat) only. A Service asking for none passes.
pub fn check_secondary_request(svc: &Service, settings: &Settings) -> Result<(), DesiredError> {
    let opts = options(svc)?;
    if opts.secondary_count == 0 && opts.secondary_ips.is_empty() {
        return Ok(());
    }
    if !service_ports(svc)?.iter().any(|(_, p)| p == "sctp") {
        return Err(DesiredError::SecondaryWithoutSctp);
    }
    match opts.lb_mode.unwrap_or(settings.lb_mode) {
        0 => Ok(()),
        mode => Err(DesiredError::SecondaryMode(mode)),
    }
}

/// Puts `secondaries` (sorted, as loxilb keeps them) on every SCTP rule whose address is of
/// their family; other rules keep none, as the appliance wants.
pub fn add_secondaries(rules: &mut [LoadBalancerEntry], secondaries: &[IpAddr]) {
    let Some(first) = secondaries.first() else {
        return;
    };
    let mut sorted = secondaries.to_vec();
    sorted.sort();
    for r in rules.iter_mut() {
        let sa = &r.service_arguments;
        let same_family = sa
            .external_ip
            .parse::<IpAddr>()
            .is_ok_and(|vip| vip.is_ipv4() == first.is_ipv4());
        if sa.protocol == "sctp" && same_family {
            r.secondary_ips = sorted
                .iter()
                .map(|ip| SecondaryIp {
                    secondary_ip: ip.to_string(),
                })
                .collect();
        }
    }
}

/// The `(port, protocol)` pairs of the Service, protocol lower-case as loxilb names it.
pub fn service_ports(svc: &Service) -> Result<Vec<(u16, String)>, DesiredError> {
    ports(svc)
        .iter()
        .map(|p| Ok((port_number(p.port)?, protocol(p)?)))
        .collect()
}

fn ports(svc: &Service) -> &[ServicePort] {
    svc.spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or_default()
}

fn port_number(p: i32) -> Result<u16, DesiredError> {
    u16::try_from(p)
        .ok()
        .filter(|p| *p != 0)
        .ok_or(DesiredError::BadPort(p))
}

fn protocol(p: &ServicePort) -> Result<String, DesiredError> {
    let proto = p.protocol.as_deref().unwrap_or("TCP");
    match proto {
        "TCP" | "UDP" | "SCTP" => Ok(proto.to_ascii_lowercase()),
        other => Err(DesiredError::BadProtocol {
            port: p.port,
            protocol: other.to_owned(),
        }),
    }
}

/// The rules `svc` needs on every appliance, one per (address, port, protocol), sorted. Empty
/// when the Service has no usable endpoint: loxilb refuses a rule without endpoints, so a
/// Service scaled to zero has its rules removed (its address stays allocated).
pub fn desired_rules(
    svc: &Service,
    slices: &[&EndpointSlice],
    nodes: &[&Node],
    settings: &Settings,
    vips: &[IpAddr],
) -> Result<Vec<LoadBalancerEntry>, DesiredError> {
    let opts = options(svc)?;
    let spec = svc.spec.clone().unwrap_or_default();
    let namespace = svc.metadata.namespace.as_deref().unwrap_or("default");
    let name = svc.metadata.name.as_deref().unwrap_or_default();
    let use_pods = opts.use_pod_network.unwrap_or(settings.use_pod_network);
    let local_only = spec.external_traffic_policy.as_deref() == Some("Local");
    let sel = match opts.ep_select {
        Some(s) => s.sel(),
        None if spec.session_affinity.as_deref() == Some("ClientIP") => EpSelect::Persist.sel(),
        None => EpSelect::RoundRobin.sel(),
    };
    let allowed_sources: Vec<AllowedSource> = spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .map(|p| AllowedSource { prefix: p.clone() })
        .collect();

    let mut rules = Vec::new();
    for port in ports(svc) {
        let number = port_number(port.port)?;
        let proto = protocol(port)?;
        let node_port = if use_pods {
            0
        } else {
            port.node_port
                .filter(|p| *p > 0)
                .ok_or_else(|| DesiredError::NoNodePort {
                    port: port.port,
                    protocol: proto.clone(),
                })?
        };
        let endpoints_of = |family: Family| -> Vec<Endpoint> {
            if use_pods {
                pod_endpoints(port, slices, family)
            } else {
                let local: Option<BTreeSet<&str>> = local_only.then(|| ready_node_names(slices));
                node_addresses(nodes, local.as_ref(), family)
                    .into_iter()
                    .map(|ip| endpoint(ip, i64::from(node_port)))
                    .collect()
            }
        };
        let by_family = [
            (Family::V4, endpoints_of(Family::V4)),
            (Family::V6, endpoints_of(Family::V6)),
        ];
        for vip in vips {
            let family = endpoint_family(*vip, opts.ipam);
            let endpoints = &by_family
                .iter()
                .find(|(f, _)| *f == family)
                .expect("both families listed")
                .1;
            if endpoints.is_empty() {
                continue;
            }
            rules.push(LoadBalancerEntry {
                service_arguments: ServiceArguments {
                    external_ip: vip.to_string(),
                    private_ip: String::new(),
                    port: i64::from(number),
                    port_max: 0,
                    protocol: proto.clone(),
                    sel,
                    mode: opts.lb_mode.unwrap_or(settings.lb_mode),
                    bgp: settings.bgp,
                    monitor: opts.liveness || settings.monitor,
                    probetype: opts.probe_type.clone(),
                    probeport: opts.probe_port,
                    probereq: opts.probe_req.clone(),
                    proberesp: opts.probe_resp.clone(),
                    probe_timeout: opts.probe_timeout,
                    probe_retries: opts.probe_retries,
                    inactive_timeout: opts
                        .timeout_secs
                        .unwrap_or(annotations::DEFAULT_TIMEOUT_SECS),
                    block: 0,
                    managed: true,
                    security: 0,
                    name: rule_name(namespace, name, &settings.zone, 0),
                    snat: false,
                    oper: 0,
                    host: String::new(),
                    proxyprotocolv2: opts.proxy_protocol_v2,
                    egress: opts.egress,
                    on_endpoint_down: String::new(),
                },
                endpoints: endpoints.clone(),
                secondary_ips: Vec::new(),
                allowed_sources: allowed_sources.clone(),
            });
        }
    }
    rules.sort_by_key(rule_key);
    Ok(rules)
}

/// What identifies a rule on an appliance: (externalIP, port, protocol), the address in its
/// canonical text form.
pub fn rule_key(e: &LoadBalancerEntry) -> (String, i64, String) {
    let sa = &e.service_arguments;
    (canonical_ip(&sa.external_ip), sa.port, sa.protocol.clone())
}

/// An address as Rust writes it (RFC 5952 for IPv6), so `fd00:0::1` from an appliance's listing
/// and `fd00::1` compare equal; anything else unchanged.
pub fn canonical_ip(text: &str) -> String {
    text.parse::<IpAddr>()
        .map_or_else(|_| text.to_owned(), |ip| ip.to_string())
}

fn endpoint(ip: IpAddr, port: i64) -> Endpoint {
    Endpoint {
        endpoint_ip: ip.to_string(),
        target_port: port,
        weight: 1,
        state: None,
        counter: None,
    }
}

/// An endpoint counts unless the slice says it is not ready (`ready` unset means ready).
fn is_ready(ep: &k8s_openapi::api::discovery::v1::Endpoint) -> bool {
    ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true)
}

/// Ready pod addresses of `family` (slices of that `addressType`) with the slice's port
/// matching `port` by name, deduplicated, sorted.
fn pod_endpoints(port: &ServicePort, slices: &[&EndpointSlice], family: Family) -> Vec<Endpoint> {
    let want = port.name.as_deref().unwrap_or("");
    let proto = port.protocol.as_deref().unwrap_or("TCP");
    let mut set = BTreeSet::new();
    for slice in slices
        .iter()
        .filter(|s| s.address_type == family.kube_name())
    {
        let Some(target) = slice.ports.iter().flatten().find_map(|p| {
            (p.name.as_deref().unwrap_or("") == want
                && p.protocol.as_deref().unwrap_or("TCP") == proto)
                .then_some(p.port)
                .flatten()
        }) else {
            continue;
        };
        for ep in slice.endpoints.iter().filter(|e| is_ready(e)) {
            for a in &ep.addresses {
                match a.parse::<IpAddr>() {
                    Ok(ip) if Family::of(ip) == family => {
                        set.insert((ip, i64::from(target)));
                    }
                    _ => {}
                }
            }
        }
    }
    set.into_iter().map(|(ip, p)| endpoint(ip, p)).collect()
}

/// Names of the nodes running at least one ready endpoint.
fn ready_node_names<'a>(slices: &[&'a EndpointSlice]) -> BTreeSet<&'a str> {
    slices
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| is_ready(e))
        .filter_map(|e| e.node_name.as_deref())
        .collect()
}

/// Addresses of `family` of the Ready, not excluded nodes (an InternalIP of the family, else
/// the node's first address if it is of the family, as kube-loxilb picks), restricted to
/// `only` when given; sorted, deduplicated.
fn node_addresses(nodes: &[&Node], only: Option<&BTreeSet<&str>>, family: Family) -> Vec<IpAddr> {
    let mut set = BTreeSet::new();
    for node in nodes {
        let excluded = node
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(EXCLUDE_NODE_LABEL));
        let name = node.metadata.name.as_deref().unwrap_or_default();
        if excluded || only.is_some_and(|o| !o.contains(name)) {
            continue;
        }
        let Some(status) = &node.status else { continue };
        let not_ready = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status != "True");
        if not_ready {
            continue;
        }
        let addrs = status.addresses.as_deref().unwrap_or_default();
        let of_family = |a: &k8s_openapi::api::core::v1::NodeAddress| {
            a.address
                .parse::<IpAddr>()
                .ok()
                .filter(|ip| Family::of(*ip) == family)
        };
        let pick = addrs
            .iter()
            .filter(|a| a.type_ == "InternalIP")
            .find_map(of_family)
            .or_else(|| addrs.first().and_then(of_family));
        if let Some(ip) = pick {
            set.insert(ip);
        }
    }
    set.into_iter().collect()
}

#[cfg(test)]
mod secondary_tests {
    use super::*;

    fn rule(vip: &str, port: u16, protocol: &str) -> LoadBalancerEntry {
        serde_json::from_value(serde_json::json!({"serviceArguments":
            {"externalIP": vip, "port": port, "protocol": protocol, "name": "shop_sig:llb-inst0"},
            "endpoints": [{"endpointIP": "10.244.7.7", "targetPort": port, "weight": 1}]}))
        .unwrap()
    }

    #[test]
    fn secondaries_go_sorted_on_sctp_rules_of_their_family_only() {
        let mut rules = vec![
            rule("198.18.100.1", 38412, "sctp"),
            rule("198.18.100.1", 80, "tcp"),
            rule("fd00::1", 38412, "sctp"),
        ];
        let secondaries: Vec<IpAddr> = ["125.125.125.1", "124.124.124.1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        add_secondaries(&mut rules, &secondaries);
        let got: Vec<Vec<&str>> = rules
            .iter()
            .map(|r| {
                r.secondary_ips
                    .iter()
                    .map(|s| s.secondary_ip.as_str())
                    .collect()
            })
            .collect();
        assert_eq!(
            got,
            vec![vec!["124.124.124.1", "125.125.125.1"], vec![], vec![]]
        );
    }
}
