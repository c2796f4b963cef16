//! The running appliance as the API sees it: applies a desired state to the fast path and to
//! the state file as one step (snapshot to the workers, keys to the XDP program, the state saved
//! durably), or not at all.

use crate::compile::{self, Down, HealthKey, Reachability, XdpKeys};
use crate::http::{Appliance, ApplyError};
use crate::nexthop::{NextHopResolver, Resolution};
use crate::persist::{PersistError, StateStore};
use crate::state::DesiredState;
use oxlb_dataplane::snapshot::{NextHop, PortRange, Snapshot};
use oxlb_dataplane::stats::Counters;
use oxlb_dataplane::{Command, Dataplane};
use oxlb_xdp::{XdpRedirect, XdpStats};
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

/// How long a conntrack listing waits for every worker's answer; a worker runs its commands
/// between batches, so a healthy one answers within milliseconds.
const FLOW_DUMP_TIMEOUT: Duration = Duration::from_secs(1);

struct Inner {
    state: DesiredState,
    reach: Reachability,
    /// Monitored endpoints their probe reports down (see `crate::probe`).
    down: Down,
    snat_ports: PortRange,
    /// Endpoints whose route or neighbour is not known yet, checked more often.
    unresolved: BTreeSet<IpAddr>,
    resolver: NextHopResolver,
    store: StateStore,
    // Field order is drop order: workers stop before the XDP program is detached.
    dataplane: Dataplane,
    xdp: XdpRedirect,
}

pub struct ApplianceCore {
    inner: Mutex<Inner>,
    /// Told every state that takes effect; runs on the control runtime (`bgp().run()`).
    bgp: oxlb_bgp::Speaker,
}

impl ApplianceCore {
    pub fn new(
        dataplane: Dataplane,
        xdp: XdpRedirect,
        resolver: NextHopResolver,
        snat_ports: PortRange,
        store: StateStore,
    ) -> ApplianceCore {
        ApplianceCore {
            inner: Mutex::new(Inner {
                state: DesiredState::default(),
                reach: Reachability::default(),
                down: Down::new(),
                snat_ports,
                unresolved: BTreeSet::new(),
                resolver,
                store,
                dataplane,
                xdp,
            }),
            bgp: oxlb_bgp::Speaker::new(),
        }
    }

