//! BGPPeerService objects (`--enableBGPCRDs`): each peer is added to every appliance through
//! loxilb's BGP neighbour API and removed when its object goes. A refusal is never taken for
//! success: it becomes a Warning Event on the object and a log line, and is retried with
//! backoff until the appliance accepts.

use crate::appliance::{Appliance, ApplianceError};
use crate::crds::{BGPPeerService, BgpPeerSpec};
use crate::reconcile::{backoff, Context};
use kube::runtime::events::{Event, EventType};
use kube::{Client, Resource, ResourceExt};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How often the peers are compared with what the appliances acknowledged, besides on every
/// change of the objects; also the finest retry granularity.
const ROUND: Duration = Duration::from_secs(1);

/// Why a BGPPeerService cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    #[error("ipAddress {0:?} is not an IP address")]
    Address(String),
    #[error("remoteAs {0} is out of range: use 1 to 4294967295")]
    RemoteAs(i64),
    #[error("remotePort {0} is out of range: use 1 to 65535")]
    RemotePort(i64),
}

/// Checks a peer before any appliance sees it.
pub fn validate(spec: &BgpPeerSpec) -> Result<(), PeerError> {
    if spec.ip_address.parse::<IpAddr>().is_err() {
        return Err(PeerError::Address(spec.ip_address.clone()));
    }
    if !(1..=i64::from(u32::MAX)).contains(&spec.remote_as) {
        return Err(PeerError::RemoteAs(spec.remote_as));
    }
    if let Some(p) = spec.remote_port.filter(|p| !(1..=65535).contains(p)) {
        return Err(PeerError::RemotePort(p));
    }
    Ok(())
}

/// Whether an appliance may hold a neighbour this task sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    /// The appliance accepted it.
    Yes,
    /// The request's outcome is unknown (no answer): a removal must be sent to be sure.
    Maybe,
    /// Never accepted.
    No,
}

/// One peer on one appliance.
#[derive(Debug, Clone)]
struct PeerState {
    /// What was last sent (or is to be sent).
    sent: BgpPeerSpec,
    held: Held,
    /// Consecutive failures, for the backoff.
    failures: u32,
    not_before: Instant,
    /// When the appliance last accepted it; it is sent again after `refresh`, so an appliance
    /// that restarted empty gets its peers back.
    accepted_at: Option<Instant>,
}

/// The per-(appliance URL, object name) state of every peer this task sent.
#[derive(Debug, Default)]
struct Peers(HashMap<(String, String), PeerState>);

/// Watches BGPPeerService objects until the task is dropped.
pub async fn run(client: Client, ctx: Arc<Context>, refresh: Duration) {
    let (store, changes) = kube_watcher::watch::store_changes::<BGPPeerService>(client);
    let mut changes = Box::pin(changes);
    let mut peers = Peers::default();
    let mut invalid_reported: HashMap<String, String> = HashMap::new();
    let mut tick = tokio::time::interval(ROUND);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            c = futures::StreamExt::next(&mut changes) => if c.is_none() { return },
            _ = tick.tick() => {}
        }
        let objects = store.state();
        let mut desired: BTreeMap<String, Arc<BGPPeerService>> = BTreeMap::new();
        for o in objects {
            let name = o.name_any();
            match validate(&o.spec) {
                Ok(()) => {
                    invalid_reported.remove(&name);
                    desired.insert(name, o);
                }
                Err(e) => {
                    let version = o.resource_version().unwrap_or_default();
                    if invalid_reported.get(&name) != Some(&version) {
                        invalid_reported.insert(name.clone(), version);
                        log::warn!("BGPPeerService {name}: {e}");
                        publish(&ctx, &o, "InvalidPeer", e.to_string()).await;
                    }
                }
            }
        }
        let appliances = ctx.appliances.snapshot();
        // An appliance no longer in the fleet gets no more calls (LoxiURL deleted).
        peers
            .0
            .retain(|(url, _), _| appliances.iter().any(|a| a.url() == url));
        for a in appliances.iter() {
            round(a, &desired, &mut peers, &ctx, refresh).await;
        }
    }
}

