//! The level-triggered reconcile of one Service: compute its full desired state, make every
//! appliance match, keep its address and status, and clean up behind a finalizer. Running it
//! twice in a row changes nothing the second time.

use crate::appliance::ApplianceError;
use crate::fleet::Fleet;
use crate::ipam::{self, Ipam, IpamError, PortKey};
use futures::future::join_all;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::Store;
use kube::{Api, Client, Resource, ResourceExt};
use kube_watcher::{desired, watch, DesiredError, Family, Settings};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The finalizer that keeps a Service until its rules are gone from every appliance and its
/// address is back in the pool (kube-loxilb uses none).
pub const FINALIZER: &str = "oxlb.io/finalizer";

/// Why a reconcile failed; `label` is the metric label.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Desired(#[from] DesiredError),
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error("no appliance accepted the rules: {0}")]
    NoAppliance(String),
    #[error("rules could not be removed from every appliance: {0}")]
    Cleanup(String),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

impl Error {
    pub fn label(&self) -> &'static str {
        match self {
            Error::Desired(DesiredError::Annotation(_)) => "bad_annotation",
            Error::Desired(_) => "bad_service",
            Error::Ipam(_) => "ipam",
            Error::NoAppliance(_) => "no_appliance",
            Error::Cleanup(_) => "cleanup",
            Error::Kube(_) => "kube_api",
        }
    }

    /// A PascalCase Event reason.
    fn reason(&self) -> &'static str {
        match self {
            Error::Desired(DesiredError::Annotation(_)) => "BadAnnotation",
            Error::Desired(_) => "InvalidService",
            Error::Ipam(_) => "AddressNotAllocated",
            Error::NoAppliance(_) => "ApplianceRefused",
            Error::Cleanup(_) => "CleanupFailed",
            Error::Kube(_) => "KubeApiError",
        }
    }
}

/// Everything a reconcile reads or shares.
pub struct Context {
    pub client: Client,
    /// `--loxiURL` appliances and those LoxiURL objects add.
    pub appliances: Fleet,
    pub ipam: Mutex<Ipam>,
    /// Secondary addresses, from the `--externalSecondaryCIDRs` pools; a Service holds its
    /// `n`th one under [`ipam::secondary_holder`]. Not in the status (kube-loxilb shows only
    /// the primary address), so an operator restart finds them in the appliances' rules.
    pub secondary_ipam: Mutex<Ipam>,
    /// The `--externalSecondaryCIDRs` pools, in order.
    pub secondary_pools: Vec<ipam::Pool>,
    pub settings: Settings,
    pub slices: Store<EndpointSlice>,
    pub nodes: Store<Node>,
    pub recorder: Recorder,
    pub resync: Duration,
    /// Consecutive failures per Service, for the retry backoff.
    pub failures: Mutex<HashMap<String, u32>>,
    /// Reconcile errors by label, since start.
    pub error_counts: Mutex<HashMap<&'static str, u64>>,
    /// Per Service, the status this operator last wrote and the resource versions known to be
    /// older than that write. The watch cache may hand a reconcile a copy from before our own
    /// status patch; such a copy must not cause the same write again.
    pub status_written: Mutex<HashMap<String, StatusWrite>>,
}

/// A status write and the object versions it supersedes.
#[derive(Debug, Default)]
pub struct StatusWrite {
    pub ingress: serde_json::Value,
    pub older_versions: Vec<String>,
}

impl StatusWrite {
    /// True if `version` is known to predate a write of exactly `ingress`.
    fn covers(&self, ingress: &serde_json::Value, version: Option<&str>) -> bool {
        &self.ingress == ingress
            && version.is_some_and(|v| self.older_versions.iter().any(|o| o == v))
    }
}

fn key(svc: &Service) -> String {
    format!("{}/{}", svc.namespace().unwrap_or_default(), svc.name_any())
}

/// The address a status ingress shows: an IP, or kube-loxilb's `<zone>-<ip>` host name
/// (an IPv6 address with its colons written as dashes, `llb-3ffe-cafe--1`).
pub fn ingress_ip(ip: Option<&str>, hostname: Option<&str>, zone: &str) -> Option<IpAddr> {
    if let Some(ip) = ip.and_then(|s| s.parse().ok()) {
        return Some(ip);
    }
    let h = hostname?;
    if let Ok(ip) = h.parse() {
        return Some(ip);
    }
    let rest = if zone.is_empty() {
        h
    } else {
        h.strip_prefix(zone)?.strip_prefix('-')?
    };
    rest.parse().ok().or_else(|| {
        rest.replace('-', ":")
            .parse::<std::net::Ipv6Addr>()
            .ok()
            .map(IpAddr::V6)
    })
}

