//! The appliances' own BGP as kube-loxilb's flags ask for it (`--setBGP`, `--listenBGPPort`,
//! `--extBGPPeers`, `--eBGPMultiHop`): every appliance gets its global configuration (local
//! AS, its own address as router id, next-hop-self, the listen port), the external peers, and,
//! when the appliances are discovered, every other appliance as an iBGP neighbour. Sent when an
//! appliance joins and again every resync period; a refusal is logged, counted and retried with
//! backoff, and nothing says it worked before the appliance accepted it.

use crate::appliance::{Appliance, ApplianceError};
use crate::crds::BgpPeerSpec;
use crate::reconcile::{backoff, Context};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How often the configuration is compared with what the appliances acknowledged.
const ROUND: Duration = Duration::from_secs(1);

/// BGP's port, which kube-loxilb sends when `--listenBGPPort` is not given.
pub const BGP_PORT: u16 = 179;

/// A bad `--extBGPPeers` entry (kube-loxilb refuses the same ones at start).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerFlagError {
    #[error("--extBGPPeers needs --setBGP (the local AS)")]
    NoLocalAs,
    #[error("--extBGPPeers entry {0:?} is not IP:ASN (an IPv4 address and an AS number from 1 to 4294967295)")]
    Entry(String),
}

/// What the flags ask for.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// `--setBGP`.
    pub local_as: u16,
    /// `--listenBGPPort`, 179 when not given.
    pub listen_port: u16,
    /// `--eBGPMultiHop`: multi-hop sessions with the external peers.
    pub multi_hop: bool,
    /// `--extBGPPeers`: (address, AS).
    pub external: Vec<(IpAddr, u32)>,
    /// Appliances peer with each other (iBGP). kube-loxilb does so only for appliances it
    /// discovers (no `--loxiURL`): fixed ones are assumed to have their own peering.
    pub mesh: bool,
    /// The operator's own Pod (from `POD_NAME` / `POD_NAMESPACE`): refusals become Warning
    /// Events on it. Flags belong to no other object.
    pub report_to: Option<ObjectReference>,
}

/// The operator's Pod, when the Deployment passes its name and namespace.
pub fn own_pod(name: Option<String>, namespace: Option<String>) -> Option<ObjectReference> {
    Some(ObjectReference {
        api_version: Some("v1".to_owned()),
        kind: Some("Pod".to_owned()),
        name: Some(name.filter(|n| !n.is_empty())?),
        namespace: Some(namespace.filter(|n| !n.is_empty())?),
        ..ObjectReference::default()
    })
}

/// Parses `--extBGPPeers` (`IP:ASN,...`) as kube-loxilb does: the text before the only `:` is
/// the address, so an IPv6 peer cannot be written.
pub fn parse_external(list: &str, local_as: u16) -> Result<Vec<(IpAddr, u32)>, PeerFlagError> {
    let entries: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    if !entries.is_empty() && local_as == 0 {
        return Err(PeerFlagError::NoLocalAs);
    }
    entries
        .into_iter()
        .map(|e| {
            let bad = || PeerFlagError::Entry(e.to_owned());
            let (ip, asn) = e.split_once(':').ok_or_else(bad)?;
            let ip: IpAddr = ip.parse().map_err(|_| bad())?;
            let asn: u32 = asn.parse().map_err(|_| bad())?;
            if asn == 0 {
                return Err(bad());
            }
            Ok((ip, asn))
        })
        .collect()
}

/// The body of loxilb's `POST /netlox/v1/config/bgp/global`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GlobalConfig {
    pub local_as: u32,
    pub router_id: String,
    pub listen_port: u16,
    pub set_next_hop_self: bool,
}

/// One thing configured on one appliance.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Item {
    Global(GlobalConfig),
    Neighbor(BgpPeerSpec),
}

impl Item {
    /// Items with the same key replace each other (loxilb keys neighbours by address).
    fn key(&self) -> String {
        match self {
            Item::Global(_) => "global".to_owned(),
            Item::Neighbor(n) => format!("neighbor {}", n.ip_address),
        }
    }

    fn describe(&self) -> String {
        match self {
            Item::Global(g) => format!(
                "BGP global configuration (AS {}, router id {}, port {})",
                g.local_as, g.router_id, g.listen_port
            ),
            Item::Neighbor(n) => format!("BGP neighbour {} AS {}", n.ip_address, n.remote_as),
        }
    }
}

