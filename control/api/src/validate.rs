//! Turns loxilb request bodies into typed service specs, refusing what oxlb does not implement
//! instead of silently ignoring it; and turns specs back into loxilb bodies for listings.

use crate::model::{AllowedSource, Endpoint, LoadBalancerEntry, SecondaryIp, ServiceArguments};
use crate::spec::{
    EndpointSpec, IpPrefix, NatMode, OnEndpointDown, ProbeKind, ProbeSpec, Protocol, Selection,
    ServiceKey, ServiceSpec, DEFAULT_INACTIVE_TIMEOUT_SECS, DEFAULT_PROBE_RETRIES,
    DEFAULT_PROBE_TIMEOUT_SECS, MAX_PORT_RANGE, MAX_SECONDARY_IPS,
};
use std::collections::HashMap;
use std::net::IpAddr;

/// Why a request body was refused. Every message names the field and what to send instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// The value is not an IP address at all.
    #[error("{field} {value:?} is not an IPv4 address, nor an IPv6 one")]
    BadAddress { field: String, value: String },
    /// An address that cannot be a service or endpoint address.
    #[error("{field} {addr} is {kind} address and cannot be used here")]
    UnusableAddress {
        field: String,
        addr: IpAddr,
        kind: &'static str,
    },
    /// An IPv6 endpoint behind an IPv4 service address.
    #[error(
        "endpoints[{index}].endpointIP {endpoint} is an IPv6 address behind the IPv4 service \
         address {vip}: NAT46 (IPv4 clients to IPv6 endpoints) is not supported; use IPv4 \
         endpoints, or an IPv6 externalIP"
    )]
    Nat46NotSupported {
        index: usize,
        vip: IpAddr,
        endpoint: IpAddr,
    },
    /// An IPv4 endpoint behind an IPv6 service address in a mode that keeps the source.
    #[error(
        "mode {mode} ({name}) cannot serve the IPv6 service address {vip} from the IPv4 endpoint \
         endpoints[{index}] {endpoint}: NAT64 needs source translation{why}; use mode 2 \
         (fullnat) or 1 (onearm), or IPv6 endpoints"
    )]
    Nat64NeedsSourceTranslation {
        mode: i64,
        name: &'static str,
        vip: IpAddr,
        index: usize,
        endpoint: IpAddr,
        why: &'static str,
    },
    /// A number outside the range the field allows.
    #[error("{field} {value} is out of range: use {min} to {max}")]
    OutOfRange {
        field: String,
        value: i64,
        min: i64,
        max: i64,
    },
    /// A path segment that should have been a number.
    #[error("{field} {value:?} is not a number")]
    NotANumber { field: String, value: String },
    #[error("protocol {0:?} is unknown: use tcp or udp")]
    UnknownProtocol(String),
    #[error("protocol {0} is not implemented yet; only tcp and udp")]
    ProtocolNotImplemented(&'static str),
    #[error("portMax {port_max} is below port {port}: use 0 (or {port}) for a single port")]
    PortMaxBelowPort { port: u16, port_max: i64 },
    #[error(
        "portMax {port_max} asks for {ports} ports ({port}-{port_max}); a rule covers at most \
         {MAX_PORT_RANGE}: split the range into several rules"
    )]
    PortRangeTooBig {
        port: u16,
        port_max: u16,
        ports: u32,
    },
    #[error(
        "ports {port}-{port_max} overlap ports {other_port}-{other_port_max} of the rule {other}: \
         a destination port of an address and protocol belongs to one rule; change port or portMax"
    )]
    PortRangeOverlap {
        port: u16,
        port_max: u16,
        other: ServiceKey,
        other_port: u16,
        other_port_max: u16,
    },
    #[error(
        "ports {port}-{port_max} of {vip}/{protocol} overlap the SNAT port range \
         {snat_first}-{snat_last}, which full NAT (mode 2) takes on the service address for the \
         endpoints' answers: use ports outside {snat_first}-{snat_last}"
    )]
    SnatRangeOverlap {
        vip: IpAddr,
        protocol: Protocol,
        port: u16,
        port_max: u16,
        snat_first: u16,
        snat_last: u16,
    },
    #[error("sel {sel} ({name}) is not implemented; use 0 (round robin), 1 (hash), 2 (priority), 3 (persist) or 4 (least connections)")]
    SelectionNotImplemented { sel: i64, name: &'static str },
    #[error("sel {0} is unknown (loxilb defines 0 to 6); use 0 (round robin), 1 (hash), 2 (priority), 3 (persist) or 4 (least connections)")]
    UnknownSelection(i64),
    #[error("{field}: {value:?} is not a usable prefix: {why} (example: 198.18.0.0/24)")]
    BadPrefix {
        field: String,
        value: String,
        why: String,
    },
    #[error("mode {mode} ({name}) is an L7/host mode and not implemented; use 0 (dnat), 1 (onearm), 2 (fullnat) or 3 (dsr)")]
    ModeNotImplemented { mode: i64, name: &'static str },
    #[error("mode {0} is unknown (loxilb defines 0 to 5); use 0 (dnat), 1 (onearm), 2 (fullnat) or 3 (dsr)")]
    UnknownMode(i64),
    #[error("endpoint {index} has targetPort {target_port}, but in dsr mode (3) only the MAC is rewritten, so the endpoint must listen on the service port {port}: set targetPort to {port}")]
    DsrPortMismatch {
        index: usize,
        target_port: u16,
        port: u16,
    },
    #[error(
        "oper {oper} ({name}) is not implemented yet; only oper 0, which creates the rule or \
         replaces it with the endpoints given"
    )]
    OperNotImplemented { oper: i64, name: &'static str },
    #[error("oper {0} is unknown: use 0 (create or replace), 1 (attach endpoints) or 2 (detach endpoints)")]
    UnknownOper(i64),
    #[error("security {security} ({name}) is not implemented yet; only security 0 (plain)")]
    SecurityNotImplemented { security: i64, name: &'static str },
    #[error(
        "security {0} is unknown (loxilb defines 0 to 2); only security 0 (plain) is implemented"
    )]
    UnknownSecurity(i64),
    /// A feature loxilb has and oxlb does not yet; `what` says what to send instead.
    #[error("{field}: {what}")]
    NotImplemented {
        field: &'static str,
        what: &'static str,
    },
    #[error("probetype {0:?} is not implemented yet: use tcp, udp, http, https, ping or none")]
    ProbeTypeNotImplemented(String),
    #[error("probetype {0:?} is unknown: use tcp, udp, http, https, ping or none")]
    UnknownProbeType(String),
    #[error("endpoints is empty: a rule needs at least one endpoint")]
    NoEndpoints,
    #[error("endpoint {index} has targetPort 0 (each flow keeps the port it came to), so there is no port to probe: set probeport")]
    ProbePortNeeded { index: usize },
    #[error("endpoints[{index}] {ip}:{port} is the same endpoint as endpoints[{first}]")]
    DuplicateEndpoint {
        index: usize,
        first: usize,
        ip: IpAddr,
        port: u16,
    },
    /// A secondary address of a rule that cannot have one, or that is not another address of
    /// the service; `why` says what to send instead.
    #[error("{field}: {why}")]
    BadSecondary { field: String, why: String },
    #[error("onEndpointDown {0:?} is unknown: use keep (established flows continue, the default) or reset (they end at their next packet)")]
    UnknownOnEndpointDown(String),
}