    /// The BGP speaker advertising the rules' addresses; its driver is for the caller to run.
    pub fn bgp(&self) -> &oxlb_bgp::Speaker {
        &self.bgp
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every step replaces whole
        // values), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Re-reads the kernel's routes and neighbours for every endpoint and republishes the
    /// snapshot if a next hop changed. Returns whether some endpoint is still unresolved.
    pub fn refresh_next_hops(&self) -> bool {
        let mut inner = self.lock();
        let addrs = compile::endpoint_addrs(&inner.state);
        if inner.resolve(&addrs) {
            match compile::snapshot(&inner.state, &inner.reach, &inner.down) {
                Ok(snap) => inner.dataplane.publish(snap),
                Err(e) => log::error!("could not compile the rules after a route change: {e}"),
            }
            // One-arm steers replies to our address toward each endpoint, known only now.
            let keys = compile::xdp_keys(&inner.state, &inner.reach);
            if let Err(e) = inner.install(&keys) {
                log::error!("could not update the XDP keys after a route change: {e}");
            }
        }
        !inner.unresolved.is_empty()
    }

    /// Records a probe's verdict on an endpoint; a change republishes the snapshot so new flows
    /// skip (or use again) the endpoint. Established flows are left alone.
    pub fn set_health(&self, key: HealthKey, up: bool) {
        let mut inner = self.lock();
        let changed = if up {
            inner.down.remove(&key)
        } else {
            inner.down.insert(key)
        };
        if !changed {
            return;
        }
        log::info!(
            "endpoint {}:{} of {} is {}",
            key.endpoint,
            key.target_port,
            key.service,
            if up { "up" } else { "down" }
        );
        match compile::snapshot(&inner.state, &inner.reach, &inner.down) {
            Ok(snap) => inner.dataplane.publish(snap),
            Err(e) => log::error!("could not compile the rules after a health change: {e}"),
        }
    }

    /// Workers' counters and the XDP program's.
    pub fn stats(&self) -> (Vec<Counters>, Option<XdpStats>) {
        let inner = self.lock();
        (inner.dataplane.stats(), inner.xdp.stats().ok())
    }
}

impl Inner {
    /// Resolves `addrs`, forgetting next hops no longer needed; returns whether the table
    /// changed.
    fn resolve(&mut self, addrs: &BTreeSet<IpAddr>) -> bool {
        let mut reach = Reachability::default();
        match self.resolver.links() {
            Ok(links) => reach.link_mtus = links.iter().map(|(&i, l)| (i, l.mtu)).collect(),
            // The MTUs last read stay in force (without any, nothing is checked against them).
            Err(e) => {
                log::warn!("could not read the interfaces' MTUs: {e}");
                reach.link_mtus = self.reach.link_mtus.clone();
            }
        }
        let mut unresolved = BTreeSet::new();
        for &a in addrs {
            match self.resolver.resolve(a) {
                Ok(Resolution::Ready(r)) => {
                    reach.next_hops.insert(
                        a,
                        NextHop {
                            ifindex: r.ifindex,
                            src_mac: r.src_mac,
                            dst_mac: r.dst_mac,
                        },
                    );
                    if let Some(src) = r.source {
                        reach.sources.insert(a, src);
                    }
                }
                Ok(Resolution::Pending { source, .. }) => {
                    if let Some(src) = source {
                        reach.sources.insert(a, src);
                    }
                    unresolved.insert(a);
                }
                Ok(Resolution::NoRoute) => {
                    if !self.unresolved.contains(&a) {
                        log::warn!("no route to endpoint {a}: its packets go to the kernel until one appears");
                    }
                    unresolved.insert(a);
                }
                Err(e) => {
                    // A lookup that failed (a netlink answer late under load, a dump
                    // interrupted) says nothing about the route: what was known stays, or
                    // flows toward the endpoint would lose their source address and
                    // their replies' steering until the next refresh.
                    log::warn!("next hop of endpoint {a}: {e}");
                    if let Some(nh) = self.reach.next_hops.get(&a) {
                        reach.next_hops.insert(a, *nh);
                    }
                    if let Some(src) = self.reach.sources.get(&a) {
                        reach.sources.insert(a, *src);
                    }
                    unresolved.insert(a);
                }
            }
        }
        self.unresolved = unresolved;
        let changed = reach != self.reach;
        self.reach = reach;
        changed
    }

    /// Puts the workers' `previous` snapshot and the running state's XDP keys back after a
    /// change that could not be completed.
    fn restore_fast_path(&mut self, previous: &Snapshot) {
        self.dataplane.publish(previous.clone());
        let old = compile::xdp_keys(&self.state, &self.reach);
        if let Err(e) = self.install(&old) {
            log::error!("could not restore the XDP keys after a failed change: {e}");
        }
    }

    /// Writes every XDP key set; the SNAT ranges last, as they only ever add reply paths.
    fn install(&mut self, keys: &XdpKeys) -> Result<(), oxlb_xdp::XdpError> {
        self.xdp.sync_keys(&keys.dst, &keys.src)?;
        self.xdp
            .sync_snat(&keys.snat, self.snat_ports.first, self.snat_ports.last)
    }
}

impl Appliance for ApplianceCore {
    fn current(&self) -> DesiredState {
        self.lock().state.clone()
    }

    fn down_endpoints(&self) -> Down {
        self.lock().down.clone()
    }

    fn snat_ports(&self) -> Option<(u16, u16)> {
        let p = self.lock().snat_ports;
        Some((p.first, p.last))
    }

