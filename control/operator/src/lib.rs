//! oxlb-operator: programs Kubernetes LoadBalancer Services onto oxlb appliances, accepting
//! kube-loxilb's flags, annotations and custom resources. `run` wires flags, IPAM, reflectors,
//! the reconciler, appliance discovery, roles, BGP and the LoxiURL / BGPPeerService watchers.
#![forbid(unsafe_code)]

pub mod appliance;
pub mod bgp;
pub mod bgp_flags;
pub mod crds;
pub mod discovery;
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
    #[error("--externalCIDR / --cidrPools / --cidr6Pools: {0}")]
    Pools(#[from] ipam::IpamError),
    #[error("--setLBMode {0} is unknown: use 0 (DNAT), 1 (one-arm) or 2 (full-NAT)")]
    LbMode(u16),
    #[error(transparent)]
    BadValue(#[from] flags::BadValue),
    #[error(transparent)]
    Appliance(#[from] appliance::SetupError),
    #[error("--excludeRoleList {0} is not the address of any --loxiURL appliance")]
    ExcludedUnknown(std::net::Ipv4Addr),
    #[error(transparent)]
    BgpPeers(#[from] bgp_flags::PeerFlagError),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

/// Everything `prepare` derives from the flags.
#[derive(Debug)]
pub struct Prepared {
    pub pools: Vec<ipam::Pool>,
    /// `--externalSecondaryCIDRs`, in order (`secondary1`...).
    pub secondary_pools: Vec<ipam::Pool>,
    pub settings: kube_watcher::Settings,
    pub appliances: Vec<appliance::Appliance>,
    /// Present with `--setRoles`.
    pub roles: Option<roles::RoleSettings>,
    /// How appliances named by LoxiURL objects are set up.
    pub loxiurl: loxiurl::Settings,
    /// Present when `--loxiURL` is empty: appliances are discovered.
    pub discovery: Option<discovery::Settings>,
    /// Present with `--setBGP`.
    pub bgp: Option<bgp_flags::Settings>,
}

/// Checks the flags: every refusal happens here, before anything connects.
pub fn prepare(f: &flags::Flags) -> Result<Prepared, StartError> {
    f.check_implemented()?;
    if f.set_lb_mode > 2 {
        return Err(StartError::LbMode(f.set_lb_mode));
    }
    let pools = ipam::pools_from_flags(&f.external_cidr, &f.cidr_pools)?;
    let mut pools = if pools.is_empty() {
        // kube-loxilb's default pool when neither flag is given.
        ipam::pools_from_flags(ipam::DEFAULT_POOL4, "")?
    } else {
        pools
    };
    let pools6 = ipam::pools6_from_flag(&f.cidr6_pools)?;
    let secondary_pools = ipam::secondary_pools_from_flag(&f.external_secondary_cidrs)?;
    if pools6.is_empty() {
        // kube-loxilb always has an IPv6 default pool.
        pools.extend(ipam::pools6_from_flag(&format!(
            "{}={}",
            ipam::DEFAULT_POOL,
            ipam::DEFAULT_POOL6
        ))?);
    } else {
        pools.extend(pools6);
    }
    let settings = kube_watcher::Settings {
        zone: f.zone(),
        lb_mode: i64::from(f.set_lb_mode),
        monitor: f.monitor,
        use_pod_network: f.use_pod_network,
        // kube-loxilb marks every rule for BGP advertisement once the appliances speak BGP.
        bgp: f.set_bgp != 0,
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
    let unknown = excluded_hosts
        .iter()
        .find(|h| !appliances.iter().any(|a| a.host() == h.to_string()));
    if let (Some(unknown), false) = (unknown, appliances.is_empty()) {
        // kube-loxilb applies the list to the appliances it discovers; with fixed --loxiURL
        // appliances, a name matching none of them is a typo that would leave one eligible.
        return Err(StartError::ExcludedUnknown(*unknown));
    }
    let roles = f.roles_vip()?.map(|vip| roles::RoleSettings {
        vip,
        instances: roles::instances(&settings.zone),
        excluded: excluded_hosts.iter().map(|h| h.to_string()).collect(),
        refresh: Duration::from_secs(f.resync_period.max(1)),
    });
    let discovery = appliances.is_empty().then(|| discovery::Settings {
        credentials: credentials.clone(),
        updates,
    });
    let loxiurl = loxiurl::Settings {
        zone: settings.zone.clone(),
        credentials,
        updates,
        flag_pools: pools.iter().map(|p| p.name.clone()).collect(),
    };
    let external = bgp_flags::parse_external(&f.ext_bgp_peers, f.set_bgp)?;
    if f.set_bgp == 0 && (f.listen_bgp_port != 0 || f.ebgp_multi_hop) {
        log::warn!("--listenBGPPort / --eBGPMultiHop do nothing without --setBGP");
    }
    let bgp = (f.set_bgp != 0).then(|| bgp_flags::Settings {
        local_as: f.set_bgp,
        listen_port: if f.listen_bgp_port == 0 {
            bgp_flags::BGP_PORT
        } else {
            f.listen_bgp_port
        },
        multi_hop: f.ebgp_multi_hop,
        external,
        mesh: discovery.is_some(),
        report_to: bgp_flags::own_pod(
            std::env::var("POD_NAME").ok(),
            std::env::var("POD_NAMESPACE").ok(),
        ),
    });
    Ok(Prepared {
        pools,
        secondary_pools,
        settings,
        appliances,
        roles,
        loxiurl,
        discovery,
        bgp,
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
        secondary_pools,
        settings,
        appliances,
        roles,
        loxiurl,
        discovery,
        bgp,
    } = prepare(&f)?;
    let client = Client::try_default().await?;
    let services: Api<Service> = Api::all(client.clone());

    let mut ipam = ipam::Ipam::new(pools, f.set_unique_ip);
    let existing = services.list(&ListParams::default()).await?;
    reconcile::rebuild(
        &mut ipam,
        &existing.items,
        &settings.lb_class,
        &settings.zone,
    );

    let (slices, slice_triggers) = kube_watcher::watch::endpoint_slices(client.clone());
    let (nodes, node_triggers) = kube_watcher::watch::nodes(client.clone());
    let ctx = Arc::new(reconcile::Context {
        client: client.clone(),
        appliances: fleet::Fleet::new(appliances),
        ipam: Mutex::new(ipam),
        secondary_ipam: Mutex::new(ipam::Ipam::new(secondary_pools.clone(), f.set_unique_ip)),
        secondary_pools,
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
    let _roles = roles.map(|r| {
        let c = ctx.clone();
        AbortOnDrop(tokio::spawn(roles::run(
            move || c.appliances.role_members(),
            r,
        )))
    });
    let (resync_tx, mut resync_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let _discovery = discovery.map(|d| {
        log::info!(
            "no --loxiURL: appliances are the ready endpoints of Service {} (port {})",
            kube_watcher::watch::APPLIANCE_SERVICE,
            discovery::API_PORT
        );
        AbortOnDrop(tokio::spawn(discovery::run(
            ctx.slices.clone(),
            ctx.clone(),
            d,
            resync_tx.clone(),
        )))
    });
    let fleet_triggers = futures::stream::poll_fn(move |cx| resync_rx.poll_recv(cx));
    let _loxiurl = AbortOnDrop(tokio::spawn(loxiurl::run(
        client.clone(),
        ctx.clone(),
        loxiurl,
        resync_tx,
    )));
    let _bgp_flags = bgp.map(|b| {
        log::info!(
            "BGP: local AS {}, listen port {}, {} external peer(s){}",
            b.local_as,
            b.listen_port,
            b.external.len(),
            if b.mesh {
                ", appliances peer with each other"
            } else {
                ""
            }
        );
        AbortOnDrop(tokio::spawn(bgp_flags::run(ctx.clone(), b, ctx.resync)))
    });
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