impl ValidationError {
    /// The JSON path of the offending value, e.g. `serviceArguments.sel` or
    /// `endpoints[1].targetPort`.
    pub fn field(&self) -> String {
        use ValidationError::*;
        let fixed = match self {
            BadAddress { field, .. }
            | UnusableAddress { field, .. }
            | OutOfRange { field, .. }
            | NotANumber { field, .. }
            | BadPrefix { field, .. } => return field.clone(),
            NotImplemented { field, .. } => field,
            DuplicateEndpoint { index, .. } => return format!("endpoints[{index}]"),
            BadSecondary { field, .. } => return field.clone(),
            Nat46NotSupported { index, .. } => return format!("endpoints[{index}].endpointIP"),
            Nat64NeedsSourceTranslation { .. } => "serviceArguments.mode",
            UnknownProtocol(_) | ProtocolNotImplemented(_) => "serviceArguments.protocol",
            PortMaxBelowPort { .. }
            | PortRangeTooBig { .. }
            | PortRangeOverlap { .. }
            | SnatRangeOverlap { .. } => "serviceArguments.portMax",
            SelectionNotImplemented { .. } | UnknownSelection(_) => "serviceArguments.sel",
            ModeNotImplemented { .. } | UnknownMode(_) => "serviceArguments.mode",
            DsrPortMismatch { index, .. } => return format!("endpoints[{index}].targetPort"),
            OperNotImplemented { .. } | UnknownOper(_) => "serviceArguments.oper",
            SecurityNotImplemented { .. } | UnknownSecurity(_) => "serviceArguments.security",
            ProbeTypeNotImplemented(_) | UnknownProbeType(_) => "serviceArguments.probetype",
            NoEndpoints => "endpoints",
            ProbePortNeeded { .. } => "serviceArguments.probeport",
            UnknownOnEndpointDown(_) => "serviceArguments.onEndpointDown",
        };
        fixed.to_owned()
    }
}

const SA: &str = "serviceArguments";