/// Brings one appliance's neighbours in line with `desired`, as far as backoff allows.
async fn round(
    a: &Appliance,
    desired: &BTreeMap<String, Arc<BGPPeerService>>,
    peers: &mut Peers,
    ctx: &Context,
    refresh: Duration,
) {
    let now = Instant::now();
    // Removals first: an object renamed with the same address must not be deleted after
    // its new name added it.
    let stale: Vec<(String, String)> = peers
        .0
        .keys()
        .filter(|(url, name)| url == a.url() && !desired.contains_key(name))
        .cloned()
        .collect();
    for k in stale {
        let st = peers.0.get_mut(&k).expect("listed above");
        if st.held == Held::No {
            peers.0.remove(&k);
            continue;
        }
        if now < st.not_before {
            continue;
        }
        match a.delete_bgp_neighbor(&st.sent).await {
            Ok(()) => {
                log::info!(
                    "appliance {}: BGP neighbour {} removed ({} deleted)",
                    a.url(),
                    st.sent.ip_address,
                    k.1
                );
                peers.0.remove(&k);
            }
            Err(e) => {
                // The object is gone: a log line is all that can say it.
                st.failures += 1;
                st.not_before = now + backoff(st.failures - 1);
                log::warn!(
                    "BGPPeerService {} (deleted): {e} (retry {})",
                    k.1,
                    st.failures
                );
            }
        }
    }
    for (name, obj) in desired {
        let k = (a.url().to_owned(), name.clone());
        let st = peers.0.entry(k).or_insert_with(|| PeerState {
            sent: obj.spec.clone(),
            held: Held::No,
            failures: 0,
            not_before: now,
            accepted_at: None,
        });
        if now < st.not_before {
            continue;
        }
        if st.sent != obj.spec && st.held != Held::No {
            // The spec changed: the old neighbour goes first (loxilb keys them by address).
            if let Err(e) = a.delete_bgp_neighbor(&st.sent).await {
                failed(a, obj, st, &e, ctx, now).await;
                continue;
            }
            st.held = Held::No;
            st.accepted_at = None;
        }
        let fresh = st.sent == obj.spec
            && st.held == Held::Yes
            && st
                .accepted_at
                .is_some_and(|t| now.duration_since(t) < refresh);
        if fresh {
            continue;
        }
        st.sent = obj.spec.clone();
        match a.add_bgp_neighbor(&obj.spec).await {
            Ok(()) => {
                if st.held != Held::Yes {
                    log::info!(
                        "appliance {}: BGP neighbour {} AS {} added ({name})",
                        a.url(),
                        obj.spec.ip_address,
                        obj.spec.remote_as
                    );
                }
                st.held = Held::Yes;
                st.failures = 0;
                st.accepted_at = Some(now);
            }
            Err(e) => {
                if e.status().is_none() && st.held == Held::No {
                    st.held = Held::Maybe;
                }
                failed(a, obj, st, &e, ctx, now).await;
            }
        }
    }
}

/// Records a refusal: backoff, a log line and a Warning Event on the object.
async fn failed(
    a: &Appliance,
    obj: &BGPPeerService,
    st: &mut PeerState,
    e: &ApplianceError,
    ctx: &Context,
    now: Instant,
) {
    st.failures += 1;
    let delay = backoff(st.failures - 1);
    st.not_before = now + delay;
    let why = match e.status() {
        Some(404 | 405) => {
            "; this appliance has no BGP neighbour API (an oxlb older than its BGP speaker)"
        }
        _ => "",
    };
    let note = format!(
        "{e}{why}; BGP peer not configured on {}, retrying in {} s",
        a.url(),
        delay.as_secs()
    );
    log::warn!("BGPPeerService {}: {note}", obj.name_any());
    publish(ctx, obj, "ApplianceRefused", note).await;
}

async fn publish(ctx: &Context, obj: &BGPPeerService, reason: &str, note: String) {
    let ev = Event {
        type_: EventType::Warning,
        reason: reason.to_owned(),
        note: Some(note),
        action: "AddBGPPeer".to_owned(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &obj.object_ref(&())).await {
        log::warn!("publishing an event failed: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(ip: &str, remote_as: i64, port: Option<i64>) -> BgpPeerSpec {
        BgpPeerSpec {
            ip_address: ip.to_owned(),
            remote_as,
            remote_port: port,
            set_multi_hop: None,
        }
    }

    #[test]
    fn peers_need_an_ip_an_as_number_and_a_port_in_range() {
        validate(&spec("123.123.123.2", 65123, Some(179))).unwrap();
        validate(&spec("2001:db8::1", 4_200_000_000, None)).unwrap();
        assert_eq!(
            validate(&spec("peer-1", 65123, None)),
            Err(PeerError::Address("peer-1".into()))
        );
        assert_eq!(
            validate(&spec("10.0.0.1", 0, None)),
            Err(PeerError::RemoteAs(0))
        );
        assert_eq!(
            validate(&spec("10.0.0.1", 65001, Some(70000))),
            Err(PeerError::RemotePort(70000))
        );
    }
}