/// Every address in the Service's status, in order.
pub fn status_ips(svc: &Service, zone: &str) -> Vec<IpAddr> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| ingress_ip(i.ip.as_deref(), i.hostname.as_deref(), zone))
        .collect()
}

fn port_keys(svc: &Service) -> Result<Vec<PortKey>, DesiredError> {
    desired::service_ports(svc)
}

/// Re-registers the addresses Services already show (of both families), so a restarted
/// operator neither reshuffles nor hands them out twice. Conflicts are logged and left to
/// the reconcile.
pub fn rebuild(ipam: &mut Ipam, services: &[Service], class: &str, zone: &str) {
    for svc in services.iter().filter(|s| desired::is_ours(s, class)) {
        let Ok(ports) = port_keys(svc) else { continue };
        for ip in status_ips(svc, zone) {
            if let Err(e) = ipam.claim(&key(svc), ip, &ports) {
                log::warn!("{}: keeping its status address {ip} failed: {e}", key(svc));
            }
        }
    }
}

/// The Service's own addresses, one per family it gets (`address_families`), in order: for
/// each, a static request of that family, the one it holds, its status, or a new one. With
/// `PreferDualStack` a second family that cannot be given is logged and left out.
fn addresses(ctx: &Context, svc: &Service) -> Result<Vec<IpAddr>, Error> {
    let k = key(svc);
    let ports = port_keys(svc)?;
    let opts = desired::options(svc).map_err(DesiredError::from)?;
    let (families, all_required) = desired::address_families(svc)?;
    let requested = opts.static_ip.or_else(|| {
        svc.spec
            .as_ref()?
            .load_balancer_ip
            .as_deref()
            .and_then(|s| s.parse().ok())
    });
    if let Some(ip) = requested.filter(|ip| !families.contains(&Family::of(*ip))) {
        let wanted: Vec<&str> = families.iter().map(|f| f.kube_name()).collect();
        return Err(DesiredError::WrongFamily {
            ip,
            family: Family::of(ip),
            wanted: wanted.join(" and "),
        }
        .into());
    }
    let shown = status_ips(svc, &ctx.settings.zone);
    let mut ipam = ctx.ipam.lock().expect("ipam lock");
    for f in [Family::V4, Family::V6] {
        if !families.contains(&f) {
            ipam.release_family(&k, f);
        }
    }
    let mut out = Vec::new();
    for (i, family) in families.iter().copied().enumerate() {
        let got = match requested.filter(|ip| Family::of(*ip) == family) {
            Some(ip) => ipam.claim(&k, ip, &ports).map(|()| ip),
            None => {
                let from_status = shown.iter().find(|ip| Family::of(**ip) == family);
                match (ipam.address_of(&k, family), from_status) {
                    (None, Some(ip)) => ipam.claim(&k, *ip, &ports),
                    _ => Ok(()),
                }
                .and_then(|()| ipam.allocate(&k, family, opts.pool.as_deref(), &ports))
            }
        };
        match got {
            Ok(ip) => out.push(ip),
            Err(e) if i == 0 || all_required => return Err(e.into()),
            Err(e) => {
                log::warn!("{k}: no {family} address (PreferDualStack, so it goes without): {e}")
            }
        }
    }
    Ok(out)
}

/// Frees the secondary addresses `service` holds from the `keep`+1th on.
fn release_secondaries(ctx: &Context, service: &str, keep: usize) {
    let mut sec = ctx.secondary_ipam.lock().expect("secondary ipam lock");
    for n in keep + 1..=ipam::MAX_SECONDARY_POOLS {
        sec.release(&ipam::secondary_holder(service, n));
    }
}

