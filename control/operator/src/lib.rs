//! oxlb-operator: programs Kubernetes LoadBalancer Services onto oxlb appliances, accepting
//! kube-loxilb's flags and annotations. `run` wires flags, IPAM, reflectors and the reconciler.
#![forbid(unsafe_code)]

pub mod appliance;
pub mod flags;
pub mod ipam;
pub mod reconcile;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::api::ListParams;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{watcher, Controller};
use kube::{Api, Client};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Why the operator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Refused(#[from] flags::Refused),
    #[error(transparent)]
    Config(#[from] flags::ConfigError),
    #[error("--externalCIDR / --cidrPools: {0}")]
    Pools(#[from] ipam::IpamError),
    #[error("--setLBMode {0} is unknown: use 0 (DNAT), 1 (one-arm) or 2 (full-NAT)")]
    LbMode(u16),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

/// Checks the flags: every refusal happens here, before anything connects.
pub fn prepare(f: &flags::Flags) -> Result<(Vec<ipam::Pool>, kube_watcher::Settings), StartError> {
    f.check_implemented()?;
    if f.set_lb_mode > 2 {
        return Err(StartError::LbMode(f.set_lb_mode));
    }
    let pools = ipam::pools_from_flags(&f.external_cidr, &f.cidr_pools)?;
    let pools = if pools.is_empty() {
        // kube-loxilb's default pool when neither flag is given.
        ipam::pools_from_flags("123.123.123.0/24", "")?
    } else {
        pools
    };
    let settings = kube_watcher::Settings {
        zone: f.zone(),
        lb_mode: i64::from(f.set_lb_mode),
        monitor: f.monitor,
        use_pod_network: f.use_pod_network,
        bgp: false,
        lb_class: f.lb_class.clone(),
    };
    Ok((pools, settings))
}

/// Runs the operator until SIGTERM/SIGINT.
pub async fn run(f: flags::Flags) -> Result<(), StartError> {
    let f = f.with_config_file()?;
    let (pools, settings) = prepare(&f)?;
    let client = Client::try_default().await?;
    let services: Api<Service> = Api::all(client.clone());

    let mut ipam = ipam::Ipam::new(pools, f.set_unique_ip);
    let existing = services.list(&ListParams::default()).await?;
    reconcile::rebuild(&mut ipam, &existing.items, &settings.lb_class);

    let (slices, slice_triggers) = kube_watcher::watch::endpoint_slices(client.clone());
    let (nodes, node_triggers) = kube_watcher::watch::nodes(client.clone());
    let ctx = Arc::new(reconcile::Context {
        client: client.clone(),
        appliances: f
            .appliance_urls()
            .iter()
            .map(|u| appliance::Appliance::new(u))
            .collect(),
        ipam: Mutex::new(ipam),
        settings,
        slices,
        nodes,
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "oxlb-operator".into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        ),
        resync: Duration::from_secs(f.resync_period.max(1)),
        failures: Mutex::new(Default::default()),
        status_written: Mutex::new(Default::default()),
        error_counts: Mutex::new(Default::default()),
    });
    log::info!(
        "oxlb-operator: {} appliance(s), zone {:?}",
        ctx.appliances.len(),
        ctx.settings.zone
    );
    Controller::new(services, watcher::Config::default())
        .reconcile_on(slice_triggers)
        .reconcile_all_on(node_triggers)
        .shutdown_on_signal()
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                log::debug!("controller: {e}");
            }
        })
        .await;
    Ok(())
}