/// Validates a `POST /config/loadbalancer` body into a service spec. The first problem found
/// is reported; nothing oxlb would not honour is accepted.
pub fn validate(entry: &LoadBalancerEntry) -> Result<ServiceSpec, ValidationError> {
    let sa = &entry.service_arguments;
    let external_ip = address(&format!("{SA}.externalIP"), &sa.external_ip)?;
    let port = port(&format!("{SA}.port"), sa.port)?;
    let protocol = protocol(&sa.protocol)?;
    let port_max = port_max(port, sa.port_max)?;
    let selection = selection(sa.sel)?;
    let mode = mode(sa.mode)?;
    check_unimplemented(sa)?;
    let monitor = if sa.monitor { Some(probe(sa)?) } else { None };
    let inactive_timeout_secs = match sa.inactive_timeout {
        0 => DEFAULT_INACTIVE_TIMEOUT_SECS,
        t => in_range(&format!("{SA}.inactiveTimeOut"), t, 1, i64::from(i32::MAX))? as u32,
    };
    let secondary_ips = secondary_ips(&entry.secondary_ips, external_ip, protocol, mode)?;
    let allowed_sources = entry
        .allowed_sources
        .iter()
        .enumerate()
        .map(|(i, s)| prefix(&format!("allowedSources[{i}].prefix"), &s.prefix))
        .collect::<Result<Vec<_>, _>>()?;
    let endpoints = endpoints(&entry.endpoints)?;
    families(external_ip, mode, &endpoints)?;
    // A probe needs a port when an endpoint keeps the client's (targetPort 0).
    if let (Some(probe), Some(index)) =
        (&monitor, endpoints.iter().position(|e| e.target_port == 0))
    {
        if probe.port == 0 && !matches!(probe.kind, ProbeKind::Ping | ProbeKind::None) {
            return Err(ValidationError::ProbePortNeeded { index });
        }
    }
    if mode == NatMode::Dsr {
        // Port 0 keeps the client's port, the service's own: what DSR needs.
        if let Some((index, e)) = endpoints
            .iter()
            .enumerate()
            .find(|(_, e)| e.target_port != port && e.target_port != 0)
        {
            return Err(ValidationError::DsrPortMismatch {
                index,
                target_port: e.target_port,
                port,
            });
        }
    }
    Ok(ServiceSpec {
        key: ServiceKey {
            external_ip,
            port,
            protocol,
        },
        port_max,
        name: sa.name.clone(),
        mode,
        selection,
        endpoints,
        inactive_timeout_secs,
        allowed_sources,
        block_new_flows: sa.block != 0,
        monitor,
        bgp: sa.bgp,
        secondary_ips,
        on_endpoint_down: on_endpoint_down(&sa.on_endpoint_down)?,
    })
}

/// oxlb's `onEndpointDown`; empty (absent) is the default, `keep`.
fn on_endpoint_down(value: &str) -> Result<OnEndpointDown, ValidationError> {
    match value {
        "" | "keep" => Ok(OnEndpointDown::Keep),
        "reset" => Ok(OnEndpointDown::Reset),
        other => Err(ValidationError::UnknownOnEndpointDown(other.to_owned())),
    }
}

/// loxilb's `secondaryIPs`: further addresses of an SCTP service for multi-homed associations,
/// returned sorted (as loxilb keeps them). Only dnat (mode 0) keeps an association whole
/// across paths here: full NAT and one-arm give each path its own SNAT port, which the
/// endpoint would take for another association, and dsr never sees the endpoint's INIT ACK,
/// whose addresses must be replaced by the service's.
fn secondary_ips(
    items: &[SecondaryIp],
    vip: IpAddr,
    protocol: Protocol,
    mode: NatMode,
) -> Result<Vec<IpAddr>, ValidationError> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let bad = |field: String, why: String| Err(ValidationError::BadSecondary { field, why });
    if protocol != Protocol::Sctp {
        return bad(
            "secondaryIPs".to_owned(),
            format!(
                "secondary addresses serve multi-homed SCTP associations; a {protocol} rule \
                 takes none: send an empty list, or make the rule sctp"
            ),
        );
    }
    if items.len() > MAX_SECONDARY_IPS {
        return bad(
            "secondaryIPs".to_owned(),
            format!(
                "{} secondary addresses given; a rule takes at most {MAX_SECONDARY_IPS}, as in \
                 loxilb",
                items.len()
            ),
        );
    }
    if mode != NatMode::Dnat {
        return bad(
            "secondaryIPs".to_owned(),
            format!(
                "mode {} does not support secondary addresses: only mode 0 (dnat) keeps a \
                 multi-homed association on one endpoint with the same ports on every path \
                 (full NAT and one-arm give each path its own SNAT port, dsr does not see the \
                 endpoint's INIT ACK); use mode 0",
                mode.number()
            ),
        );
    }
    let mut out: Vec<IpAddr> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let field = format!("secondaryIPs[{i}].secondaryIP");
        let ip = address(&field, &item.secondary_ip)?;
        if ip.is_ipv4() != vip.is_ipv4() {
            return bad(
                field,
                format!(
                    "{ip} is not of the family of externalIP {vip}: an association's addresses \
                     toward the service are all of the externalIP's family"
                ),
            );
        }
        if ip == vip {
            return bad(
                field,
                format!("{ip} is the externalIP itself: list only further addresses"),
            );
        }
        if let Some(first) = out.iter().position(|o| *o == ip) {
            return bad(
                field,
                format!("{ip} is listed twice (first as secondaryIPs[{first}])"),
            );
        }
        out.push(ip);
    }
    out.sort();
    Ok(out)
}

