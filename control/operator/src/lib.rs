//! oxlb-operator: programs Kubernetes LoadBalancer Services onto oxlb appliances, accepting
//! kube-loxilb's flags, annotations and custom resources. `run` wires flags, IPAM, reflectors,
//! the reconciler and the LoxiURL / BGPPeerService watchers.
#![forbid(unsafe_code)]

pub mod appliance;
pub mod bgp;
pub mod crds;
pub mod flags;
pub mod fleet;
pub mod ipam;
pub mod loxiurl;
pub mod reconcile;
pub mod roles;

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
    #[error(transparent)]
    BadValue(#[from] flags::BadValue),
    #[error(transparent)]
    Appliance(#[from] appliance::SetupError),
    #[error("--excludeRoleList {0} is not the address of any --loxiURL appliance")]
    ExcludedUnknown(std::net::Ipv4Addr),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

/// Everything `prepare` derives from the flags.
#[derive(Debug)]
pub struct Prepared {
    pub pools: Vec<ipam::Pool>,
    pub settings: kube_watcher::Settings,
    pub appliances: Vec<appliance::Appliance>,
    /// Present with `--setRoles`.
    pub roles: Option<roles::RoleSettings>,
    /// How appliances named by LoxiURL objects are set up.
    pub loxiurl: loxiurl::Settings,
}

/// Checks the flags: every refusal happens here, before anything connects.
pub fn prepare(f: &flags::Flags) -> Result<Prepared, StartError> {
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
    let credentials = appliance::Credentials::from_file(&f.api_token_file)?;
    let updates = if f.append_eps {
        appliance::EndpointUpdates::AttachDetach
    } else {
        appliance::EndpointUpdates::Replace
    };
    let appliances = f
        .appliance_urls()
        .iter()
        .map(|u| appliance::Appliance::new(u, &credentials, updates))
        .collect::<Result<Vec<_>, _>>()?;
    let excluded_hosts = f.excluded_role_hosts()?;
    if let Some(unknown) = excluded_hosts
        .iter()
        .find(|h| !appliances.iter().any(|a| a.host() == h.to_string()))
    {
        // kube-loxilb applies the list to appliances it discovers; without discovery a name
        // matching none of --loxiURL is a typo that would silently leave one eligible.
        return Err(StartError::ExcludedUnknown(*unknown));
    }
    let roles = f.roles_vip()?.map(|vip| roles::RoleSettings {
        vip,
        instances: roles::instances(&settings.zone),
        excluded: appliances
            .iter()
            .map(|a| excluded_hosts.iter().any(|h| a.host() == h.to_string()))
            .collect(),
        refresh: Duration::from_secs(f.resync_period.max(1)),
    });
    let loxiurl = loxiurl::Settings {
        zone: settings.zone.clone(),
        credentials,
        updates,
        flag_pools: pools.iter().map(|p| p.name.clone()).collect(),
    };
    Ok(Prepared {
        pools,
        settings,
        appliances,
        roles,
        loxiurl,
    })
}

/// Runs the operator until SIGTERM/SIGINT.
pub async fn run(f: flags::Flags) -> Result<(), StartError> {
    if f.command == Some(flags::Command::Crd) {
        print!("{}", crds::crds_yaml());
        return Ok(());
    }
    let f = f.with_config_file()?;
    let Prepared {
        pools,
        settings,
        appliances,
        roles,
        loxiurl,
    } = prepare(&f)?;
    let client = Client::try_default().await?;
    let services: Api<Service> = Api::all(client.clone());

    let mut ipam = ipam::Ipam::new(pools, f.set_unique_ip);
    let existing = services.list(&ListParams::default()).await?;
    reconcile::rebuild(&mut ipam, &existing.items, &settings.lb_class);

    let (slices, slice_triggers) = kube_watcher::watch::endpoint_slices(client.clone());
    let (nodes, node_triggers) = kube_watcher::watch::nodes(client.clone());
    let ctx = Arc::new(reconcile::Context {
        client: client.clone(),
        appliances: fleet::Fleet::new(appliances.clone()),
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
        ctx.appliances.fixed().len(),
        ctx.settings.zone
    );
    // Dropped (and so stopped) when the controller returns.
    let _roles = roles.map(|r| AbortOnDrop(tokio::spawn(roles::run(appliances, r))));
    let (resync_tx, mut resync_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let fleet_triggers = futures::stream::poll_fn(move |cx| resync_rx.poll_recv(cx));
    let _loxiurl = AbortOnDrop(tokio::spawn(loxiurl::run(
        client.clone(),
        ctx.clone(),
        loxiurl,
        resync_tx,
    )));
    let _bgp = f.enable_bgp_crds.then(|| {
        AbortOnDrop(tokio::spawn(bgp::run(
            client.clone(),
            ctx.clone(),
            ctx.resync,
        )))
    });
    Controller::new(services, watcher::Config::default())
        .reconcile_on(slice_triggers)
        .reconcile_all_on(node_triggers)
        .reconcile_all_on(fleet_triggers)
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

/// Stops a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
