//! The running appliance as the API sees it: applies a desired state to the fast path as one
//! step (snapshot to the workers, keys to the XDP program), or not at all.

use crate::compile;
use crate::http::{Appliance, ApplyError};
use crate::nexthop::{NextHopResolver, Resolution};
use crate::state::DesiredState;
use oxlb_dataplane::snapshot::NextHop;
use oxlb_dataplane::stats::Counters;
use oxlb_dataplane::{Command, Dataplane};
use oxlb_xdp::{XdpRedirect, XdpStats};
use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Mutex;

struct Inner {
    state: DesiredState,
    next_hops: HashMap<Ipv4Addr, NextHop>,
    /// Endpoints whose route or neighbour is not known yet, checked more often.
    unresolved: BTreeSet<Ipv4Addr>,
    resolver: NextHopResolver,
    // Field order is drop order: workers stop before the XDP program is detached.
    dataplane: Dataplane,
    xdp: XdpRedirect,
}

pub struct ApplianceCore {
    inner: Mutex<Inner>,
}

impl ApplianceCore {
    pub fn new(dataplane: Dataplane, xdp: XdpRedirect, resolver: NextHopResolver) -> ApplianceCore {
        ApplianceCore {
            inner: Mutex::new(Inner {
                state: DesiredState::default(),
                next_hops: HashMap::new(),
                unresolved: BTreeSet::new(),
                resolver,
                dataplane,
                xdp,
            }),
        }
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
        let addrs = compile::endpoint_addrs(inner.state.services());
        if inner.resolve(&addrs) {
            let snap = compile::snapshot(inner.state.services(), &inner.next_hops);
            inner.dataplane.publish(snap);
        }
        !inner.unresolved.is_empty()
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
    fn resolve(&mut self, addrs: &BTreeSet<Ipv4Addr>) -> bool {
        let mut table = HashMap::new();
        let mut unresolved = BTreeSet::new();
        for &a in addrs {
            match self.resolver.resolve(a) {
                Ok(Resolution::Ready(r)) => {
                    table.insert(
                        a,
                        NextHop {
                            ifindex: r.ifindex,
                            src_mac: r.src_mac,
                            dst_mac: r.dst_mac,
                        },
                    );
                }
                Ok(Resolution::Pending { .. }) => {
                    unresolved.insert(a);
                }
                Ok(Resolution::NoRoute) => {
                    if !self.unresolved.contains(&a) {
                        log::warn!("no route to endpoint {a}: its packets go to the kernel until one appears");
                    }
                    unresolved.insert(a);
                }
                Err(e) => {
                    log::warn!("next hop of endpoint {a}: {e}");
                    unresolved.insert(a);
                }
            }
        }
        self.unresolved = unresolved;
        let changed = table != self.next_hops;
        self.next_hops = table;
        changed
    }
}

impl Appliance for ApplianceCore {
    fn current(&self) -> DesiredState {
        self.lock().state.clone()
    }

    fn apply(&self, next: DesiredState) -> Result<(), ApplyError> {
        let mut inner = self.lock();
        let addrs = compile::endpoint_addrs(next.services());
        inner.resolve(&addrs);
        let previous = inner.dataplane.current();
        // Workers learn a service before the XDP program steers its packets to them.
        let snap = compile::snapshot(next.services(), &inner.next_hops);
        inner.dataplane.publish(snap);
        let (dst, src) = compile::xdp_keys(next.services());
        if let Err(e) = inner.xdp.sync_keys(&dst, &src) {
            inner.dataplane.publish((*previous).clone());
            let (dst, src) = compile::xdp_keys(inner.state.services());
            if let Err(e2) = inner.xdp.sync_keys(&dst, &src) {
                log::error!("could not restore the XDP keys after a failed change: {e2}");
            }
            return Err(ApplyError::Xdp(e.to_string()));
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
        Ok(())
    }
}
