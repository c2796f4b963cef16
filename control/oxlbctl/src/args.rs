//! The command line, and its translation into the API calls it stands for. Nothing here talks
//! to the network, so every request body can be checked by a unit test.
//!
//! The syntax follows loxilb's loxicmd (`create lb IP --tcp=PORT:TARGET --endpoints=IP:WEIGHT`,
//! `delete lb IP --tcp=PORT`, `get lb -o json`). Values the appliance judges (ports, weights,
//! a mode or selection it may not implement) are sent as given, so that its answer, not a guess
//! here, says what it runs; only what cannot be put into a request at all is a usage error.

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use oxlb_api::{BgpGlobalEntry, BgpNeighEntry, CiStatusEntry, LoadBalancerEntry};
use std::net::IpAddr;
use std::path::PathBuf;

pub const DEFAULT_API: &str = "http://127.0.0.1:11111";
pub const BASE: &str = "/netlox/v1";
const LOG_LEVEL_PATH: &str = "/netlox/v1/config/loglevel";

const EXAMPLES: &str = "\
Examples:
  oxlbctl create lb 198.18.100.1 --tcp=2020:8080 --endpoints=198.18.31.1:1,198.18.31.2:1,198.18.31.3:1 --name web
  oxlbctl get lb
  oxlbctl -o json get lb
  oxlbctl delete lb 198.18.100.1 --tcp=2020
  oxlbctl delete lb --all
  oxlbctl get status
  oxlbctl get status --detail
  oxlbctl get ct
  oxlbctl get ep
  oxlbctl get loglevel
  oxlbctl set loglevel debug,oxlb_dataplane=trace
  oxlbctl get cistate
  oxlbctl set cistate llb-inst0 --state MASTER --vip 198.18.100.1
  oxlbctl set bgp global --as 65001 --router-id 198.18.0.1
  oxlbctl create bgpneigh 198.18.1.2 65002
  oxlbctl create bgpneigh 198.18.1.2 65002 --remote-port 1179 --multihop
  oxlbctl get bgpneigh
  oxlbctl delete bgpneigh 198.18.1.2
  oxlbctl --api https://198.18.0.1:11111 --ca-file ca.pem --token-file token get lb

Exit status: 0 done, 1 the appliance refused (its message is shown; also a missing or wrong
token), 2 usage error, 3 the appliance cannot be reached (or its certificate is not trusted).";

#[derive(Debug, Parser)]
#[command(
    name = "oxlbctl",
    version,
    about = "Command line client of oxlb's loxilb-compatible REST API (/netlox/v1)",
    after_help = EXAMPLES
)]
pub struct Cli {
    /// Base URL of the appliance's API: http://... or https://...
    #[arg(long, global = true, default_value = DEFAULT_API)]
    pub api: String,
    /// File holding the API's bearer token (the appliance's --api-token-file); sent as
    /// `Authorization: Bearer TOKEN` with every request.
    #[arg(long, global = true, env = "OXLB_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// PEM certificate(s) to trust for an https:// API besides the system's, e.g. the CA of
    /// the appliance's self-signed certificate.
    #[arg(long, global = true, value_name = "PATH")]
    pub ca_file: Option<PathBuf>,
    /// Output: a table for people, or JSON (the appliance's own shapes) for scripts.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show load-balancer rules or the appliance's status.
    Get {
        #[command(subcommand)]
        what: GetWhat,
    },
    /// Create (or replace) load-balancer rules.
    Create {
        #[command(subcommand)]
        what: CreateWhat,
    },
    /// Delete load-balancer rules.
    Delete {
        #[command(subcommand)]
        what: DeleteWhat,
    },
    /// Change a setting of the running appliance.
    Set {
        #[command(subcommand)]
        what: SetWhat,
    },
}

#[derive(Debug, Subcommand)]
pub enum SetWhat {
    /// Replace the appliance's log filter until it restarts
    /// (PUT /netlox/v1/config/loglevel).
    #[command(alias = "log-level")]
    Loglevel {
        /// In RUST_LOG syntax: a level (error, warn, info, debug, trace), per-module
        /// directives, or both: `info,oxlb_dataplane=debug`.
        filter: String,
    },
    /// Record the HA role of a cluster instance, as kube-loxilb's --setRoles does
    /// (POST /netlox/v1/config/cistate). Recorded and kept across restarts; it does not
    /// change forwarding yet.
    #[command(alias = "ha")]
    Cistate {
        /// The instance, e.g. llb-inst0 (loxilb's default instance).
        instance: String,
        /// MASTER, BACKUP, FAULT, STOP or NOT_DEFINED.
        #[arg(long)]
        state: String,
        /// The instance's virtual IP address.
        #[arg(long)]
        vip: Option<String>,
    },
    /// BGP settings.
    Bgp {
        #[command(subcommand)]
        what: SetBgp,
    },
}