/// Refuses endpoints of the other family where oxlb cannot translate between the families:
/// IPv4 clients to IPv6 endpoints (NAT46) never, IPv6 clients to IPv4 endpoints (NAT64) only
/// when the source is rewritten too, since an IPv4 endpoint cannot answer an IPv6 client.
fn families(vip: IpAddr, mode: NatMode, endpoints: &[EndpointSpec]) -> Result<(), ValidationError> {
    let Some((index, e)) = endpoints
        .iter()
        .enumerate()
        .find(|(_, e)| e.ip.is_ipv4() != vip.is_ipv4())
    else {
        return Ok(());
    };
    if vip.is_ipv4() {
        return Err(ValidationError::Nat46NotSupported {
            index,
            vip,
            endpoint: e.ip,
        });
    }
    let (name, why) = match mode {
        NatMode::OneArm | NatMode::FullNat => return Ok(()),
        NatMode::Dnat => ("dnat", ""),
        NatMode::Dsr => (
            "dsr",
            " (dsr rewrites only the MAC, so an endpoint must have the service's family)",
        ),
    };
    Err(ValidationError::Nat64NeedsSourceTranslation {
        mode: mode.number(),
        name,
        vip,
        index,
        endpoint: e.ip,
        why,
    })
}

/// The probe settings of a monitored rule; 0 timeout and retries mean the defaults.
fn probe(sa: &ServiceArguments) -> Result<ProbeSpec, ValidationError> {
    let kind = match sa.probetype.as_str() {
        "tcp" => ProbeKind::Tcp,
        "udp" => ProbeKind::Udp,
        "http" => ProbeKind::Http,
        "https" => ProbeKind::Https,
        // `probeport` (and `probereq`, `proberesp`) mean nothing to ICMP; loxilb accepts and
        // ignores them, and so do we, so that its requests work unchanged.
        "ping" => ProbeKind::Ping,
        "none" => ProbeKind::None,
        // An SCTP probe needs SCTP sockets, which the kernels oxlb runs on may lack.
        "sctp" => {
            return Err(ValidationError::ProbeTypeNotImplemented(
                sa.probetype.clone(),
            ))
        }
        other => return Err(ValidationError::UnknownProbeType(other.to_owned())),
    };
    let timeout_secs = match sa.probe_timeout {
        0 => DEFAULT_PROBE_TIMEOUT_SECS,
        t => in_range(&format!("{SA}.probeTimeout"), i64::from(t), 1, 3600)? as u32,
    };
    let retries = match sa.probe_retries {
        0 => DEFAULT_PROBE_RETRIES,
        r => in_range(&format!("{SA}.probeRetries"), i64::from(r), 1, 100)? as u32,
    };
    Ok(ProbeSpec {
        kind,
        port: sa.probeport,
        request: sa.probereq.clone(),
        response: sa.proberesp.clone(),
        timeout_secs,
        retries,
    })
}

/// Parses `a.b.c.d/len` or `x:y::/len` (or a bare address, meaning one host); host bits must
/// be zero.
fn prefix(field: &str, text: &str) -> Result<IpPrefix, ValidationError> {
    let bad = |why: &str| ValidationError::BadPrefix {
        field: field.to_owned(),
        value: text.to_owned(),
        why: why.to_owned(),
    };
    let (addr, len) = match text.split_once('/') {
        Some((a, l)) => (
            a,
            Some(
                l.parse::<u8>()
                    .map_err(|_| bad("the length is not a number"))?,
            ),
        ),
        None => (text, None),
    };
    let addr: IpAddr = addr
        .trim()
        .parse()
        .map_err(|_| bad("not an IPv4 or IPv6 address"))?;
    let bits = if addr.is_ipv4() { 32 } else { 128 };
    let len = len.unwrap_or(bits);
    if len > bits {
        return Err(bad(if addr.is_ipv4() {
            "the length is more than 32"
        } else {
            "the length is more than 128"
        }));
    }
    let p = IpPrefix { addr, len };
    let host_bits_set = match addr {
        IpAddr::V4(a) => p.v4().is_some_and(|(net, _)| u32::from(a) != net),
        IpAddr::V6(a) => p.v6().is_some_and(|(net, _)| u128::from(a) != net),
    };
    if host_bits_set {
        return Err(bad("host bits are set; write the network address"));
    }
    Ok(p)
}

/// Parses the key of `DELETE /config/loadbalancer/externalipaddress/{ip}/port/{port}/protocol/{proto}`.
pub fn service_key(ip: &str, port_text: &str, proto: &str) -> Result<ServiceKey, ValidationError> {
    let external_ip = address("externalipaddress", ip)?;
    let value: i64 = port_text.parse().map_err(|_| ValidationError::NotANumber {
        field: "port".to_owned(),
        value: port_text.to_owned(),
    })?;
    let port = port("port", value)?;
    let protocol = protocol(proto)?;
    Ok(ServiceKey {
        external_ip,
        port,
        protocol,
    })
}

