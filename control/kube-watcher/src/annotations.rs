//! kube-loxilb's Service annotations (`loxilb.io/...`, also accepted as `oxlb.io/...`), parsed
//! strictly into typed per-Service options.
//!
//! kube-loxilb quietly falls back to a default when a value is malformed; here a bad value is an
//! error naming the annotation and the values it accepts, so it can become an Event on the Service
//! and nothing is half-applied. Annotations whose feature the operator cannot translate yet are
//! refused the same way, never silently ignored.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// The two annotation prefixes; `oxlb.io/` is our own spelling of the same keys.
pub const PREFIXES: [&str; 2] = ["loxilb.io/", "oxlb.io/"];

/// kube-loxilb's default inactivity timeout (`loxilb.io/timeout`), seconds.
pub const DEFAULT_TIMEOUT_SECS: i64 = 30 * 60;

/// Why a Service's annotations cannot be turned into rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnnotationError {
    /// A value outside what the annotation accepts.
    #[error("annotation {key}={value:?} is invalid: {expected}")]
    BadValue {
        key: String,
        value: String,
        expected: &'static str,
    },
    /// Both spellings of one annotation are present with different values.
    #[error(
        "annotations loxilb.io/{name}={a:?} and oxlb.io/{name}={b:?} disagree: set one of them"
    )]
    Conflict { name: String, a: String, b: String },
    /// A kube-loxilb annotation whose feature oxlb-operator does not implement yet.
    #[error("annotation {key}={value:?} is not implemented yet by oxlb-operator: {what}")]
    NotImplemented {
        key: String,
        value: String,
        what: &'static str,
    },
}

/// Endpoint selection, with loxilb's `sel` numbers as kube-loxilb sends them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpSelect {
    RoundRobin,
    Hash,
    Persist,
    LeastConnections,
    N2,
    N2Det,
    N3,
}

impl EpSelect {
    /// loxilb's `sel` (kube-loxilb's numbering: n2 5, n2det 6, n3 7).
    pub fn sel(self) -> i64 {
        match self {
            EpSelect::RoundRobin => 0,
            EpSelect::Hash => 1,
            EpSelect::Persist => 3,
            EpSelect::LeastConnections => 4,
            EpSelect::N2 => 5,
            EpSelect::N2Det => 6,
            EpSelect::N3 => 7,
        }
    }
}

/// `loxilb.io/ipam`: the family of the Service's address and of its endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressKind {
    /// `ipv4`, `ip`, `ip4`: an IPv4 address, IPv4 endpoints.
    Ipv4,
    /// `ipv6`, `ip6`, `nat66`: an IPv6 address, IPv6 endpoints.
    Ipv6,
    /// `ipv6to4`, `nat64`: an IPv6 address, IPv4 endpoints (the appliance translates).
    Ipv6To4,
}

/// Everything the annotations of one Service ask for. `None` means "not given": the
/// operator-wide setting (a flag) applies.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceOptions {
    /// loxilb `mode` (0 dnat, 1 onearm, 2 fullnat, 3 dsr, 4 fullproxy, 5 hostonearm).
    pub lb_mode: Option<i64>,
    pub ep_select: Option<EpSelect>,
    /// Seconds; kube-loxilb's default is [`DEFAULT_TIMEOUT_SECS`].
    pub timeout_secs: Option<i64>,
    pub liveness: bool,
    pub probe_type: String,
    pub probe_port: u16,
    pub probe_req: String,
    pub probe_resp: String,
    pub probe_timeout: u32,
    pub probe_retries: i32,
    pub static_ip: Option<IpAddr>,
    pub pool: Option<String>,
    pub use_pod_network: Option<bool>,
    pub proxy_protocol_v2: bool,
    pub egress: bool,
    /// `zoneselect`: the rule belongs to the operator of this zone only.
    pub zone_select: Option<String>,
    /// `ipam`: the address family asked for (None: from `spec.ipFamilies`, IPv4 by default).
    pub ipam: Option<AddressKind>,
    /// `num-secondary-networks`: how many secondary (multi-homed SCTP) addresses to allocate,
    /// one from each of the first that many `--externalSecondaryCIDRs` pools.
    pub secondary_count: usize,
    /// `secondaryIPs`: secondary addresses given by hand (they win over allocation in
    /// kube-loxilb; here giving both is refused).
    pub secondary_ips: Vec<IpAddr>,
}

