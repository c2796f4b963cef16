//! The JSON bodies of loxilb's `/netlox/v1` API, field for field, before validation.
//!
//! Names and types follow loxilb's `api/swagger.yml` (`LoadbalanceEntry`, `Error`) and the
//! `{"result": ...}` body its handlers answer with. Integers the user may get wrong are wide
//! (`i64`) so that validation, not the parser, says which value is out of range.

use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

/// The body of `POST /netlox/v1/config/loadbalancer` and one item of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(
    as = LoadbalanceEntry,
    example = json!({
        "serviceArguments": {"externalIP": "198.18.100.1", "port": 2020, "protocol": "tcp",
                             "sel": 0, "mode": 0, "name": "web"},
        "endpoints": [{"endpointIP": "198.18.31.1", "targetPort": 8080, "weight": 1}]
    })
)]
pub struct LoadBalancerEntry {
    #[serde(rename = "serviceArguments")]
    pub service_arguments: ServiceArguments,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub endpoints: Vec<Endpoint>,
    /// Further addresses of an `sctp` rule in mode 0 (dnat), for multi-homed associations: at
    /// most 3, of the externalIP's family, neither the externalIP nor repeated; listed sorted.
    /// Refused (400) for other protocols and modes.
    #[serde(rename = "secondaryIPs", default, deserialize_with = "null_as_empty")]
    pub secondary_ips: Vec<SecondaryIp>,
    #[serde(rename = "allowedSources", default, deserialize_with = "null_as_empty")]
    pub allowed_sources: Vec<AllowedSource>,
}

/// loxilb's `serviceArguments`. Only `externalIP`, `port` and `protocol` are required; every
/// other field defaults to loxilb's zero value and is left out of listings when it has it, as
/// loxilb's `omitempty` does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceArguments {
    /// The service address, IPv4 or IPv6. An IPv6 address may front IPv4 endpoints (NAT64)
    /// in mode 1 (onearm) or 2 (fullnat); an IPv4 address takes IPv4 endpoints only.
    #[serde(rename = "externalIP")]
    #[schema(example = "198.18.100.1")]
    pub external_ip: String,
    #[serde(rename = "privateIP", default, skip_serializing_if = "is_default")]
    pub private_ip: String,
    #[schema(minimum = 1, maximum = 65535)]
    pub port: i64,
    #[serde(rename = "portMax", default, skip_serializing_if = "is_default")]
    pub port_max: i64,
    /// loxilb's `tcp`, `udp`, `sctp` or `icmp`; oxlb implements tcp, udp and sctp (icmp is
    /// refused with 400).
    #[schema(pattern = "^(tcp|udp|sctp|icmp)$")]
    pub protocol: String,
    /// Endpoint selection: 0 rr, 1 hash, 2 priority, 3 persist, 4 lc, 5 n2, 6 n3.
    #[serde(default, skip_serializing_if = "is_default")]
    pub sel: i64,
    /// NAT mode: 0 dnat, 1 onearm, 2 fullnat, 3 dsr, 4 fullproxy, 5 hostonearm.
    #[serde(default, skip_serializing_if = "is_default")]
    pub mode: i64,
    /// kube-loxilb writes `BGP` (Go matches JSON names case-insensitively).
    #[serde(alias = "BGP", default, skip_serializing_if = "is_default")]
    pub bgp: bool,
    /// kube-loxilb writes `Monitor`.
    #[serde(alias = "Monitor", default, skip_serializing_if = "is_default")]
    pub monitor: bool,
    #[serde(default, skip_serializing_if = "is_default")]
    pub probetype: String,
    #[serde(default, skip_serializing_if = "is_default")]
    pub probeport: u16,
    #[serde(default, skip_serializing_if = "is_default")]
    pub probereq: String,
    #[serde(default, skip_serializing_if = "is_default")]
    pub proberesp: String,
    #[serde(rename = "probeTimeout", default, skip_serializing_if = "is_default")]
    pub probe_timeout: u32,
    #[serde(rename = "probeRetries", default, skip_serializing_if = "is_default")]
    pub probe_retries: i32,
    /// Seconds; 0 means the default.
    #[serde(
        rename = "inactiveTimeOut",
        default,
        skip_serializing_if = "is_default"
    )]
    pub inactive_timeout: i64,
    #[serde(default, skip_serializing_if = "is_default")]
    pub block: u32,
    #[serde(default, skip_serializing_if = "is_default")]
    pub managed: bool,
    /// 0 plain, 1 https/tls, 2 end-to-end https.
    #[serde(default, skip_serializing_if = "is_default")]
    pub security: i64,
    #[serde(default, skip_serializing_if = "is_default")]
    pub name: String,
    #[serde(default, skip_serializing_if = "is_default")]
    pub snat: bool,
    /// 0 create (or replace), 1 attach endpoints, 2 detach endpoints.
    #[serde(default, skip_serializing_if = "is_default")]
    pub oper: i64,
    #[serde(default, skip_serializing_if = "is_default")]
    pub host: String,
    #[serde(default, skip_serializing_if = "is_default")]
    pub proxyprotocolv2: bool,
    #[serde(default, skip_serializing_if = "is_default")]
    pub egress: bool,
    /// oxlb's own (loxilb has no such field): what established flows do when a health probe
    /// marks their endpoint down. `keep` (the default, loxilb's behaviour): they continue
    /// until they end or time out. `reset`: they end at their next packet; a TCP client gets
    /// a RST from the VIP, a UDP client's next datagram goes to a live endpoint.
    #[serde(rename = "onEndpointDown", default, skip_serializing_if = "is_default")]
    #[schema(example = "reset")]
    pub on_endpoint_down: String,
}