#[derive(Debug, Subcommand)]
pub enum SetBgp {
    /// This appliance's AS and router id, the port it listens on for neighbours
    /// (POST /netlox/v1/config/bgp/global). Sessions restart with the new identity.
    Global {
        /// The local AS number.
        #[arg(long = "as", value_name = "N")]
        local_as: i64,
        /// The BGP identifier, an IPv4 address.
        #[arg(long, value_name = "IP")]
        router_id: String,
        /// The port neighbours connect to (default 179).
        #[arg(long, value_name = "PORT")]
        listen_port: Option<i64>,
        /// The NEXT_HOP of the VIPs of this address's family instead of each session's local
        /// address (oxlb's own setting); once for IPv4, once for IPv6.
        #[arg(long, value_name = "IP")]
        next_hop: Vec<IpAddr>,
    },
}

#[derive(Debug, Subcommand)]
pub enum GetWhat {
    /// Every load-balancer rule (GET /netlox/v1/config/loadbalancer/all).
    #[command(alias = "loadbalancer")]
    Lb,
    /// Whether the appliance's API is up (GET /netlox/v1/, which loxilb answers too); with
    /// --detail, oxlb's version, uptime, workers, interfaces and rule count
    /// (GET /netlox/v1/status).
    Status {
        #[arg(long, short = 'd')]
        detail: bool,
    },
    /// Every endpoint with its health probe and state ok/nok
    /// (GET /netlox/v1/config/endpoint/all).
    #[command(alias = "endpoint")]
    Ep,
    /// Every tracked connection, one row per direction (GET /netlox/v1/config/conntrack/all).
    #[command(alias = "conntrack")]
    Ct,
    /// The appliance's log filter in force (GET /netlox/v1/config/loglevel).
    #[command(alias = "log-level")]
    Loglevel,
    /// The HA role of every cluster instance (GET /netlox/v1/config/cistate/all).
    #[command(alias = "ha")]
    Cistate,
    /// Every BGP neighbour with its session's state (GET /netlox/v1/config/bgp/neigh/all).
    #[command(alias = "bgp-neigh")]
    Bgpneigh,
}

#[derive(Debug, Subcommand)]
pub enum CreateWhat {
    /// One rule per port pair: VIP:PORT/protocol to the endpoints' TARGET port. A rule with the
    /// same VIP, port and protocol is replaced, endpoints included.
    #[command(alias = "loadbalancer")]
    Lb(CreateLb),
    /// A BGP neighbour the appliance advertises its rules' addresses to (those created with
    /// bgp set) (POST /netlox/v1/config/bgp/neigh).
    #[command(alias = "bgp-neigh")]
    Bgpneigh {
        /// The neighbour's address.
        ip: String,
        /// The neighbour's AS (the local AS for iBGP).
        remote_as: i64,
        /// The neighbour's port (default 179).
        #[arg(long, value_name = "PORT")]
        remote_port: Option<i64>,
        /// eBGP to a neighbour more than one hop away (TTL 255).
        #[arg(long)]
        multihop: bool,
    },
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("ports").required(true).multiple(true).args(["tcp", "udp", "sctp"])))]
pub struct CreateLb {
    /// The service's external IP (the VIP).
    pub vip: String,
    /// TCP port pairs PORT:TARGET, comma-separated or repeated.
    #[arg(long, value_delimiter = ',', value_name = "PORT:TARGET")]
    pub tcp: Vec<String>,
    /// UDP port pairs PORT:TARGET, comma-separated or repeated.
    #[arg(long, value_delimiter = ',', value_name = "PORT:TARGET")]
    pub udp: Vec<String>,
    /// SCTP port pairs PORT:TARGET, comma-separated or repeated.
    #[arg(long, value_delimiter = ',', value_name = "PORT:TARGET")]
    pub sctp: Vec<String>,
    /// Endpoints IP:WEIGHT, comma-separated or repeated.
    #[arg(long, value_delimiter = ',', required = true, value_name = "IP:WEIGHT")]
    pub endpoints: Vec<String>,
    /// NAT mode: dnat, onearm, fullnat, dsr, fullproxy, hostonearm, or loxilb's number.
    #[arg(long, default_value = "dnat")]
    pub mode: String,
    /// Endpoint selection: rr, hash, priority, persist, lc, n2, n3, or loxilb's number.
    #[arg(long, default_value = "rr")]
    pub select: String,
    /// The rule's name.
    #[arg(long)]
    pub name: Option<String>,
    /// Seconds of inactivity after which a flow is forgotten (0: the appliance's default).
    #[arg(long, alias = "inatimeout", value_name = "SECONDS")]
    pub inactive_timeout: Option<i64>,
    /// Advertise the VIP to the BGP neighbours as a host route (loxilb's `bgp`).
    #[arg(long)]
    pub bgp: bool,
}