/// Records, for every Service not yet holding them, the secondary addresses its rules on an
/// appliance carry (rule names are `<namespace>_<name>:...`; neither part can hold `_` or
/// `:`), each under the pool that contains it, with the ports of those rules.
fn adopt_secondaries(ctx: &Context, rules: &[oxlb_api::LoadBalancerEntry]) {
    let mut found: BTreeMap<(String, usize, IpAddr), Vec<PortKey>> = BTreeMap::new();
    for r in rules {
        let sa = &r.service_arguments;
        let Some((ns, rest)) = sa.name.split_once('_') else {
            continue;
        };
        let Some((name, _)) = rest.split_once(':') else {
            continue;
        };
        let Ok(port) = u16::try_from(sa.port) else {
            continue;
        };
        for s in &r.secondary_ips {
            let Ok(ip) = s.secondary_ip.parse::<IpAddr>() else {
                continue;
            };
            if let Some(n) = ctx.secondary_pools.iter().position(|p| p.contains(ip)) {
                found
                    .entry((format!("{ns}/{name}"), n + 1, ip))
                    .or_default()
                    .push((port, sa.protocol.clone()));
            }
        }
    }
    let mut sec = ctx.secondary_ipam.lock().expect("secondary ipam lock");
    for ((service, n, ip), ports) in found {
        let holder = ipam::secondary_holder(&service, n);
        if sec.address_of(&holder, Family::of(ip)).is_none() {
            if let Err(e) = sec.claim(&holder, ip, &ports) {
                log::warn!("{service}: keeping secondary address {ip} failed: {e}");
            }
        }
    }
}

/// The Service's secondary (multi-homed SCTP) addresses: those `loxilb.io/secondaryIPs` names,
/// or one from each of the first `loxilb.io/num-secondary-networks` `--externalSecondaryCIDRs`
/// pools, as kube-loxilb gives them (the pool's first address free for the Service's ports).
/// An allocated one is the one held, else after an operator restart the one the appliances'
/// rules for the Service already carry from that pool, else a new one. Those no longer asked
/// for go back to their pools. They must be of the family of `vip`, the Service's address.
async fn secondaries(ctx: &Context, svc: &Service, vip: IpAddr) -> Result<Vec<IpAddr>, Error> {
    let k = key(svc);
    let opts = desired::options(svc).map_err(DesiredError::from)?;
    if opts.secondary_count == 0 {
        release_secondaries(ctx, &k, 0);
    }
    if !opts.secondary_ips.is_empty() {
        if let Some(&secondary) = opts
            .secondary_ips
            .iter()
            .find(|ip| ip.is_ipv4() != vip.is_ipv4())
        {
            return Err(DesiredError::SecondaryFamily { secondary, vip }.into());
        }
        return Ok(opts.secondary_ips);
    }
    let wanted = opts.secondary_count;
    if wanted == 0 {
        return Ok(Vec::new());
    }
    let pools: Vec<ipam::Pool> = ctx.secondary_pools.clone();
    if pools.len() < wanted {
        return Err(IpamError::NotEnoughSecondaryPools {
            wanted,
            pools: pools.len(),
        }
        .into());
    }
    let family = Family::of(vip);
    if let Some(p) = pools[..wanted].iter().find(|p| p.family() != family) {
        return Err(DesiredError::SecondaryFamily {
            secondary: p.first,
            vip,
        }
        .into());
    }
    let ports = port_keys(svc)?;
    let all_held = {
        let sec = ctx.secondary_ipam.lock().expect("secondary ipam lock");
        (1..=wanted).all(|n| {
            sec.address_of(&ipam::secondary_holder(&k, n), family)
                .is_some()
        })
    };
    if !all_held {
        // After a restart the addresses are only in the appliances' rules: adopt what every
        // Service's rules carry before giving out anything, so no Service takes another's.
        for a in ctx.appliances.snapshot().iter() {
            if let Ok(rules) = a.list().await {
                adopt_secondaries(ctx, &rules);
                break;
            }
        }
    }
    release_secondaries(ctx, &k, wanted);
    let mut sec = ctx.secondary_ipam.lock().expect("secondary ipam lock");
    let mut out = Vec::new();
    for (i, pool) in pools[..wanted].iter().enumerate() {
        let holder = ipam::secondary_holder(&k, i + 1);
        out.push(sec.allocate(&holder, family, Some(&pool.name), &ports)?);
    }
    Ok(out)
}

async fn patch_finalizers(
    ctx: &Context,
    svc: &Service,
    finalizers: Vec<String>,
) -> Result<Option<String>, Error> {
    let api: Api<Service> =
        Api::namespaced(ctx.client.clone(), &svc.namespace().unwrap_or_default());
    let patch = json!({"metadata": {
        "finalizers": finalizers,
        "resourceVersion": svc.resource_version(),
    }});
    let updated = api
        .patch(
            &svc.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    Ok(updated.resource_version())
}

/// Removes the Service's rules from every appliance, frees its address, drops the finalizer.
async fn cleanup(ctx: &Context, svc: &Service) -> Result<Action, Error> {
    let prefix = desired::rule_prefix(&svc.namespace().unwrap_or_default(), &svc.name_any());
    let appliances = ctx.appliances.snapshot();
    let results = join_all(appliances.iter().map(|a| a.remove_all(&prefix))).await;
    let errors: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(|e| e.to_string()))
        .collect();
    if !errors.is_empty() {
        return Err(Error::Cleanup(errors.join("; ")));
    }
    ctx.ipam.lock().expect("ipam lock").release(&key(svc));
    release_secondaries(ctx, &key(svc), 0);
    ctx.status_written
        .lock()
        .expect("status lock")
        .remove(&key(svc));
    let rest: Vec<String> = svc
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    if rest.len() != svc.finalizers().len() {
        patch_finalizers(ctx, svc, rest).await?;
    }
    log::info!("{}: rules removed, address released", key(svc));
    Ok(Action::await_change())
}