/// One item of `endpoints`. `state` and `counter` are output fields of listings; input values
/// are accepted (kube-loxilb sends them empty) and ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// IPv4 or IPv6 (see `externalIP` for which mixes are served).
    #[serde(rename = "endpointIP")]
    #[schema(example = "198.18.31.1")]
    pub endpoint_ip: String,
    #[serde(rename = "targetPort")]
    #[schema(minimum = 1, maximum = 65535)]
    pub target_port: i64,
    #[schema(minimum = 0, maximum = 255)]
    pub weight: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counter: Option<String>,
}

/// One item of `secondaryIPs` (multi-homed SCTP in loxilb).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecondaryIp {
    #[serde(rename = "secondaryIP", default)]
    pub secondary_ip: String,
}

/// One item of `allowedSources` (a source prefix allowed to reach the service).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AllowedSource {
    /// An IPv4 or IPv6 prefix (`198.18.0.0/24`, `fd00::/8`) or a bare address.
    #[serde(default)]
    pub prefix: String,
}

/// The body of `GET /netlox/v1/config/loadbalancer/all`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LoadBalancerList {
    #[serde(rename = "lbAttr", default, deserialize_with = "null_as_empty")]
    pub lb_attr: Vec<LoadBalancerEntry>,
}

/// loxilb's answer to a change that worked: `{"result":"Success"}` with status 200.
/// kube-loxilb treats any other `result`, or any other status, as a failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ResultResponse {
    pub result: String,
}

impl ResultResponse {
    pub const SUCCESS: &'static str = "Success";

    pub fn success() -> ResultResponse {
        ResultResponse {
            result: Self::SUCCESS.to_owned(),
        }
    }
}

/// loxilb's `Error` model, sent with the HTTP status in `code`. kube-loxilb reports `result`
/// as the reason, so `result` and `message` both carry the full, actionable text; `fields`
/// names the JSON path of the offending value when there is one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorResponse {
    pub code: u16,
    pub message: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
    #[serde(default)]
    pub result: String,
}

impl ErrorResponse {
    pub fn new(code: u16, message: impl Into<String>) -> ErrorResponse {
        let message = message.into();
        ErrorResponse {
            code,
            result: message.clone(),
            message,
            fields: Vec::new(),
        }
    }

    /// The same error, naming the JSON path of the offending value.
    pub fn with_field(mut self, field: impl Into<String>) -> ErrorResponse {
        self.fields.push(field.into());
        self
    }
}

/// The body of `GET /netlox/v1/` (loxilb's `HealthCheckResponse`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HealthResponse {
    pub status: String,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// Go encodes an empty slice as `null`; kube-loxilb sends `"secondaryIPs":null`.
fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}