#[derive(Debug, Subcommand)]
pub enum DeleteWhat {
    /// The rules of VIP on the given ports, or every rule with --all.
    #[command(alias = "loadbalancer")]
    Lb(DeleteLb),
    /// A BGP neighbour (DELETE /netlox/v1/config/bgp/neigh/IP).
    #[command(alias = "bgp-neigh")]
    Bgpneigh {
        /// The neighbour's address.
        ip: String,
        /// Delete only if the neighbour has this AS.
        #[arg(long, value_name = "N")]
        remote_as: Option<i64>,
    },
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").required(true).multiple(true).args(["tcp", "udp", "sctp", "all"])))]
pub struct DeleteLb {
    /// The service's external IP (the VIP).
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub vip: Option<String>,
    /// TCP ports, comma-separated or repeated.
    #[arg(long, value_delimiter = ',', value_name = "PORT")]
    pub tcp: Vec<i64>,
    /// UDP ports, comma-separated or repeated.
    #[arg(long, value_delimiter = ',', value_name = "PORT")]
    pub udp: Vec<i64>,
    /// SCTP ports, comma-separated or repeated.
    #[arg(long, value_delimiter = ',', value_name = "PORT")]
    pub sctp: Vec<i64>,
    /// Delete every rule.
    #[arg(long, conflicts_with_all = ["tcp", "udp", "sctp"])]
    pub all: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
}

/// The JSON body of a call, serialized as itself.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum Body {
    Lb(Box<LoadBalancerEntry>),
    /// `{"filter":"..."}` of the log-level call.
    LogLevel {
        filter: String,
    },
    /// loxilb's `CIStatusEntry`.
    CiState(CiStatusEntry),
    /// loxilb's `BGPGlobalConfig`.
    BgpGlobal(BgpGlobalEntry),
    /// loxilb's `BGPNeigh`.
    BgpNeigh(BgpNeighEntry),
}

/// One API call a command stands for.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub method: Method,
    /// Path below the API's base URL, e.g. `/netlox/v1/config/loadbalancer`.
    pub path: String,
    pub body: Option<Body>,
    /// What the call does, for people: `create lb 198.18.100.1:2020/tcp`.
    pub what: String,
}

/// A command line that cannot be turned into a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

fn usage(msg: impl Into<String>) -> UsageError {
    UsageError(msg.into())
}

/// The calls `command` stands for, in the order they are sent.
pub fn calls(command: &Command) -> Result<Vec<Call>, UsageError> {
    match command {
        Command::Get { what: GetWhat::Lb } => Ok(vec![Call {
            method: Method::Get,
            path: format!("{BASE}/config/loadbalancer/all"),
            body: None,
            what: "get lb".into(),
        }]),
        Command::Get {
            what: GetWhat::Status { detail: false },
        } => Ok(vec![Call {
            method: Method::Get,
            path: format!("{BASE}/"),
            body: None,
            what: "get status".into(),
        }]),
        Command::Get {
            what: GetWhat::Status { detail: true },
        } => Ok(vec![Call {
            method: Method::Get,
            path: format!("{BASE}/status"),
            body: None,
            what: "get status --detail".into(),
        }]),
        Command::Get { what: GetWhat::Ep } => Ok(vec![Call {
            method: Method::Get,
            path: format!("{BASE}/config/endpoint/all"),
            body: None,
            what: "get ep".into(),
        }]),
        Command::Get { what: GetWhat::Ct } => Ok(vec![Call {
            method: Method::Get,
            path: format!("{BASE}/config/conntrack/all"),
            body: None,
            what: "get ct".into(),
        }]),
        Command::Get {
            what: GetWhat::Loglevel,
        } => Ok(vec![Call {
            method: Method::Get,
            path: LOG_LEVEL_PATH.into(),
            body: None,
            what: "get loglevel".into(),
        }]),
        Command::Set {
            what: SetWhat::Loglevel { filter },
        } => Ok(vec![Call {
            method: Method::Put,
            path: LOG_LEVEL_PATH.into(),
            body: Some(Body::LogLevel {
                filter: filter.clone(),
            }),
            what: format!("set loglevel {filter}"),
        }]),
        Command::Get {
            what: GetWhat::Cistate,
        } => Ok(vec![Call {
            method: Method::Get,
            path: format!("{BASE}/config/cistate/all"),
            body: None,
            what: "get cistate".into(),
        }]),
        Command::Set {
            what:
                SetWhat::Cistate {
                    instance,
                    state,
                    vip,
                },
        } => Ok(vec![Call {
            method: Method::Post,
            path: format!("{BASE}/config/cistate"),
            // Sent as given: the appliance names a state or address it refuses.
            body: Some(Body::CiState(CiStatusEntry {
                instance: instance.clone(),
                state: state.clone(),
                vip: vip.clone().unwrap_or_default(),
            })),
            what: format!("set cistate {instance} {state}"),
        }]),
        Command::Create {
            what: CreateWhat::Lb(c),
        } => create_calls(c),
        Command::Delete {
            what: DeleteWhat::Lb(d),
        } => delete_calls(d),
        Command::Get {
            what: GetWhat::Bgpneigh,
        } => Ok(vec![Call {
            method: Method::Get,
            path: format!("{BASE}/config/bgp/neigh/all"),
            body: None,
            what: "get bgpneigh".into(),
        }]),
        Command::Create {
            what:
                CreateWhat::Bgpneigh {
                    ip,
                    remote_as,
                    remote_port,
                    multihop,
                },
        } => Ok(vec![Call {
            method: Method::Post,
            path: format!("{BASE}/config/bgp/neigh"),
            body: Some(Body::BgpNeigh(BgpNeighEntry {
                ip_address: ip.clone(),
                remote_as: *remote_as,
                remote_port: remote_port.unwrap_or(0),
                set_multi_hop: *multihop,
            })),
            what: format!("create bgpneigh {ip} AS {remote_as}"),
        }]),
        Command::Delete {
            what: DeleteWhat::Bgpneigh { ip, remote_as },
        } => {
            // The address goes into the path: it must be one, not arbitrary path text.
            let addr = ip
                .parse::<IpAddr>()
                .map_err(|_| usage(format!("{ip:?} is not an IP address")))?;
            let query = remote_as.map_or_else(String::new, |a| format!("?remoteAs={a}"));
            Ok(vec![Call {
                method: Method::Delete,
                path: format!("{BASE}/config/bgp/neigh/{addr}{query}"),
                body: None,
                what: format!("delete bgpneigh {addr}"),
            }])
        }
        Command::Set {
            what:
                SetWhat::Bgp {
                    what:
                        SetBgp::Global {
                            local_as,
                            router_id,
                            listen_port,
                            next_hop,
                        },
                },
        } => {
            let (v4, v6): (Vec<IpAddr>, Vec<IpAddr>) = next_hop.iter().partition(|a| a.is_ipv4());
            if v4.len() > 1 || v6.len() > 1 {
                return Err(usage(
                    "--next-hop: give at most one IPv4 and one IPv6 address",
                ));
            }
            let text = |a: Option<&IpAddr>| a.map(ToString::to_string).unwrap_or_default();
            Ok(vec![Call {
                method: Method::Post,
                path: format!("{BASE}/config/bgp/global"),
                body: Some(Body::BgpGlobal(BgpGlobalEntry {
                    local_as: *local_as,
                    router_id: router_id.clone(),
                    listen_port: listen_port.unwrap_or(0),
                    set_next_hop_self: false,
                    next_hop_ipv4: text(v4.first()),
                    next_hop_ipv6: text(v6.first()),
                })),
                what: format!("set bgp global AS {local_as} router id {router_id}"),
            }])
        }
    }
}