/// The loxilb body that describes `spec`, as listings show it.
pub fn to_entry(spec: &ServiceSpec) -> LoadBalancerEntry {
    let probe = spec.monitor.as_ref();
    LoadBalancerEntry {
        service_arguments: ServiceArguments {
            external_ip: spec.key.external_ip.to_string(),
            private_ip: String::new(),
            port: i64::from(spec.key.port),
            // loxilb lists a single port with portMax 0.
            port_max: if spec.port_max == spec.key.port {
                0
            } else {
                i64::from(spec.port_max)
            },
            protocol: spec.key.protocol.as_str().to_owned(),
            sel: spec.selection.number(),
            mode: spec.mode.number(),
            bgp: spec.bgp,
            monitor: spec.monitor.is_some(),
            probetype: probe.map_or("", |p| p.kind.as_str()).to_owned(),
            probeport: probe.map_or(0, |p| p.port),
            probereq: probe.map_or(String::new(), |p| p.request.clone()),
            proberesp: probe.map_or(String::new(), |p| p.response.clone()),
            probe_timeout: probe.map_or(0, |p| p.timeout_secs),
            probe_retries: probe.map_or(0, |p| p.retries as i32),
            inactive_timeout: i64::from(spec.inactive_timeout_secs),
            block: u32::from(spec.block_new_flows),
            managed: false,
            security: 0,
            name: spec.name.clone(),
            snat: false,
            oper: 0,
            host: String::new(),
            proxyprotocolv2: false,
            egress: false,
            // The default is left out, as for loxilb's own fields.
            on_endpoint_down: match spec.on_endpoint_down {
                OnEndpointDown::Keep => String::new(),
                reset => reset.as_str().to_owned(),
            },
        },
        endpoints: spec
            .endpoints
            .iter()
            .map(|e| Endpoint {
                endpoint_ip: e.ip.to_string(),
                target_port: i64::from(e.target_port),
                weight: i64::from(e.weight),
                state: None,
                counter: None,
            })
            .collect(),
        secondary_ips: spec
            .secondary_ips
            .iter()
            .map(|ip| SecondaryIp {
                secondary_ip: ip.to_string(),
            })
            .collect(),
        allowed_sources: spec
            .allowed_sources
            .iter()
            .map(|p| AllowedSource {
                prefix: p.to_string(),
            })
            .collect(),
    }
}

fn address(field: &str, value: &str) -> Result<IpAddr, ValidationError> {
    let Ok(addr) = value.parse::<IpAddr>() else {
        return Err(ValidationError::BadAddress {
            field: field.to_owned(),
            value: value.to_owned(),
        });
    };
    let kind = match addr {
        _ if addr.is_unspecified() => "the unspecified",
        _ if addr.is_loopback() => "a loopback",
        _ if addr.is_multicast() => "a multicast",
        IpAddr::V4(a) if a.is_broadcast() => "the broadcast",
        // A link-local address means nothing without its interface, which loxilb's bodies
        // cannot name.
        IpAddr::V6(a) if a.is_unicast_link_local() => "a link-local",
        // The engine would see an IPv6 packet to it; the address means an IPv4 host.
        IpAddr::V6(a) if a.to_ipv4_mapped().is_some() => "an IPv4-mapped IPv6",
        _ => return Ok(addr),
    };
    Err(ValidationError::UnusableAddress {
        field: field.to_owned(),
        addr,
        kind,
    })
}

fn in_range(field: &str, value: i64, min: i64, max: i64) -> Result<i64, ValidationError> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(ValidationError::OutOfRange {
            field: field.to_owned(),
            value,
            min,
            max,
        })
    }
}

fn port(field: &str, value: i64) -> Result<u16, ValidationError> {
    Ok(in_range(field, value, 1, i64::from(u16::MAX))? as u16)
}

fn protocol(value: &str) -> Result<Protocol, ValidationError> {
    match value {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        "sctp" => Ok(Protocol::Sctp),
        "icmp" => Err(ValidationError::ProtocolNotImplemented("icmp")),
        other => Err(ValidationError::UnknownProtocol(other.to_owned())),
    }
}

/// The last port of the rule: loxilb's `portMax`, where 0 means the single port `port`.
fn port_max(port: u16, port_max: i64) -> Result<u16, ValidationError> {
    in_range(&format!("{SA}.portMax"), port_max, 0, i64::from(u16::MAX))?;
    if port_max == 0 {
        return Ok(port);
    }
    if port_max < i64::from(port) {
        return Err(ValidationError::PortMaxBelowPort { port, port_max });
    }
    let last = port_max as u16;
    let ports = u32::from(last - port) + 1;
    if ports > MAX_PORT_RANGE {
        return Err(ValidationError::PortRangeTooBig {
            port,
            port_max: last,
            ports,
        });
    }
    Ok(last)
}