    fn metrics(&self) -> Option<String> {
        let (workers, xdp) = self.stats();
        let inner = self.lock();
        let endpoints = inner.dataplane.endpoint_stats();
        let probes: Vec<_> = inner
            .state
            .services()
            .filter(|spec| spec.monitor.is_some())
            .flat_map(|spec| {
                let down = &inner.down;
                spec.endpoints.iter().map(move |e| {
                    let key = HealthKey {
                        service: spec.key,
                        endpoint: e.ip,
                        target_port: e.target_port,
                    };
                    let id = oxlb_dataplane::accounting::EndpointId {
                        addr: e.ip,
                        port: e.target_port,
                    };
                    (compile::service_key(spec), id, !down.contains(&key))
                })
            })
            .collect();
        let mut page = crate::metrics::render(&crate::metrics::Sample {
            workers: &workers,
            xdp,
            services: inner.state.len(),
            endpoints: &endpoints,
            probes: &probes,
            conntrack_capacity: inner.dataplane.conntrack_capacity(),
        });
        self.bgp.render_metrics(&mut page);
        Some(page)
    }

    fn bgp_peers(&self) -> Vec<oxlb_bgp::PeerStatus> {
        self.bgp.peers()
    }

    fn conntrack(&self) -> Result<Vec<oxlb_api::ConntrackEntry>, ApplyError> {
        // Asked under the lock, awaited without it: changes need not wait for the workers.
        let (request, snap) = {
            let inner = self.lock();
            let request = inner
                .dataplane
                .request_flows()
                .map_err(|e| ApplyError::Flows(e.to_string()))?;
            (request, inner.dataplane.current())
        };
        let dumps = request
            .wait(FLOW_DUMP_TIMEOUT)
            .map_err(|e| ApplyError::Flows(e.to_string()))?;
        for d in dumps.iter().filter(|d| d.truncated) {
            log::warn!(
                "worker {} has more connections than the {} a listing shows",
                d.worker,
                oxlb_dataplane::MAX_DUMPED_FLOWS
            );
        }
        Ok(crate::conntrack::entries(&dumps, &snap))
    }

    fn apply(&self, next: DesiredState) -> Result<(), ApplyError> {
        let mut inner = self.lock();
        let addrs = compile::endpoint_addrs(&next);
        inner.resolve(&addrs);
        let previous = inner.dataplane.current();
        // Workers learn a service before the XDP program steers its packets to them.
        let snap =
            compile::snapshot(&next, &inner.reach, &inner.down).map_err(ApplyError::Dataplane)?;
        inner.dataplane.publish(snap);
        let keys = compile::xdp_keys(&next, &inner.reach);
        if let Err(e) = inner.install(&keys) {
            inner.restore_fast_path(&previous);
            return Err(ApplyError::Xdp(e.to_string()));
        }
        // Saved before the answer, so success means durable; before services are forgotten,
        // the one step that cannot be undone.
        if let Err(e) = inner.store.save(&next) {
            inner.restore_fast_path(&previous);
            if let PersistError::SyncDir { .. } = e {
                // The new file may already be the one on disk; put the running state back.
                if let Err(e2) = inner.store.save(&inner.state) {
                    log::error!("could not restore the state file after a failed change: {e2}");
                }
            }
            return Err(ApplyError::Persist(e.to_string()));
        }
        let gone: Vec<_> = inner
            .state
            .services()
            .filter(|s| next.get(&s.key).is_none())
            .map(compile::service_key)
            .collect();
        for key in gone {
            // Flows would time out anyway; ending them now frees their slots at once.
            if let Err(e) = inner.dataplane.command(Command::ForgetService(key)) {
                log::warn!("{e}");
            }
        }
        inner.state = next;
        self.bgp.set(crate::bgp::desired(&inner.state));
        Ok(())
    }
}