fn create_calls(c: &CreateLb) -> Result<Vec<Call>, UsageError> {
    let vip = ip(&c.vip, "the VIP")?;
    let mode = number_of("--mode", &c.mode, MODES)?;
    let sel = number_of("--select", &c.select, SELECTIONS)?;
    let endpoints = c
        .endpoints
        .iter()
        .map(|e| endpoint(e))
        .collect::<Result<Vec<_>, _>>()?;
    let pairs = [("tcp", &c.tcp), ("udp", &c.udp), ("sctp", &c.sctp)];
    let mut out = Vec::new();
    for (proto, list) in pairs {
        for pair in list.iter() {
            let (port, target) = port_pair(proto, pair)?;
            let eps: Vec<serde_json::Value> = endpoints
                .iter()
                .map(|(ip, weight)| {
                    serde_json::json!({"endpointIP": ip, "targetPort": target, "weight": weight})
                })
                .collect();
            let mut args = serde_json::json!({
                "externalIP": vip,
                "port": port,
                "protocol": proto,
                "mode": mode,
                "sel": sel,
            });
            if let Some(name) = &c.name {
                args["name"] = name.clone().into();
            }
            if let Some(t) = c.inactive_timeout {
                args["inactiveTimeOut"] = t.into();
            }
            if c.bgp {
                args["bgp"] = true.into();
            }
            let entry: LoadBalancerEntry = serde_json::from_value(
                serde_json::json!({"serviceArguments": args, "endpoints": eps}),
            )
            .map_err(|e| usage(format!("cannot build the request: {e}")))?;
            out.push(Call {
                method: Method::Post,
                path: format!("{BASE}/config/loadbalancer"),
                body: Some(Body::Lb(Box::new(entry))),
                what: format!("create lb {}/{proto}", host_port(&vip, port)),
            });
        }
    }
    Ok(out)
}

fn delete_calls(d: &DeleteLb) -> Result<Vec<Call>, UsageError> {
    if d.all {
        return Ok(vec![Call {
            method: Method::Delete,
            path: format!("{BASE}/config/loadbalancer/all"),
            body: None,
            what: "delete lb --all".into(),
        }]);
    }
    let vip = ip(d.vip.as_deref().unwrap_or_default(), "the VIP")?;
    let mut out = Vec::new();
    for (proto, ports) in [("tcp", &d.tcp), ("udp", &d.udp), ("sctp", &d.sctp)] {
        for &port in ports.iter() {
            out.push(Call {
                method: Method::Delete,
                path: format!(
                    "{BASE}/config/loadbalancer/externalipaddress/{vip}/port/{port}/protocol/{proto}"
                ),
                body: None,
                what: format!("delete lb {}/{proto}", host_port(&vip, port)),
            });
        }
    }
    Ok(out)
}