/// Refuses `spec` when one of its ports belongs to another rule of the same address and
/// protocol in `rules` (the rule with `spec`'s own key is the one it replaces, so it does not
/// count): a packet must find exactly one rule.
pub fn check_overlap<'a>(
    spec: &ServiceSpec,
    rules: impl IntoIterator<Item = &'a ServiceSpec>,
) -> Result<(), ValidationError> {
    // Secondary addresses take the rule's ports too: any shared address counts.
    let clash = rules.into_iter().find(|o| {
        o.key != spec.key
            && o.addresses().any(|a| spec.addresses().any(|b| a == b))
            && o.key.protocol == spec.key.protocol
            && o.key.port <= spec.port_max
            && spec.key.port <= o.port_max
    });
    match clash {
        Some(o) => Err(ValidationError::PortRangeOverlap {
            port: spec.key.port,
            port_max: spec.port_max,
            other: o.key,
            other_port: o.key.port,
            other_port_max: o.port_max,
        }),
        None => Ok(()),
    }
}

/// Refuses `spec` when, with it, an address and protocol has both full NAT (which takes the
/// SNAT port range `snat_first..=snat_last` on the service address for the endpoints'
/// answers) and a rule whose ports overlap that range: an endpoint's answer to a SNAT port and
/// a client's packet to a service port would then look alike, to the XDP program and to the
/// flow-owner hash. `rules` are the other rules; the one with `spec`'s key is replaced.
pub fn check_snat_overlap<'a>(
    spec: &ServiceSpec,
    rules: impl IntoIterator<Item = &'a ServiceSpec>,
    snat_first: u16,
    snat_last: u16,
) -> Result<(), ValidationError> {
    let neighbours: Vec<&ServiceSpec> = rules
        .into_iter()
        .filter(|o| {
            o.key != spec.key
                && o.key.external_ip == spec.key.external_ip
                && o.key.protocol == spec.key.protocol
        })
        .collect();
    let overlaps = |s: &ServiceSpec| s.key.port <= snat_last && snat_first <= s.port_max;
    let clash = if spec.mode == NatMode::FullNat {
        std::iter::once(spec)
            .chain(neighbours.iter().copied())
            .find(|s| overlaps(s))
    } else if overlaps(spec) && neighbours.iter().any(|o| o.mode == NatMode::FullNat) {
        Some(spec)
    } else {
        None
    };
    match clash {
        Some(s) => Err(ValidationError::SnatRangeOverlap {
            vip: s.key.external_ip,
            protocol: s.key.protocol,
            port: s.key.port,
            port_max: s.port_max,
            snat_first,
            snat_last,
        }),
        None => Ok(()),
    }
}

fn selection(sel: i64) -> Result<Selection, ValidationError> {
    let name = match sel {
        0 => return Ok(Selection::RoundRobin),
        1 => return Ok(Selection::Hash),
        2 => return Ok(Selection::Priority),
        3 => return Ok(Selection::Persist),
        4 => return Ok(Selection::LeastConnections),
        5 => "n2",
        6 => "n3; n2det in kube-loxilb's numbering",
        7 => "n3 in kube-loxilb's numbering",
        _ => return Err(ValidationError::UnknownSelection(sel)),
    };
    Err(ValidationError::SelectionNotImplemented { sel, name })
}

fn mode(mode: i64) -> Result<NatMode, ValidationError> {
    let name = match mode {
        0 => return Ok(NatMode::Dnat),
        1 => return Ok(NatMode::OneArm),
        2 => return Ok(NatMode::FullNat),
        3 => return Ok(NatMode::Dsr),
        4 => "fullproxy",
        5 => "hostonearm",
        _ => return Err(ValidationError::UnknownMode(mode)),
    };
    Err(ValidationError::ModeNotImplemented { mode, name })
}

/// Fields loxilb honours and oxlb does not yet. Ignored fields are only those whose default
/// behaviour is what oxlb does anyway: `name`, `managed`, and the probe settings while
/// `monitor` is off (loxilb probes only monitored rules).
fn check_unimplemented(sa: &ServiceArguments) -> Result<(), ValidationError> {
    use ValidationError::{NotImplemented, SecurityNotImplemented};
    if !(0..=2).contains(&sa.oper) {
        return Err(ValidationError::UnknownOper(sa.oper));
    }
    match sa.security {
        0 => {}
        1 => {
            return Err(SecurityNotImplemented {
                security: 1,
                name: "https/tls",
            })
        }
        2 => {
            return Err(SecurityNotImplemented {
                security: 2,
                name: "end-to-end https",
            })
        }
        s => return Err(ValidationError::UnknownSecurity(s)),
    }
    let refusals: [(bool, &'static str, &'static str); 5] = [
        (
            !sa.private_ip.is_empty(),
            "serviceArguments.privateIP",
            "a private (NAT'd) service address is not implemented yet: leave it empty",
        ),
        (
            sa.snat,
            "serviceArguments.snat",
            "SNAT rules are not implemented yet: send false",
        ),
        (
            !sa.host.is_empty(),
            "serviceArguments.host",
            "host URL matching (a fullproxy feature) is not implemented yet: leave it empty",
        ),
        (
            sa.proxyprotocolv2,
            "serviceArguments.proxyprotocolv2",
            "PROXY protocol v2 is not implemented yet: send false",
        ),
        (
            sa.egress,
            "serviceArguments.egress",
            "egress rules are not implemented yet: send false",
        ),
    ];
    match refusals.into_iter().find(|(refused, _, _)| *refused) {
        Some((_, field, what)) => Err(NotImplemented { field, what }),
        None => Ok(()),
    }
}