/// The most secondary addresses one rule can carry (the appliance's and kube-loxilb's limit).
pub const MAX_SECONDARY: usize = 3;

/// One annotation value looked up under both prefixes.
fn get<'a>(
    ann: &'a BTreeMap<String, String>,
    name: &str,
) -> Result<Option<(String, &'a str)>, AnnotationError> {
    let a = ann.get(&format!("{}{name}", PREFIXES[0]));
    let b = ann.get(&format!("{}{name}", PREFIXES[1]));
    match (a, b) {
        (Some(a), Some(b)) if a != b => Err(AnnotationError::Conflict {
            name: name.to_owned(),
            a: a.clone(),
            b: b.clone(),
        }),
        (Some(a), _) => Ok(Some((format!("{}{name}", PREFIXES[0]), a.as_str()))),
        (None, Some(b)) => Ok(Some((format!("{}{name}", PREFIXES[1]), b.as_str()))),
        (None, None) => Ok(None),
    }
}

fn bad(key: &str, value: &str, expected: &'static str) -> AnnotationError {
    AnnotationError::BadValue {
        key: key.to_owned(),
        value: value.to_owned(),
        expected,
    }
}

fn not_implemented(key: &str, value: &str, what: &'static str) -> AnnotationError {
    AnnotationError::NotImplemented {
        key: key.to_owned(),
        value: value.to_owned(),
        what,
    }
}

fn yes_no(key: &str, value: &str) -> Result<bool, AnnotationError> {
    match value {
        "yes" => Ok(true),
        "no" => Ok(false),
        _ => Err(bad(key, value, "use yes or no")),
    }
}

fn number<T: std::str::FromStr>(
    key: &str,
    value: &str,
    expected: &'static str,
) -> Result<T, AnnotationError> {
    value.trim().parse().map_err(|_| bad(key, value, expected))
}