/// loxilb's numbers for `mode` and `sel`, by the names loxicmd and loxilb's docs use.
const MODES: &[(&str, i64)] = &[
    ("dnat", 0),
    ("default", 0),
    ("onearm", 1),
    ("fullnat", 2),
    ("dsr", 3),
    ("fullproxy", 4),
    ("hostonearm", 5),
];
const SELECTIONS: &[(&str, i64)] = &[
    ("rr", 0),
    ("hash", 1),
    ("priority", 2),
    ("persist", 3),
    ("lc", 4),
    ("n2", 5),
    ("n3", 6),
];

/// The name loxilb's number `n` has in `table`, for listings; the number itself if unknown.
pub fn name_of(table: &[(&'static str, i64)], n: i64) -> String {
    table
        .iter()
        .find(|(_, v)| *v == n)
        .map_or_else(|| n.to_string(), |(name, _)| (*name).to_string())
}

pub fn mode_name(n: i64) -> String {
    name_of(MODES, n)
}

pub fn select_name(n: i64) -> String {
    name_of(SELECTIONS, n)
}

fn number_of(flag: &str, value: &str, table: &[(&str, i64)]) -> Result<i64, UsageError> {
    if let Ok(n) = value.parse::<i64>() {
        return Ok(n);
    }
    let lower = value.to_ascii_lowercase();
    table
        .iter()
        .find(|(name, _)| *name == lower)
        .map(|(_, n)| *n)
        .ok_or_else(|| {
            let names: Vec<&str> = table.iter().map(|(n, _)| *n).collect();
            usage(format!(
                "{flag} {value:?} is not one of {} (or loxilb's number)",
                names.join(", ")
            ))
        })
}

/// An IPv4 or IPv6 address; an IPv6 one may be written in brackets (`[fd00::1]`).
fn ip(text: &str, what: &str) -> Result<IpAddr, UsageError> {
    let bare = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    bare.parse()
        .map_err(|_| usage(format!("{what} {text:?} is not an IP address")))
}

fn integer(text: &str, what: &str) -> Result<i64, UsageError> {
    text.trim()
        .parse()
        .map_err(|_| usage(format!("{what} {text:?} is not a number")))
}

/// `IP:WEIGHT`, split at the last colon so that IPv6 endpoints work as in loxicmd
/// (`fd00::1:1` is fd00::1 with weight 1); `[IPv6]:WEIGHT` says the same unambiguously.
fn endpoint(text: &str) -> Result<(String, i64), UsageError> {
    let (addr, weight) = text.rsplit_once(':').ok_or_else(|| {
        usage(format!(
            "endpoint {text:?} has no weight: write IP:WEIGHT, e.g. 198.18.31.1:1 or \
             [fd00:31::1]:1"
        ))
    })?;
    let addr = ip(addr, "the endpoint").map_err(|e| {
        usage(format!(
            "{}; write IP:WEIGHT, an IPv6 address best in brackets: [fd00:31::1]:1",
            e.0
        ))
    })?;
    Ok((addr.to_string(), integer(weight, "the endpoint weight")?))
}

/// `PORT:TARGET`; a lone `PORT` means the same target port.
fn port_pair(proto: &str, text: &str) -> Result<(i64, i64), UsageError> {
    let (port, target) = text.split_once(':').unwrap_or((text, text));
    Ok((
        integer(port, &format!("--{proto} port"))?,
        integer(target, &format!("--{proto} target port"))?,
    ))
}

fn host_port(ip: &IpAddr, port: i64) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("oxlbctl").chain(args.iter().copied()))
    }

    fn calls_of(args: &[&str]) -> Result<Vec<Call>, UsageError> {
        calls(&parse(args).expect("parses").command)
    }

    fn bodies(args: &[&str]) -> Vec<Value> {
        calls_of(args)
            .unwrap()
            .into_iter()
            .map(|c| serde_json::to_value(c.body.expect("a body")).unwrap())
            .collect()
    }

    #[test]
    fn create_lb_in_loxicmd_syntax_becomes_one_loxilb_entry() {
        let b = bodies(&[
            "create",
            "lb",
            "198.18.100.1",
            "--tcp=2020:8080",
            "--endpoints=198.18.31.1:1,198.18.31.2:2",
            "--name",
            "web",
        ]);
        assert_eq!(
            b,
            [json!({
                "serviceArguments": {"externalIP": "198.18.100.1", "port": 2020, "protocol": "tcp", "name": "web"},
                "endpoints": [
                    {"endpointIP": "198.18.31.1", "targetPort": 8080, "weight": 1},
                    {"endpointIP": "198.18.31.2", "targetPort": 8080, "weight": 2},
                ],
                "secondaryIPs": [],
                "allowedSources": [],
            })]
        );
    }

    #[test]
    fn an_ipv6_vip_takes_ipv4_endpoints_and_bracketed_or_bare_ipv6_ones() {
        let calls = calls_of(&[
            "create",
            "lb",
            "fd00:100::1",
            "--tcp=80:8080",
            "--endpoints=198.18.31.1:1,[fd00:31::2]:2,fd00:31::3:3",
            "--mode",
            "fullnat",
        ])
        .unwrap();
        assert_eq!(calls[0].what, "create lb [fd00:100::1]:80/tcp");
        let body = serde_json::to_value(calls[0].body.as_ref().expect("a body")).unwrap();
        assert_eq!(body["serviceArguments"]["externalIP"], "fd00:100::1");
        assert_eq!(body["serviceArguments"]["mode"], 2);
        let eps: Vec<(&str, i64)> = body["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["endpointIP"].as_str().unwrap(),
                    e["weight"].as_i64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            eps,
            [("198.18.31.1", 1), ("fd00:31::2", 2), ("fd00:31::3", 3)]
        );
    }

    #[test]
    fn an_ipv6_vip_in_brackets_is_deleted_by_its_bare_address() {
        let calls = calls_of(&["delete", "lb", "[fd00:100::1]", "--udp=53"]).unwrap();
        assert_eq!(
            calls[0].path,
            "/netlox/v1/config/loadbalancer/externalipaddress/fd00:100::1/port/53/protocol/udp"
        );
        assert_eq!(calls[0].what, "delete lb [fd00:100::1]:53/udp");
    }

    #[test]
    fn an_ipv6_endpoint_without_a_weight_is_a_usage_error_showing_the_bracket_form() {
        let e = calls_of(&[
            "create",
            "lb",
            "fd00:100::1",
            "--tcp=80",
            "--endpoints=[fd00:31::1]",
        ])
        .expect_err("no weight");
        assert!(e.0.contains("[fd00:31::1]:1"), "{}", e.0);
    }

    #[test]
    fn every_port_pair_of_every_protocol_is_its_own_rule_in_order() {
        let calls = calls_of(&[
            "create",
            "lb",
            "198.18.100.1",
            "--tcp=80:8080,443:8443",
            "--udp=53:5353",
            "--endpoints=198.18.31.1:1",
        ])
        .unwrap();
        let what: Vec<&str> = calls.iter().map(|c| c.what.as_str()).collect();
        assert_eq!(
            what,
            [
                "create lb 198.18.100.1:80/tcp",
                "create lb 198.18.100.1:443/tcp",
                "create lb 198.18.100.1:53/udp"
            ]
        );
        let Some(Body::Lb(last)) = calls[2].body.as_ref() else {
            panic!("not a load-balancer entry: {:?}", calls[2].body);
        };
        assert_eq!(last.service_arguments.protocol, "udp");
        assert_eq!(last.endpoints[0].target_port, 5353);
        assert!(calls
            .iter()
            .all(|c| c.method == Method::Post && c.path == "/netlox/v1/config/loadbalancer"));
    }

    #[test]
    fn mode_select_and_timeout_become_loxilbs_numbers() {
        let b = bodies(&[
            "create",
            "lb",
            "198.18.100.1",
            "--tcp=2020:2020",
            "--endpoints=198.18.31.1:1",
            "--mode",
            "dsr",
            "--select",
            "hash",
            "--inatimeout",
            "30",
        ]);
        let args = &b[0]["serviceArguments"];
        assert_eq!((&args["mode"], &args["sel"]), (&json!(3), &json!(1)));
        assert_eq!(args["inactiveTimeOut"], 30);
    }

    #[test]
    fn values_the_appliance_judges_are_sent_as_given() {
        // Port 0, a selection the appliance may not implement, an out-of-range weight and a
        // numeric mode: the appliance answers for them, not the CLI.
        let b = bodies(&[
            "create",
            "lb",
            "198.18.100.1",
            "--tcp=0:8080",
            "--endpoints=198.18.31.1:300",
            "--select=lc",
            "--mode=7",
        ]);
        let args = &b[0]["serviceArguments"];
        assert_eq!(args["port"], 0);
        assert_eq!((&args["sel"], &args["mode"]), (&json!(4), &json!(7)));
        assert_eq!(b[0]["endpoints"][0]["weight"], 300);
    }

    #[test]
    fn an_unknown_mode_name_is_a_usage_error_listing_the_names() {
        let err = calls_of(&[
            "create",
            "lb",
            "198.18.100.1",
            "--tcp=1:1",
            "--endpoints=198.18.31.1:1",
            "--mode=bogus",
        ])
        .unwrap_err();
        assert!(err.0.contains("dnat, default, onearm"), "{err}");
    }

    #[test]
    fn malformed_values_are_usage_errors_naming_them() {
        for (args, needle) in [
            (vec!["--tcp=80:x", "--endpoints=198.18.31.1:1"], "\"x\""),
            (vec!["--tcp=80", "--endpoints=198.18.31.1"], "no weight"),
            (vec!["--tcp=80", "--endpoints=host:1"], "\"host\""),
        ] {
            let mut all = vec!["create", "lb", "198.18.100.1"];
            all.extend(args);
            let err = calls_of(&all).unwrap_err();
            assert!(err.0.contains(needle), "{all:?}: {err}");
        }
        let err = calls_of(&[
            "create",
            "lb",
            "vip",
            "--tcp=1",
            "--endpoints=198.18.31.1:1",
        ])
        .unwrap_err();
        assert!(err.0.contains("the VIP \"vip\""), "{err}");
    }

    #[test]
    fn a_lone_port_targets_the_same_port() {
        let b = bodies(&[
            "create",
            "lb",
            "198.18.100.1",
            "--udp=53",
            "--endpoints=198.18.31.1:1",
        ]);
        assert_eq!(b[0]["serviceArguments"]["port"], 53);
        assert_eq!(b[0]["endpoints"][0]["targetPort"], 53);
    }

    #[test]
    fn create_needs_a_port_and_endpoints() {
        for args in [
            vec!["create", "lb", "198.18.100.1", "--endpoints=198.18.31.1:1"],
            vec!["create", "lb", "198.18.100.1", "--tcp=80:80"],
            vec!["create", "lb", "--tcp=80:80", "--endpoints=198.18.31.1:1"],
        ] {
            let err = parse(&args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn delete_lb_names_each_key_in_loxilbs_path() {
        let calls =
            calls_of(&["delete", "lb", "198.18.100.1", "--tcp=2020,80", "--udp=53"]).unwrap();
        let paths: Vec<&str> = calls.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/netlox/v1/config/loadbalancer/externalipaddress/198.18.100.1/port/2020/protocol/tcp",
                "/netlox/v1/config/loadbalancer/externalipaddress/198.18.100.1/port/80/protocol/tcp",
                "/netlox/v1/config/loadbalancer/externalipaddress/198.18.100.1/port/53/protocol/udp",
            ]
        );
        assert!(calls
            .iter()
            .all(|c| c.method == Method::Delete && c.body.is_none()));
    }

    #[test]
    fn delete_all_is_one_call_and_excludes_a_vip() {
        let calls = calls_of(&["delete", "lb", "--all"]).unwrap();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].path, "/netlox/v1/config/loadbalancer/all");
        assert_eq!(calls[0].method, Method::Delete);
        assert!(parse(&["delete", "lb", "198.18.100.1", "--all"]).is_err());
        assert!(parse(&["delete", "lb", "198.18.100.1"]).is_err());
        assert!(parse(&["delete", "lb"]).is_err());
    }

    #[test]
    fn output_and_api_are_accepted_before_or_after_the_command() {
        let a = parse(&["-o", "json", "get", "lb"]).unwrap();
        let b = parse(&["get", "lb", "-o", "json", "--api", "http://198.18.0.1:1"]).unwrap();
        assert_eq!((a.output, b.output), (Output::Json, Output::Json));
        assert_eq!(a.api, DEFAULT_API);
        assert_eq!(b.api, "http://198.18.0.1:1");
        assert_eq!(
            calls(&parse(&["get", "status"]).unwrap().command).unwrap()[0].path,
            "/netlox/v1/"
        );
    }

    #[test]
    fn get_status_detail_and_get_ep_ask_for_oxlbs_status_and_the_endpoint_listing() {
        let path = |args: &[&str]| {
            calls(&parse(args).unwrap().command).unwrap()[0]
                .path
                .clone()
        };
        assert_eq!(path(&["get", "status", "--detail"]), "/netlox/v1/status");
        assert_eq!(path(&["get", "status"]), "/netlox/v1/");
        for what in ["ep", "endpoint"] {
            assert_eq!(path(&["get", what]), "/netlox/v1/config/endpoint/all");
        }
    }

    #[test]
    fn token_and_ca_files_are_global_options() {
        let c = parse(&["get", "lb", "--token-file", "/t", "--ca-file", "/ca.pem"]).unwrap();
        assert_eq!(c.token_file.as_deref(), Some(std::path::Path::new("/t")));
        assert_eq!(c.ca_file.as_deref(), Some(std::path::Path::new("/ca.pem")));
    }

    #[test]
    fn get_ct_and_get_conntrack_ask_for_the_conntrack_listing() {
        for what in ["ct", "conntrack"] {
            let c = calls(&parse(&["get", what]).unwrap().command).unwrap();
            assert_eq!(c.len(), 1);
            assert_eq!(c[0].path, "/netlox/v1/config/conntrack/all");
            assert_eq!(c[0].method, Method::Get);
        }
    }

    #[test]
    fn get_and_set_cistate_list_and_post_loxilbs_body() {
        let get = calls_of(&["get", "cistate"]).unwrap();
        assert_eq!(
            (get[0].method, get[0].path.as_str()),
            (Method::Get, "/netlox/v1/config/cistate/all")
        );
        let set = calls_of(&[
            "set",
            "cistate",
            "llb-inst0",
            "--state",
            "MASTER",
            "--vip",
            "198.18.100.1",
        ])
        .unwrap();
        assert_eq!(
            (set[0].method, set[0].path.as_str()),
            (Method::Post, "/netlox/v1/config/cistate")
        );
        assert_eq!(
            serde_json::to_value(set[0].body.as_ref().unwrap()).unwrap(),
            serde_json::json!({"instance": "llb-inst0", "state": "MASTER", "vip": "198.18.100.1"})
        );
        assert!(
            parse(&["set", "cistate", "llb-inst0"]).is_err(),
            "--state is required"
        );
    }

    #[test]
    fn get_and_set_loglevel_read_and_replace_the_filter_with_its_json_body() {
        let get = calls_of(&["get", "loglevel"]).unwrap();
        assert_eq!(
            (get[0].method, get[0].path.as_str(), &get[0].body),
            (Method::Get, "/netlox/v1/config/loglevel", &None)
        );
        let set = calls_of(&["set", "loglevel", "debug,oxlb_dataplane=trace"]).unwrap();
        assert_eq!(set.len(), 1);
        assert_eq!(set[0].method, Method::Put);
        assert_eq!(set[0].path, "/netlox/v1/config/loglevel");
        assert_eq!(
            serde_json::to_value(set[0].body.as_ref().unwrap()).unwrap(),
            json!({"filter": "debug,oxlb_dataplane=trace"})
        );
        assert!(parse(&["set", "loglevel"]).is_err(), "a filter is required");
    }

    #[test]
    fn listings_name_modes_and_selections_and_keep_unknown_numbers() {
        assert_eq!(mode_name(2), "fullnat");
        assert_eq!(select_name(0), "rr");
        assert_eq!(mode_name(42), "42");
    }

    #[test]
    fn bgp_commands_become_loxilbs_bgp_calls() {
        let c = calls_of(&[
            "set",
            "bgp",
            "global",
            "--as",
            "65001",
            "--router-id",
            "198.18.0.1",
        ])
        .unwrap();
        assert_eq!(
            (c[0].method, c[0].path.as_str()),
            (Method::Post, "/netlox/v1/config/bgp/global")
        );
        assert_eq!(
            serde_json::to_value(c[0].body.as_ref().unwrap()).unwrap(),
            json!({"localAs": 65001, "routerId": "198.18.0.1"})
        );
        let c = calls_of(&[
            "set",
            "bgp",
            "global",
            "--as",
            "65001",
            "--router-id",
            "198.18.0.1",
            "--next-hop",
            "fd00:18::1",
        ])
        .unwrap();
        assert_eq!(
            serde_json::to_value(c[0].body.as_ref().unwrap()).unwrap()["nextHopIPv6"],
            "fd00:18::1"
        );
        assert!(calls_of(&[
            "set",
            "bgp",
            "global",
            "--as",
            "1",
            "--router-id",
            "1.1.1.1",
            "--next-hop",
            "1.1.1.1",
            "--next-hop",
            "2.2.2.2",
        ])
        .is_err());
        let b = bodies(&[
            "create",
            "bgpneigh",
            "198.18.1.2",
            "65002",
            "--remote-port",
            "1179",
            "--multihop",
        ]);
        assert_eq!(
            b,
            [
                json!({"ipAddress": "198.18.1.2", "remoteAs": 65002, "remotePort": 1179, "setMultiHop": true})
            ]
        );
        let c = calls_of(&["get", "bgpneigh"]).unwrap();
        assert_eq!(
            (c[0].method, c[0].path.as_str()),
            (Method::Get, "/netlox/v1/config/bgp/neigh/all")
        );
        let c = calls_of(&["delete", "bgpneigh", "198.18.1.2"]).unwrap();
        assert_eq!(
            (c[0].method, c[0].path.as_str()),
            (Method::Delete, "/netlox/v1/config/bgp/neigh/198.18.1.2")
        );
        let c = calls_of(&["delete", "bgpneigh", "fd00::2", "--remote-as", "65002"]).unwrap();
        assert_eq!(
            c[0].path,
            "/netlox/v1/config/bgp/neigh/fd00::2?remoteAs=65002"
        );
        assert!(calls_of(&["delete", "bgpneigh", "../all"]).is_err());
        let b = bodies(&[
            "create",
            "lb",
            "198.18.100.1",
            "--tcp=80:8080",
            "--endpoints=198.18.31.1:1",
            "--bgp",
        ]);
        assert_eq!(b[0]["serviceArguments"]["bgp"], true);
    }
}