fn endpoints(eps: &[Endpoint]) -> Result<Vec<EndpointSpec>, ValidationError> {
    if eps.is_empty() {
        return Err(ValidationError::NoEndpoints);
    }
    let mut out: Vec<EndpointSpec> = Vec::with_capacity(eps.len());
    let mut seen: HashMap<(IpAddr, u16), usize> = HashMap::with_capacity(eps.len());
    for (index, ep) in eps.iter().enumerate() {
        let ip = address(&format!("endpoints[{index}].endpointIP"), &ep.endpoint_ip)?;
        // 0 keeps the port each flow came to (loxilb's way for port ranges).
        let target_port = in_range(
            &format!("endpoints[{index}].targetPort"),
            ep.target_port,
            0,
            i64::from(u16::MAX),
        )? as u16;
        let weight = in_range(
            &format!("endpoints[{index}].weight"),
            ep.weight,
            0,
            i64::from(u8::MAX),
        )? as u8;
        if let Some(&first) = seen.get(&(ip, target_port)) {
            return Err(ValidationError::DuplicateEndpoint {
                index,
                first,
                ip,
                port: target_port,
            });
        }
        seen.insert((ip, target_port), index);
        out.push(EndpointSpec {
            ip,
            target_port,
            weight,
        });
    }
    Ok(out)
}

/// What a `POST /config/loadbalancer` does with its endpoints (loxilb's `oper`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Oper {
    /// 0: create the rule, or replace it whole.
    Replace,
    /// 1: add the endpoints to an existing rule (same address and port: new weight).
    Attach,
    /// 2: remove the endpoints from an existing rule.
    Detach,
}