/// What `appliance` must hold, global configuration first. `members` are the hosts of every
/// appliance in the fleet. An appliance whose host is not an IPv4 address cannot have a router
/// id: Err says so.
fn desired_items(settings: &Settings, host: &str, members: &[String]) -> Result<Vec<Item>, String> {
    let router_id: Ipv4Addr = host.parse().map_err(|_| {
        format!("its host {host} is not an IPv4 address, which BGP needs as the router id")
    })?;
    let mut items = vec![Item::Global(GlobalConfig {
        local_as: u32::from(settings.local_as),
        router_id: router_id.to_string(),
        listen_port: settings.listen_port,
        set_next_hop_self: true,
    })];
    if settings.mesh {
        for m in members.iter().filter(|m| *m != host) {
            if m.parse::<IpAddr>().is_ok() {
                items.push(Item::Neighbor(BgpPeerSpec {
                    ip_address: m.clone(),
                    remote_as: i64::from(settings.local_as),
                    remote_port: Some(i64::from(settings.listen_port)),
                    set_multi_hop: Some(false),
                }));
            }
        }
    }
    for (ip, asn) in &settings.external {
        items.push(Item::Neighbor(BgpPeerSpec {
            ip_address: ip.to_string(),
            remote_as: i64::from(*asn),
            remote_port: Some(i64::from(BGP_PORT)),
            set_multi_hop: Some(settings.multi_hop),
        }));
    }
    Ok(items)
}

/// One item on one appliance.
#[derive(Debug, Clone)]
struct State {
    sent: Item,
    /// The appliance accepted `sent` (or may have: a neighbour posted without an answer).
    held: bool,
    failures: u32,
    not_before: Instant,
    accepted_at: Option<Instant>,
}

/// Keeps every appliance's BGP configuration as the flags ask until the task is dropped.
pub async fn run(ctx: Arc<Context>, settings: Settings, refresh: Duration) {
    // (appliance URL, item key) -> state
    let mut states: HashMap<(String, String), State> = HashMap::new();
    let mut reported: HashMap<String, String> = HashMap::new();
    let mut tick = tokio::time::interval(ROUND);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let appliances = ctx.appliances.snapshot();
        // An appliance no longer in the fleet gets no more calls; if it returns, it is
        // configured from scratch.
        states.retain(|(url, _), _| appliances.iter().any(|a| a.url() == url));
        let members: Vec<String> = appliances.iter().map(|a| a.host().to_owned()).collect();
        for a in appliances.iter() {
            match desired_items(&settings, a.host(), &members) {
                Ok(items) => round(a, &items, &mut states, &ctx, &settings, refresh).await,
                Err(why) => {
                    if reported.get(a.url()) != Some(&why) {
                        log::warn!("appliance {}: no BGP configuration sent: {why}", a.url());
                        reported.insert(a.url().to_owned(), why);
                    }
                }
            }
        }
    }
}

async fn round(
    a: &Appliance,
    items: &[Item],
    states: &mut HashMap<(String, String), State>,
    ctx: &Context,
    settings: &Settings,
    refresh: Duration,
) {
    let now = Instant::now();
    // Neighbours no longer wanted (an appliance that left the mesh) go first.
    let stale: Vec<(String, String)> = states
        .keys()
        .filter(|(url, k)| url == a.url() && !items.iter().any(|i| &i.key() == k))
        .cloned()
        .collect();
    for k in stale {
        let st = states.get_mut(&k).expect("listed above");
        let Item::Neighbor(n) = st.sent.clone() else {
            states.remove(&k);
            continue;
        };
        if !st.held {
            states.remove(&k);
            continue;
        }
        if now < st.not_before {
            continue;
        }
        match a.delete_bgp_neighbor(&n).await {
            Ok(()) => {
                log::info!(
                    "appliance {}: BGP neighbour {} AS {} removed",
                    a.url(),
                    n.ip_address,
                    n.remote_as
                );
                states.remove(&k);
            }
            Err(e) => failed(a, st, &e, ctx, settings, now, "removing").await,
        }
    }
    for item in items {
        let k = (a.url().to_owned(), item.key());
        let st = states.entry(k).or_insert_with(|| State {
            sent: item.clone(),
            held: false,
            failures: 0,
            not_before: now,
            accepted_at: None,
        });
        let global = matches!(item, Item::Global(_));
        let fresh = st.sent == *item
            && st.held
            && st
                .accepted_at
                .is_some_and(|t| now.duration_since(t) < refresh);
        if fresh {
            continue;
        }
        if now < st.not_before {
            if global && !st.held {
                // Neighbours wait for the global configuration they belong to. Once it was
                // accepted, a refused re-send (every resync) holds nothing back.
                return;
            }
            continue;
        }
        st.sent = item.clone();
        let r = match item {
            Item::Global(g) => a.set_bgp_global(g).await,
            Item::Neighbor(n) => a.add_bgp_neighbor(n).await,
        };
        match r {
            Ok(()) => {
                if !st.held || st.failures > 0 {
                    log::info!("appliance {}: {} accepted", a.url(), item.describe());
                }
                st.held = true;
                st.failures = 0;
                st.accepted_at = Some(now);
            }
            Err(e) => {
                // A neighbour whose post got no answer may be there: remove it if unwanted.
                if e.status().is_none() && !global {
                    st.held = true;
                }
                st.accepted_at = None;
                failed(a, st, &e, ctx, settings, now, "sending").await;
                if global && !st.held {
                    return;
                }
            }
        }
    }
}