/// The status ingress kube-loxilb writes: `<zone>-<ip>` as host name (an IPv6 address with
/// dashes for colons, as a host name allows), or the IP without zone.
pub fn ingress_for(zone: &str, ip: IpAddr) -> serde_json::Value {
    if zone.is_empty() {
        json!({"ip": ip.to_string()})
    } else {
        let shown = match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => v6.to_string().replace(':', "-"),
        };
        json!({"hostname": format!("{zone}-{shown}")})
    }
}

/// Reconciles one Service.
pub async fn reconcile(svc: Arc<Service>, ctx: Arc<Context>) -> Result<Action, Error> {
    let has_finalizer = svc.finalizers().iter().any(|f| f == FINALIZER);
    let ours = desired::is_ours(&svc, &ctx.settings.lb_class);
    if svc.meta().deletion_timestamp.is_some() || !ours {
        if has_finalizer {
            return cleanup(&ctx, &svc).await;
        }
        return Ok(Action::await_change());
    }
    let opts = desired::options(&svc).map_err(DesiredError::from)?;
    if opts
        .zone_select
        .as_deref()
        .is_some_and(|z| z != ctx.settings.zone)
    {
        return Ok(Action::await_change());
    }
    // Versions of this object that are older than anything this reconcile writes.
    let mut older_versions: Vec<String> = svc.resource_version().into_iter().collect();
    if !has_finalizer {
        let mut f = svc.finalizers().to_vec();
        f.push(FINALIZER.to_owned());
        older_versions.extend(patch_finalizers(&ctx, &svc, f).await?);
    }
    // Compute everything before touching an appliance: an invalid Service changes nothing.
    desired::check_secondary_request(&svc, &ctx.settings)?;
    let own = addresses(&ctx, &svc)?;
    let mut vips = own.clone();
    vips.extend(desired::external_ips(&svc)?);
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let slices = watch::slices_of(&ctx.slices, &ns, &name);
    let slice_refs: Vec<&EndpointSlice> = slices.iter().map(Arc::as_ref).collect();
    let nodes = ctx.nodes.state();
    let node_refs: Vec<&Node> = nodes.iter().map(Arc::as_ref).collect();
    let mut rules = desired::desired_rules(&svc, &slice_refs, &node_refs, &ctx.settings, &vips)?;
    let secondary = match own.first() {
        Some(vip) => secondaries(&ctx, &svc, *vip).await?,
        None => Vec::new(),
    };
    desired::add_secondaries(&mut rules, &secondary);

    let prefix = desired::rule_prefix(&ns, &name);
    let appliances = ctx.appliances.snapshot();
    if appliances.is_empty() {
        return Err(Error::NoAppliance(format!(
            "no appliance is known yet (none from --loxiURL or LoxiURL objects, no ready endpoint of Service {})",
            watch::APPLIANCE_SERVICE
        )));
    }
    let results: Vec<Result<_, ApplianceError>> =
        join_all(appliances.iter().map(|a| a.sync(&prefix, &rules))).await;
    let mut accepted = 0;
    let mut errors = Vec::new();
    for (a, r) in appliances.iter().zip(&results) {
        match r {
            Ok(rep) => {
                accepted += 1;
                if rep.changed() {
                    log::info!(
                        "{}: {} rule(s) written, {} removed, {} endpoint(s) attached, {} detached on {}",
                        key(&svc),
                        rep.created,
                        rep.deleted,
                        rep.attached,
                        rep.detached,
                        a.url()
                    );
                }
            }
            Err(e) => {
                log::warn!("{}: {e}", key(&svc));
                errors.push(e.to_string());
            }
        }
    }
    if accepted == 0 {
        return Err(Error::NoAppliance(errors.join("; ")));
    }
    // Every address given that serves: a family without endpoints (no rule) is not shown, and
    // without any the status is left as it is (the address stays allocated).
    let serving: Vec<IpAddr> = own
        .iter()
        .copied()
        .filter(|ip| {
            let text = ip.to_string();
            rules
                .iter()
                .any(|r| r.service_arguments.external_ip == text)
        })
        .collect();
    if !serving.is_empty() {
        let want: Vec<serde_json::Value> = serving
            .iter()
            .map(|ip| ingress_for(&ctx.settings.zone, *ip))
            .collect();
        let have = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.as_ref())
            .map(|i| serde_json::to_value(i).unwrap_or_default());
        let want = serde_json::Value::Array(want);
        let already_written = ctx
            .status_written
            .lock()
            .expect("status lock")
            .get(&key(&svc))
            .is_some_and(|w| w.covers(&want, svc.resource_version().as_deref()));
        if have.as_ref() != Some(&want) && !already_written {
            let api: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
            let patch = json!({"status": {"loadBalancer": {"ingress": want}}});
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            ctx.status_written.lock().expect("status lock").insert(
                key(&svc),
                StatusWrite {
                    ingress: want,
                    older_versions,
                },
            );
            log::info!("{}: status shows {serving:?}", key(&svc));
        }
    }
    ctx.failures
        .lock()
        .expect("failures lock")
        .remove(&key(&svc));
    Ok(Action::requeue(ctx.resync))
}