/// The operation of a validated body (validation refused any other value).
pub fn oper(entry: &LoadBalancerEntry) -> Oper {
    match entry.service_arguments.oper {
        1 => Oper::Attach,
        2 => Oper::Detach,
        _ => Oper::Replace,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An SCTP rule on 198.18.100.1:2020 in `mode` with `secondaries`.
    fn multihomed(mode: i64, secondaries: &[&str]) -> LoadBalancerEntry {
        let items: Vec<_> = secondaries
            .iter()
            .map(|s| serde_json::json!({"secondaryIP": s}))
            .collect();
        serde_json::from_value(serde_json::json!({
            "serviceArguments": {"externalIP": "198.18.100.1", "port": 2020,
                                 "protocol": "sctp", "mode": mode},
            "endpoints": [{"endpointIP": "198.18.31.1", "targetPort": 9999, "weight": 1}],
            "secondaryIPs": items,
        }))
        .expect("the body parses")
    }

    fn refusal(entry: &LoadBalancerEntry) -> (String, String) {
        let e = validate(entry).expect_err("refused");
        (e.field(), e.to_string())
    }

    #[test]
    fn secondary_addresses_of_an_sctp_dnat_rule_are_kept_sorted_and_listed_back() {
        let spec = validate(&multihomed(0, &["198.18.102.1", "198.18.101.1"])).expect("valid");
        let sorted: Vec<IpAddr> = vec![
            "198.18.101.1".parse().unwrap(),
            "198.18.102.1".parse().unwrap(),
        ];
        assert_eq!(spec.secondary_ips, sorted);
        let listed = to_entry(&spec);
        let listed: Vec<&str> = listed
            .secondary_ips
            .iter()
            .map(|s| s.secondary_ip.as_str())
            .collect();
        assert_eq!(listed, ["198.18.101.1", "198.18.102.1"]);
        // The listing validates back to the same rule (how persistence reloads it).
        assert_eq!(validate(&to_entry(&spec)), Ok(spec));
    }

    #[test]
    fn secondary_addresses_of_a_tcp_rule_are_refused_naming_the_field() {
        let mut entry = multihomed(0, &["198.18.101.1"]);
        entry.service_arguments.protocol = "tcp".to_owned();
        let (field, msg) = refusal(&entry);
        assert_eq!(field, "secondaryIPs");
        assert!(msg.contains("tcp rule"), "{msg}");
    }

    #[test]
    fn a_secondary_address_of_the_other_family_is_refused() {
        let (field, msg) = refusal(&multihomed(0, &["198.18.101.1", "fd00::1"]));
        assert_eq!(field, "secondaryIPs[1].secondaryIP");
        assert!(msg.contains("family"), "{msg}");
    }

    #[test]
    fn the_external_address_or_a_repeated_one_is_refused_as_a_secondary() {
        let (field, msg) = refusal(&multihomed(0, &["198.18.100.1"]));
        assert_eq!(field, "secondaryIPs[0].secondaryIP");
        assert!(msg.contains("externalIP itself"), "{msg}");
        let (field, msg) = refusal(&multihomed(0, &["198.18.101.1", "198.18.101.1"]));
        assert_eq!(field, "secondaryIPs[1].secondaryIP");
        assert!(msg.contains("twice"), "{msg}");
    }

    #[test]
    fn more_than_three_secondaries_a_bad_address_or_a_mode_other_than_dnat_are_refused() {
        let four = [
            "198.18.101.1",
            "198.18.101.2",
            "198.18.101.3",
            "198.18.101.4",
        ];
        assert_eq!(refusal(&multihomed(0, &four)).0, "secondaryIPs");
        assert_eq!(
            refusal(&multihomed(0, &["not-an-ip"])).0,
            "secondaryIPs[0].secondaryIP"
        );
        assert_eq!(
            refusal(&multihomed(0, &["127.0.0.1"])).0,
            "secondaryIPs[0].secondaryIP"
        );
        for mode in [1, 2, 3] {
            let (field, msg) = refusal(&multihomed(mode, &["198.18.101.1"]));
            assert_eq!(field, "secondaryIPs");
            assert!(msg.contains("only mode 0"), "{msg}");
        }
    }

    #[test]
    fn a_rule_whose_secondary_address_takes_another_rules_ports_is_refused() {
        let a = validate(&multihomed(0, &["198.18.101.1"])).expect("valid");
        let mut b = multihomed(0, &[]);
        b.service_arguments.external_ip = "198.18.101.1".to_owned();
        let b = validate(&b).expect("valid alone");
        let e = check_overlap(&b, [&a]).expect_err("198.18.101.1:2020/sctp is taken");
        assert!(
            matches!(e, ValidationError::PortRangeOverlap { .. }),
            "{e:?}"
        );
        // Another port on the same address is free.
        let mut c = b.clone();
        c.key.port = 2021;
        c.port_max = 2021;
        assert_eq!(check_overlap(&c, [&a]), Ok(()));
    }

    /// A monitored TCP rule over one endpoint, with probe type `probetype`.
    fn monitored(probetype: &str) -> LoadBalancerEntry {
        serde_json::from_value(serde_json::json!({
            "serviceArguments": {"externalIP": "198.18.100.1", "port": 2020, "protocol": "tcp",
                                 "monitor": true, "probetype": probetype},
            "endpoints": [{"endpointIP": "198.18.31.1", "targetPort": 8080, "weight": 1}],
        }))
        .expect("the body parses")
    }

    #[test]
    fn ping_is_accepted_and_a_probe_port_given_with_it_is_kept_but_unused() {
        let mut entry = monitored("ping");
        entry.service_arguments.probeport = 9;
        let spec = validate(&entry).expect("ping is a probe type");
        let probe = spec.monitor.clone().expect("monitored");
        assert_eq!((probe.kind, probe.port), (ProbeKind::Ping, 9));
        let listed = to_entry(&spec).service_arguments;
        assert_eq!((listed.probetype.as_str(), listed.probeport), ("ping", 9));
    }

    #[test]
    fn https_is_accepted_with_its_path_and_expected_body_and_listed_back() {
        let mut entry = monitored("https");
        entry.service_arguments.probeport = 8443;
        entry.service_arguments.probereq = "/healthz".to_owned();
        entry.service_arguments.proberesp = "healthy".to_owned();
        let spec = validate(&entry).expect("https is a probe type");
        let probe = spec.monitor.clone().expect("monitored");
        assert_eq!(probe.kind, ProbeKind::Https);
        assert_eq!(
            (probe.port, probe.request.as_str(), probe.response.as_str()),
            (8443, "/healthz", "healthy")
        );
        assert_eq!(validate(&to_entry(&spec)), Ok(spec));
    }

    #[test]
    fn sctp_probes_stay_refused_by_name() {
        let e = validate(&monitored("sctp")).expect_err("no SCTP sockets");
        assert_eq!(
            e,
            ValidationError::ProbeTypeNotImplemented("sctp".to_owned())
        );
        assert_eq!(e.field(), "serviceArguments.probetype");
        assert!(e.to_string().contains("https, ping"), "{e}");
    }

    #[test]
    fn unknown_and_empty_probe_types_are_refused_naming_the_known_ones() {
        for t in ["icmp", "", "PING", "grpc"] {
            let e = validate(&monitored(t)).expect_err("unknown probe type");
            assert_eq!(e, ValidationError::UnknownProbeType(t.to_owned()));
            assert_eq!(e.field(), "serviceArguments.probetype");
        }
    }
}
