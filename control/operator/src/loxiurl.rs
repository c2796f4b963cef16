//! kube-loxilb's LoxiURL objects applied at run time: appliance URLs join the fleet and
//! `cidrpool` objects become address pools; deleting the object takes them away again, and
//! every change of the appliance set or the pools resyncs every Service.

use crate::appliance::{Appliance, Credentials, EndpointUpdates};
use crate::crds::LoxiURL;
use crate::ipam::Pool;
use crate::reconcile::Context;
use futures::StreamExt;
use kube::runtime::events::{Event, EventType};
use kube::{Client, Resource, ResourceExt};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

/// What the LoxiURL objects ask for, before anything is applied.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// (URL, object name), in object-name order, each URL once.
    pub urls: Vec<(String, String)>,
    /// Pools named after their objects.
    pub pools: Vec<Pool>,
    /// (object name, why it is refused).
    pub problems: Vec<(String, String)>,
}

/// Reads the objects as kube-loxilb does: one for another zone is ignored; type `default` (or
/// empty) lists appliance URLs, `cidrpool` defines pool `<name>`. Pools named like a
/// `--externalCIDR` / `--cidrPools` pool are refused (kube-loxilb would replace or delete the
/// flag's pool; a run-time object overriding the command line is a surprise, not a feature).
pub fn plan(objects: &[Arc<LoxiURL>], zone: &str, flag_pools: &[String]) -> Plan {
    let mut objects: Vec<&LoxiURL> = objects.iter().map(Arc::as_ref).collect();
    objects.sort_by_key(|o| o.name_any());
    let mut p = Plan::default();
    for o in objects {
        let name = o.name_any();
        let s = &o.spec;
        if !s.zone.is_empty() && s.zone != zone {
            continue;
        }
        match s.kind.as_str() {
            "" | "default" => {
                for u in s.loxi_url.split(',') {
                    let u = u.trim().trim_end_matches('/');
                    if !u.is_empty() && !p.urls.iter().any(|(x, _)| x == u) {
                        p.urls.push((u.to_owned(), name.clone()));
                    }
                }
            }
            "cidrpool" => {
                if flag_pools.contains(&name) {
                    p.problems.push((
                        name.clone(),
                        format!("pool {name:?} is already defined by --externalCIDR / --cidrPools; name the LoxiURL otherwise"),
                    ));
                    continue;
                }
                match Pool::parse(&name, s.loxi_url.trim()) {
                    Ok(pool) => p.pools.push(pool),
                    Err(e) => p.problems.push((name, e.to_string())),
                }
            }
            "hostcidr" => p.problems.push((
                name,
                "type hostcidr (the appliance's instance address) is not implemented yet by oxlb-operator".to_owned(),
            )),
            other => p.problems.push((
                name,
                format!("type {other:?} is unknown: use default, cidrpool or hostcidr"),
            )),
        }
    }
    p
}

/// How appliances named by LoxiURL objects are reached: as the `--loxiURL` ones.
#[derive(Debug, Clone)]
pub struct Settings {
    pub zone: String,
    pub credentials: Credentials,
    pub updates: EndpointUpdates,
    /// Names of the pools of `--externalCIDR` / `--cidrPools`.
    pub flag_pools: Vec<String>,
}