/// The retry delay after `n` consecutive failures: 1 s doubling up to 60 s.
pub fn backoff(n: u32) -> Duration {
    Duration::from_secs(1u64 << n.min(6)).min(Duration::from_secs(60))
}

/// Counts the error, records an Event on the Service, and retries with backoff.
pub fn error_policy(svc: Arc<Service>, err: &Error, ctx: Arc<Context>) -> Action {
    let n = {
        let mut f = ctx.failures.lock().expect("failures lock");
        let n = f.entry(key(&svc)).or_insert(0);
        *n += 1;
        *n
    };
    *ctx.error_counts
        .lock()
        .expect("counts lock")
        .entry(err.label())
        .or_insert(0) += 1;
    log::warn!("{}: {err} (retry {n})", key(&svc));
    let ev = Event {
        type_: EventType::Warning,
        reason: err.reason().to_owned(),
        note: Some(err.to_string()),
        action: "Reconcile".to_owned(),
        secondary: None,
    };
    let reference = svc.object_ref(&());
    let recorder = ctx.recorder.clone();
    tokio::spawn(async move {
        if let Err(e) = recorder.publish(&ev, &reference).await {
            log::warn!("publishing an event failed: {e}");
        }
    });
    Action::requeue(backoff(n - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_addresses_are_read_from_ips_and_kube_loxilb_host_names() {
        let ip: IpAddr = "198.18.100.1".parse().unwrap();
        let ip6: IpAddr = "3ffe:cafe::1".parse().unwrap();
        assert_eq!(ingress_ip(Some("198.18.100.1"), None, "llb"), Some(ip));
        assert_eq!(ingress_ip(None, Some("llb-198.18.100.1"), "llb"), Some(ip));
        assert_eq!(ingress_ip(None, Some("198.18.100.1"), "llb"), Some(ip));
        assert_eq!(ingress_ip(None, Some("example.com"), "llb"), None);
        assert_eq!(ingress_ip(None, Some("llb-3ffe-cafe--1"), "llb"), Some(ip6));
        assert_eq!(
            ingress_ip(None, Some("az-1-3ffe-cafe--1"), "az-1"),
            Some(ip6)
        );
        assert_eq!(ingress_ip(Some("3ffe:cafe::1"), None, ""), Some(ip6));
        assert_eq!(ingress_ip(None, Some("3ffe-cafe--1"), ""), Some(ip6));
        assert_eq!(
            ingress_for("llb", ip),
            json!({"hostname": "llb-198.18.100.1"})
        );
        assert_eq!(ingress_for("", ip), json!({"ip": "198.18.100.1"}));
        assert_eq!(
            ingress_for("llb", ip6),
            json!({"hostname": "llb-3ffe-cafe--1"})
        );
        assert_eq!(ingress_for("", ip6), json!({"ip": "3ffe:cafe::1"}));
        for (zone, ip) in [("llb", ip), ("llb", ip6), ("az-1", ip6), ("", ip6)] {
            let v = ingress_for(zone, ip);
            let back = ingress_ip(v["ip"].as_str(), v["hostname"].as_str(), zone);
            assert_eq!(back, Some(ip), "{zone} {ip}");
        }
    }

    #[test]
    fn retries_back_off_from_one_second_to_a_minute() {
        let d: Vec<u64> = (0..9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(d, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }
}