/// Parses the annotations of one Service. The first problem found is reported.
pub fn parse(ann: &BTreeMap<String, String>) -> Result<ServiceOptions, AnnotationError> {
    let mut o = ServiceOptions::default();

    if let Some((k, v)) = get(ann, "lbmode")? {
        o.lb_mode = Some(match v {
            "default" => 0,
            "onearm" => 1,
            "fullnat" => 2,
            "dsr" => 3,
            "fullproxy" => 4,
            "hostonearm" => 5,
            _ => {
                return Err(bad(
                    &k,
                    v,
                    "use default, onearm, fullnat, dsr, fullproxy or hostonearm",
                ))
            }
        });
    }
    if let Some((k, v)) = get(ann, "epselect")? {
        o.ep_select = Some(match v {
            "rr" | "roundrobin" => EpSelect::RoundRobin,
            "hash" => EpSelect::Hash,
            "persist" => EpSelect::Persist,
            "lc" => EpSelect::LeastConnections,
            "n2" => EpSelect::N2,
            "n2det" => EpSelect::N2Det,
            "n3" => EpSelect::N3,
            _ => return Err(bad(&k, v, "use rr, hash, persist, lc, n2, n2det or n3")),
        });
    }
    if let Some((k, v)) = get(ann, "timeout")? {
        let t: i64 = number(&k, v, "use a number of seconds, 1 or more")?;
        if t < 1 || t > i64::from(i32::MAX) {
            return Err(bad(&k, v, "use a number of seconds, 1 or more"));
        }
        o.timeout_secs = Some(t);
    }
    if let Some((k, v)) = get(ann, "liveness")? {
        o.liveness = yes_no(&k, v)?;
    }
    if let Some((k, v)) = get(ann, "probetype")? {
        match v {
            "none" | "ping" | "udp" | "tcp" | "http" | "https" => o.probe_type = v.to_owned(),
            _ => return Err(bad(&k, v, "use none, ping, udp, tcp, http or https")),
        }
    }
    let needs_probe_type = |k: &str, v: &str, o: &ServiceOptions| {
        if matches!(o.probe_type.as_str(), "" | "none" | "ping") {
            Err(bad(
                k,
                v,
                "needs loxilb.io/probetype udp, tcp, http or https on the same Service",
            ))
        } else {
            Ok(())
        }
    };
    if let Some((k, v)) = get(ann, "probeport")? {
        needs_probe_type(&k, v, &o)?;
        o.probe_port = number(&k, v, "use a port number, 1 to 65535")?;
        if o.probe_port == 0 {
            return Err(bad(&k, v, "use a port number, 1 to 65535"));
        }
    }
    if let Some((k, v)) = get(ann, "probereq")? {
        needs_probe_type(&k, v, &o)?;
        o.probe_req = v.to_owned();
    }
    if let Some((k, v)) = get(ann, "proberesp")? {
        needs_probe_type(&k, v, &o)?;
        o.probe_resp = v.to_owned();
    }
    if let Some((k, v)) = get(ann, "probetimeout")? {
        o.probe_timeout = number(&k, v, "use a number of seconds")?;
    }
    if let Some((k, v)) = get(ann, "proberetries")? {
        o.probe_retries = number(&k, v, "use a number of retries, 0 or more")?;
        if o.probe_retries < 0 {
            return Err(bad(&k, v, "use a number of retries, 0 or more"));
        }
    }
    if let Some((k, v)) = get(ann, "staticIP")? {
        o.static_ip = Some(number(&k, v, "use one IP address")?);
    }
    if let Some((k, v)) = get(ann, "poolSelect")? {
        if v.is_empty() || v.contains(',') {
            return Err(bad(&k, v, "use the name of one pool from --cidrPools"));
        }
        o.pool = Some(v.to_owned());
    }
    if let Some((k, v)) = get(ann, "usepodnetwork")? {
        o.use_pod_network = Some(yes_no(&k, v)?);
    }
    if let Some((k, v)) = get(ann, "useproxyprotov2")? {
        o.proxy_protocol_v2 = yes_no(&k, v)?;
    }
    if let Some((k, v)) = get(ann, "egress")? {
        o.egress = yes_no(&k, v)?;
    }
    if let Some((_, v)) = get(ann, "zoneselect")? {
        o.zone_select = Some(v.to_owned());
    }
    if let Some((k, v)) = get(ann, "ipam")? {
        o.ipam = Some(match v {
            "ipv4" | "ip" | "ip4" => AddressKind::Ipv4,
            "ipv6" | "ip6" | "nat66" => AddressKind::Ipv6,
            "ipv6to4" | "nat64" => AddressKind::Ipv6To4,
            _ => {
                return Err(bad(
                    &k,
                    v,
                    "use ipv4 (ip, ip4), ipv6 (ip6, nat66) or ipv6to4 (nat64)",
                ))
            }
        });
    }
    if let Some((k, v)) = get(ann, "prefLocalPod")? {
        if yes_no(&k, v)? {
            return Err(not_implemented(&k, v, "preferring node-local pods; use no"));
        }
    }
    if let Some((k, v)) = get(ann, "useExternalEndpoint")? {
        if yes_no(&k, v)? {
            return Err(not_implemented(&k, v, "external endpoints; use no"));
        }
    }
    let secondary_count = get(ann, "num-secondary-networks")?;
    if let Some((k, v)) = &secondary_count {
        o.secondary_count = number(k, v, "use a number of secondary addresses, 0 to 3")?;
        if o.secondary_count > MAX_SECONDARY {
            return Err(bad(k, v, "use a number of secondary addresses, 0 to 3"));
        }
    }
    if let Some((k, v)) = get(ann, "secondaryIPs")? {
        const EXPECTED: &str = "use 1 to 3 distinct IP addresses of one family, comma-separated";
        let ips: Vec<IpAddr> = v
            .split(',')
            .map(|s| number(&k, s, EXPECTED))
            .collect::<Result<_, _>>()?;
        let mut distinct = ips.clone();
        distinct.sort();
        distinct.dedup();
        let one_family = ips.iter().all(|ip| ip.is_ipv4() == ips[0].is_ipv4());
        if ips.len() > MAX_SECONDARY || distinct.len() != ips.len() || !one_family {
            return Err(bad(&k, v, EXPECTED));
        }
        if o.secondary_count > 0 {
            return Err(bad(
                &k,
                v,
                "give either loxilb.io/secondaryIPs or loxilb.io/num-secondary-networks, not both",
            ));
        }
        o.secondary_ips = ips;
    }
    let refused: [(&str, &'static str); 4] = [
        (
            "poolSelectSecondary",
            "secondary addresses from named pools; use loxilb.io/num-secondary-networks with \
             --externalSecondaryCIDRs, or loxilb.io/secondaryIPs",
        ),
        ("multus-nets", "Multus pod networks"),
        ("nodelabel", "selecting endpoint nodes by label"),
        (
            "zoneinstance",
            "choosing the zone instance (--numZoneInstances is 1)",
        ),
    ];
    for (name, what) in refused {
        if let Some((k, v)) = get(ann, name)? {
            return Err(not_implemented(&k, v, what));
        }
    }
    for key in ann.keys() {
        if let Some(name) = key
            .strip_prefix(PREFIXES[0])
            .or(key.strip_prefix(PREFIXES[1]))
        {
            if name.starts_with("mtls-") {
                return Err(not_implemented(key, &ann[key], "mTLS termination"));
            }
        }
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn no_annotations_give_the_defaults() {
        assert_eq!(parse(&ann(&[])).unwrap(), ServiceOptions::default());
    }

    #[test]
    fn both_prefixes_are_read() {
        let o = parse(&ann(&[
            ("loxilb.io/lbmode", "fullnat"),
            ("oxlb.io/epselect", "persist"),
            ("oxlb.io/timeout", "60"),
        ]))
        .unwrap();
        assert_eq!(o.lb_mode, Some(2));
        assert_eq!(o.ep_select.map(EpSelect::sel), Some(3));
        assert_eq!(o.timeout_secs, Some(60));
    }

    #[test]
    fn the_two_spellings_must_agree() {
        let e = parse(&ann(&[
            ("loxilb.io/lbmode", "fullnat"),
            ("oxlb.io/lbmode", "onearm"),
        ]))
        .unwrap_err();
        assert!(matches!(e, AnnotationError::Conflict { .. }), "{e}");
        let same = parse(&ann(&[
            ("loxilb.io/lbmode", "dsr"),
            ("oxlb.io/lbmode", "dsr"),
        ]));
        assert_eq!(same.unwrap().lb_mode, Some(3));
    }

    #[test]
    fn a_bad_value_names_the_annotation_and_what_it_accepts() {
        let e = parse(&ann(&[("loxilb.io/epselect", "random")])).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("loxilb.io/epselect=\"random\""), "{msg}");
        assert!(msg.contains("rr, hash, persist"), "{msg}");
        for (k, v) in [
            ("loxilb.io/timeout", "soon"),
            ("loxilb.io/timeout", "0"),
            ("loxilb.io/liveness", "true"),
            ("loxilb.io/staticIP", "10.0.0.300"),
            ("loxilb.io/lbmode", "nat"),
            ("loxilb.io/probetype", "grpc"),
            ("loxilb.io/ipam", "ipv5"),
            ("loxilb.io/proberetries", "-1"),
        ] {
            let e = parse(&ann(&[(k, v)])).unwrap_err();
            assert!(
                matches!(e, AnnotationError::BadValue { .. }),
                "{k}={v}: {e}"
            );
        }
    }

    #[test]
    fn probe_details_need_a_probe_type() {
        let e = parse(&ann(&[("loxilb.io/probeport", "8080")])).unwrap_err();
        assert!(e.to_string().contains("probetype"), "{e}");
        let o = parse(&ann(&[
            ("loxilb.io/liveness", "yes"),
            ("loxilb.io/probetype", "http"),
            ("loxilb.io/probeport", "8080"),
            ("loxilb.io/probereq", "GET /"),
            ("loxilb.io/proberesp", "ok"),
            ("loxilb.io/probetimeout", "5"),
            ("loxilb.io/proberetries", "3"),
        ]))
        .unwrap();
        assert!(o.liveness);
        assert_eq!(
            (
                o.probe_port,
                o.probe_req.as_str(),
                o.probe_timeout,
                o.probe_retries
            ),
            (8080, "GET /", 5, 3)
        );
    }

    #[test]
    fn unimplemented_features_are_refused_by_name() {
        for (k, v) in [
            ("loxilb.io/poolSelectSecondary", "pool2,pool3"),
            ("loxilb.io/multus-nets", "net1"),
            ("loxilb.io/prefLocalPod", "yes"),
            ("oxlb.io/mtls-frontend-mode", "strict"),
        ] {
            let e = parse(&ann(&[(k, v)])).unwrap_err();
            assert!(
                matches!(e, AnnotationError::NotImplemented { .. }),
                "{k}={v}: {e}"
            );
            assert!(e.to_string().contains(k), "{e}");
        }
        assert!(parse(&ann(&[("loxilb.io/prefLocalPod", "no")])).is_ok());
    }

    #[test]
    fn secondary_addresses_are_a_count_or_a_list_of_up_to_three_of_one_family() {
        let o = parse(&ann(&[("loxilb.io/num-secondary-networks", "2")])).unwrap();
        assert_eq!((o.secondary_count, o.secondary_ips.len()), (2, 0));
        let o = parse(&ann(&[("oxlb.io/secondaryIPs", "10.0.0.9, 10.0.0.3")])).unwrap();
        assert_eq!(
            o.secondary_ips,
            ["10.0.0.9", "10.0.0.3"].map(|s| s.parse::<IpAddr>().unwrap())
        );
        assert_eq!(o.secondary_count, 0);
        for (k, v) in [
            ("loxilb.io/num-secondary-networks", "4"),
            ("loxilb.io/num-secondary-networks", "-1"),
            ("loxilb.io/num-secondary-networks", "two"),
            (
                "loxilb.io/secondaryIPs",
                "10.0.0.1,10.0.0.2,10.0.0.3,10.0.0.4",
            ),
            ("loxilb.io/secondaryIPs", "10.0.0.1,10.0.0.1"),
            ("loxilb.io/secondaryIPs", "10.0.0.1,fd00::1"),
            ("loxilb.io/secondaryIPs", "10.0.0.1,"),
            ("loxilb.io/secondaryIPs", ""),
        ] {
            let e = parse(&ann(&[(k, v)])).unwrap_err();
            assert!(
                matches!(e, AnnotationError::BadValue { .. }),
                "{k}={v}: {e}"
            );
            assert!(e.to_string().contains(k), "{e}");
        }
        let both = parse(&ann(&[
            ("loxilb.io/num-secondary-networks", "1"),
            ("loxilb.io/secondaryIPs", "10.0.0.1"),
        ]))
        .unwrap_err();
        assert!(both.to_string().contains("not both"), "{both}");
    }

    #[test]
    fn ipam_takes_kube_loxilbs_values_and_aliases() {
        for (v, want) in [
            ("ipv4", AddressKind::Ipv4),
            ("ip", AddressKind::Ipv4),
            ("ip4", AddressKind::Ipv4),
            ("ipv6", AddressKind::Ipv6),
            ("ip6", AddressKind::Ipv6),
            ("nat66", AddressKind::Ipv6),
            ("ipv6to4", AddressKind::Ipv6To4),
            ("nat64", AddressKind::Ipv6To4),
        ] {
            let o = parse(&ann(&[("loxilb.io/ipam", v)])).unwrap();
            assert_eq!(o.ipam, Some(want), "{v}");
        }
        assert_eq!(parse(&ann(&[])).unwrap().ipam, None);
        let e = parse(&ann(&[("oxlb.io/ipam", "ipv5")])).unwrap_err();
        assert!(e.to_string().contains("ipv6to4"), "{e}");
    }

    #[test]
    fn other_annotations_are_left_alone() {
        let o = parse(&ann(&[
            ("example.com/anything", "x"),
            ("loxilb.io/staticIP", "198.18.100.7"),
        ]));
        assert_eq!(o.unwrap().static_ip, Some("198.18.100.7".parse().unwrap()));
    }
}
