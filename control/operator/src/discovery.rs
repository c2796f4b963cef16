//! Appliance discovery when `--loxiURL` is empty, as kube-loxilb does it: the appliances are
//! the ready endpoints of the Service `loxilb-lb-service` (any namespace), reached at
//! `http://<address>:11111`. Appliances join the fleet as their endpoints appear and leave it
//! when they go; every change resyncs every Service, so a returning appliance gets every rule.

use crate::appliance::{Appliance, Credentials, EndpointUpdates};
use crate::reconcile::Context;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::Store;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// The port of the appliance API, as kube-loxilb assumes it.
pub const API_PORT: u16 = 11111;

/// How often the EndpointSlice store (in memory, kept current by its reflector) is read.
/// kube-loxilb looks every 20 s.
const ROUND: Duration = Duration::from_secs(1);

/// The API URL of an appliance at `ip`.
pub fn url_of(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("http://{v4}:{API_PORT}"),
        IpAddr::V6(v6) => format!("http://[{v6}]:{API_PORT}"),
    }
}

/// How discovered appliances are reached: as the `--loxiURL` ones would be.
#[derive(Debug, Clone)]
pub struct Settings {
    pub credentials: Credentials,
    pub updates: EndpointUpdates,
}

/// Keeps the fleet's discovered part equal to the ready endpoints of `loxilb-lb-service`
/// until the task is dropped; sends `()` on `resync` after each change.
pub async fn run(
    slices: Store<EndpointSlice>,
    ctx: Arc<Context>,
    settings: Settings,
    resync: tokio::sync::mpsc::UnboundedSender<()>,
) {
    let mut tick = tokio::time::interval(ROUND);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut known: Vec<IpAddr> = Vec::new();
    loop {
        tick.tick().await;
        let ips: Vec<IpAddr> = kube_watcher::watch::ready_addresses_of(
            &slices,
            kube_watcher::watch::APPLIANCE_SERVICE,
        )
        .into_iter()
        .collect();
        if ips == known {
            continue;
        }
        let appliances: Vec<Appliance> = ips
            .iter()
            .filter_map(|ip| {
                Appliance::new(&url_of(*ip), &settings.credentials, settings.updates)
                    .map_err(|e| log::warn!("discovered appliance {ip}: {e}"))
                    .ok()
            })
            .collect();
        for gone in known.iter().filter(|k| !ips.contains(k)) {
            log::info!(
                "appliance {} is gone from {}: no more calls go to it",
                url_of(*gone),
                kube_watcher::watch::APPLIANCE_SERVICE
            );
        }
        for new in ips.iter().filter(|i| !known.contains(i)) {
            log::info!(
                "appliance {} discovered in {}",
                url_of(*new),
                kube_watcher::watch::APPLIANCE_SERVICE
            );
        }
        known = ips;
        if ctx.appliances.set_discovered(appliances) {
            // The receiver lives as long as the controller; after it, nothing is to resync.
            let _ = resync.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovered_addresses_become_api_urls_on_port_11111() {
        assert_eq!(
            url_of("198.18.0.7".parse().unwrap()),
            "http://198.18.0.7:11111"
        );
        assert_eq!(url_of("fd00::7".parse().unwrap()), "http://[fd00::7]:11111");
    }
}