/// Watches LoxiURL objects until the task is dropped; sends `()` on `resync` whenever the
/// appliance set or the pools changed.
pub async fn run(
    client: Client,
    ctx: Arc<Context>,
    settings: Settings,
    resync: tokio::sync::mpsc::UnboundedSender<()>,
) {
    let (store, changes) = kube_watcher::watch::store_changes::<LoxiURL>(client);
    let mut changes = Box::pin(changes);
    // Pools this task added, so it never removes a pool of the flags.
    let mut applied: BTreeMap<String, Pool> = BTreeMap::new();
    // (object, resourceVersion, message) already reported: one Event per problem and version.
    let mut reported: HashSet<(String, String, String)> = HashSet::new();
    while changes.next().await.is_some() {
        let objects = store.state();
        let mut p = plan(&objects, &settings.zone, &settings.flag_pools);
        let mut added = Vec::new();
        for (url, owner) in &p.urls {
            match Appliance::new(url, &settings.credentials, settings.updates) {
                Ok(a) => added.push(a),
                Err(e) => p.problems.push((owner.clone(), e.to_string())),
            }
        }
        let urls: Vec<String> = added.iter().map(|a| a.url().to_owned()).collect();
        let mut changed = ctx.appliances.set_added(added);
        if changed {
            log::info!("LoxiURL: appliances added at run time now {urls:?}");
        }
        {
            let mut ipam = ctx.ipam.lock().expect("ipam lock");
            let gone: Vec<String> = applied
                .iter()
                .filter(|(_, pool)| !p.pools.contains(pool))
                .map(|(n, _)| n.clone())
                .collect();
            for name in gone {
                ipam.remove_pool(&name);
                applied.remove(&name);
                log::info!("LoxiURL: pool {name} removed");
                changed = true;
            }
            for pool in &p.pools {
                if applied.get(&pool.name) == Some(pool) {
                    continue;
                }
                match ipam.add_pool(pool.clone()) {
                    Ok(()) => {
                        log::info!(
                            "LoxiURL: pool {} = {}-{} added",
                            pool.name,
                            pool.first,
                            pool.last
                        );
                        applied.insert(pool.name.clone(), pool.clone());
                        changed = true;
                    }
                    Err(e) => p.problems.push((pool.name.clone(), e.to_string())),
                }
            }
        }
        if changed {
            // The receiver lives as long as the controller; after it, nothing is to resync.
            let _ = resync.send(());
        }
        for (name, message) in p.problems {
            let Some(obj) = objects.iter().find(|o| o.name_any() == name) else {
                continue;
            };
            let k = (name, obj.resource_version().unwrap_or_default(), message);
            if !reported.insert(k.clone()) {
                continue;
            }
            log::warn!("LoxiURL {}: {}", k.0, k.2);
            let ev = Event {
                type_: EventType::Warning,
                reason: "LoxiURLRefused".to_owned(),
                note: Some(k.2),
                action: "Apply".to_owned(),
                secondary: None,
            };
            if let Err(e) = ctx.recorder.publish(&ev, &obj.object_ref(&())).await {
                log::warn!("publishing an event failed: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crds::LoxiUrlSpec;

    fn obj(name: &str, url: &str, kind: &str, zone: &str) -> Arc<LoxiURL> {
        Arc::new(LoxiURL::new(
            name,
            LoxiUrlSpec {
                loxi_url: url.to_owned(),
                kind: kind.to_owned(),
                zone: zone.to_owned(),
            },
        ))
    }

    #[test]
    fn urls_pools_and_refusals_are_read_as_kube_loxilb_reads_them() {
        let objs = vec![
            obj("b", "http://10.0.0.2:11111/, http://10.0.0.1:11111", "", ""),
            obj("a", "http://10.0.0.1:11111", "default", "llb"),
            obj("other-zone", "http://10.0.0.9:11111", "", "az2"),
            obj("extra", "198.18.200.0/30", "cidrpool", ""),
            obj("defaultPool", "198.18.201.0/24", "cidrpool", ""),
            obj("bad", "not-a-cidr", "cidrpool", ""),
            obj("inst", "10.0.0.1", "hostcidr", ""),
            obj("weird", "x", "mesh", ""),
        ];
        let p = plan(&objs, "llb", &["defaultPool".to_owned()]);
        assert_eq!(
            p.urls,
            vec![
                ("http://10.0.0.1:11111".to_owned(), "a".to_owned()),
                ("http://10.0.0.2:11111".to_owned(), "b".to_owned()),
            ]
        );
        assert_eq!(
            p.pools,
            vec![Pool::parse("extra", "198.18.200.0/30").unwrap()]
        );
        let refused: Vec<&str> = p.problems.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(refused, vec!["bad", "defaultPool", "inst", "weird"]);
        assert!(p.problems[2].1.contains("hostcidr"), "{:?}", p.problems);
    }
}