async fn failed(
    a: &Appliance,
    st: &mut State,
    e: &ApplianceError,
    ctx: &Context,
    settings: &Settings,
    now: Instant,
    verb: &str,
) {
    st.failures += 1;
    let delay = backoff(st.failures - 1);
    st.not_before = now + delay;
    *ctx.error_counts
        .lock()
        .expect("counts lock")
        .entry("bgp_refused")
        .or_insert(0) += 1;
    let why = match e.status() {
        Some(404 | 405) => "; this appliance has no BGP API",
        _ => "",
    };
    let note = format!(
        "appliance {}: {verb} {} failed: {e}{why}; not configured, retrying in {} s",
        a.url(),
        st.sent.describe(),
        delay.as_secs()
    );
    log::warn!("{note}");
    if let Some(pod) = &settings.report_to {
        let ev = Event {
            type_: EventType::Warning,
            reason: "ApplianceRefused".to_owned(),
            note: Some(note),
            action: "ConfigureBGP".to_owned(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&ev, pod).await {
            log::warn!("publishing an event failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(mesh: bool) -> Settings {
        Settings {
            local_as: 64512,
            listen_port: BGP_PORT,
            multi_hop: true,
            external: parse_external("198.18.0.9:65001", 64512).unwrap(),
            mesh,
            report_to: None,
        }
    }

    #[test]
    fn external_peers_are_ip_colon_asn_and_need_a_local_as() {
        assert_eq!(
            parse_external(" 198.18.0.9:65001, 198.18.0.10:4200000000 ", 64512).unwrap(),
            vec![
                ("198.18.0.9".parse().unwrap(), 65001),
                ("198.18.0.10".parse().unwrap(), 4_200_000_000)
            ]
        );
        assert_eq!(parse_external("", 0).unwrap(), vec![]);
        assert_eq!(
            parse_external("198.18.0.9:65001", 0),
            Err(PeerFlagError::NoLocalAs)
        );
        for bad in [
            "198.18.0.9",
            "198.18.0.9:0",
            "peer:65001",
            "fd00::1:65001",
            "198.18.0.9:x",
        ] {
            assert!(parse_external(bad, 1).is_err(), "{bad}");
        }
    }

    #[test]
    fn each_appliance_gets_its_global_config_then_its_mesh_and_external_neighbours() {
        let members = vec!["198.18.0.1".to_owned(), "198.18.0.2".to_owned()];
        let items = desired_items(&settings(true), "198.18.0.1", &members).unwrap();
        let bodies: Vec<serde_json::Value> = items
            .iter()
            .map(|i| match i {
                Item::Global(g) => serde_json::to_value(g).unwrap(),
                Item::Neighbor(n) => serde_json::to_value(n).unwrap(),
            })
            .collect();
        assert_eq!(
            bodies,
            vec![
                serde_json::json!({"localAs": 64512, "routerId": "198.18.0.1", "listenPort": 179, "setNextHopSelf": true}),
                serde_json::json!({"ipAddress": "198.18.0.2", "remoteAs": 64512, "remotePort": 179, "setMultiHop": false}),
                serde_json::json!({"ipAddress": "198.18.0.9", "remoteAs": 65001, "remotePort": 179, "setMultiHop": true}),
            ]
        );
        // Without discovery there is no mesh.
        let items = desired_items(&settings(false), "198.18.0.1", &members).unwrap();
        assert_eq!(items.len(), 2);
        assert!(desired_items(&settings(false), "lb.example", &members).is_err());
    }

    #[test]
    fn refusals_are_reported_on_the_operators_pod_when_it_is_named() {
        let pod = own_pod(Some("op-1".into()), Some("kube-system".into())).unwrap();
        assert_eq!(
            (
                pod.kind.as_deref(),
                pod.name.as_deref(),
                pod.namespace.as_deref()
            ),
            (Some("Pod"), Some("op-1"), Some("kube-system"))
        );
        assert!(own_pod(Some("op-1".into()), None).is_none());
        assert!(own_pod(Some(String::new()), Some("kube-system".into())).is_none());
    }
}
