//! Reflector stores of EndpointSlices and Nodes, and the trigger streams that tell the
//! Service controller which Services to reconcile when they change.
//!
//! A reflector writes its store before it yields the event, so a reconcile started by a
//! trigger always reads a store that already holds the change that triggered it.

use crate::desired::SERVICE_NAME_LABEL;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use std::sync::Arc;

/// What a reflector can watch: any cluster-wide resource (custom resources included).
pub trait Watched:
    Resource<DynamicType = ()>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
}

impl<K> Watched for K where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

/// A reflector over every `K` in the cluster, writing `store`: its raw event stream, with
/// backoff on errors and managed fields stripped (they are large and never read).
fn reflected<K: Watched>(
    client: Client,
) -> (
    Store<K>,
    impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
) {
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(Api::<K>::all(client), watcher::Config::default())
            .default_backoff()
            .modify(|o: &mut K| o.managed_fields_mut().clear()),
    );
    (reader, stream)
}

/// Runs a reflector over every `K` in the cluster; yields each applied or deleted object once
/// the store holds the change.
fn reflect<K: Watched>(client: Client) -> (Store<K>, impl Stream<Item = Arc<K>> + Send + 'static) {
    let (reader, events) = reflected::<K>(client);
    let stream = events.touched_objects().filter_map(|r| async move {
        match r {
            Ok(o) => Some(Arc::new(o)),
            Err(e) => {
                log::warn!("watch of {} failed (retrying): {e}", K::kind(&()));
                None
            }
        }
    });
    (reader, stream)
}

/// Runs a reflector over every `K` in the cluster (custom resources included); yields `()`
/// each time the store's contents changed: after an applied or deleted object, and after a
/// (re)list has been swapped in whole. Unlike a stream of touched objects, it also ticks at
/// the end of a relist, the only moment a store reader sees the objects a relist removed.
pub fn store_changes<K: Watched>(
    client: Client,
) -> (Store<K>, impl Stream<Item = ()> + Send + 'static) {
    let (reader, events) = reflected::<K>(client);
    let stream = events.filter_map(|r| async move {
        match r {
            Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone) => {
                Some(())
            }
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => None,
            Err(e) => {
                log::warn!("watch of {} failed (retrying): {e}", K::kind(&()));
                None
            }
        }
    });
    (reader, stream)
}

/// A store of every EndpointSlice and a stream naming the Service each change belongs to.
pub fn endpoint_slices(
    client: Client,
) -> (
    Store<EndpointSlice>,
    impl Stream<Item = ObjectRef<Service>> + Send + 'static,
) {
    let (store, stream) = reflect::<EndpointSlice>(client);
    let triggers = stream.filter_map(|s| async move {
        let svc = s.labels().get(SERVICE_NAME_LABEL)?.clone();
        let ns = s.namespace()?;
        Some(ObjectRef::new(&svc).within(&ns))
    });
    (store, triggers)
}

/// A store of every Node and a stream ticking on each change (every Service may use any node).
pub fn nodes(client: Client) -> (Store<Node>, impl Stream<Item = ()> + Send + 'static) {
    let (store, stream) = reflect::<Node>(client);
    (store, stream.map(|_| ()))
}

/// The EndpointSlices of Service `namespace/name` held in `store`.
pub fn slices_of(
    store: &Store<EndpointSlice>,
    namespace: &str,
    name: &str,
) -> Vec<Arc<EndpointSlice>> {
    let mut v: Vec<_> = store
        .state()
        .into_iter()
        .filter(|s| {
            s.namespace().as_deref() == Some(namespace)
                && s.labels().get(SERVICE_NAME_LABEL).map(String::as_str) == Some(name)
        })
        .collect();
    v.sort_by_key(|s| s.name_any());
    v
}

/// kube-loxilb's name of the Service whose endpoints are the appliances, when no URL is given.
pub const APPLIANCE_SERVICE: &str = "loxilb-lb-service";

/// The ready addresses of every EndpointSlice of a Service named `service`, in any namespace,
/// as kube-loxilb discovers its appliances (an endpoint whose `ready` is unset counts);
/// sorted, each once.
pub fn ready_addresses_of(
    store: &Store<EndpointSlice>,
    service: &str,
) -> std::collections::BTreeSet<std::net::IpAddr> {
    store
        .state()
        .iter()
        .filter(|s| s.labels().get(SERVICE_NAME_LABEL).map(String::as_str) == Some(service))
        .flat_map(|s| s.endpoints.clone())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .flat_map(|e| e.addresses)
        .filter_map(|a| a.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(ns: &str, name: &str, service: &str, eps: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": name, "namespace": ns,
                         "labels": {"kubernetes.io/service-name": service}},
            "endpoints": eps}))
        .unwrap()
    }

    #[test]
    fn appliances_are_the_ready_addresses_of_loxilb_lb_service_in_any_namespace() {
        let (reader, mut writer) = reflector::store::<EndpointSlice>();
        for s in [
            slice(
                "kube-system",
                "a",
                APPLIANCE_SERVICE,
                serde_json::json!([
                    {"addresses": ["198.18.0.2"], "conditions": {"ready": true}},
                    {"addresses": ["198.18.0.3"], "conditions": {"ready": false}},
                    {"addresses": ["198.18.0.1"]}]),
            ),
            slice(
                "other",
                "b",
                APPLIANCE_SERVICE,
                serde_json::json!([{"addresses": ["fd00::1", "198.18.0.2"]}]),
            ),
            slice(
                "kube-system",
                "c",
                "loxilb-lb-service2",
                serde_json::json!([{"addresses": ["198.18.0.9"]}]),
            ),
        ] {
            writer.apply_watcher_event(&watcher::Event::Apply(s));
        }
        let got: Vec<String> = ready_addresses_of(&reader, APPLIANCE_SERVICE)
            .iter()
            .map(|ip| ip.to_string())
            .collect();
        assert_eq!(got, vec!["198.18.0.1", "198.18.0.2", "fd00::1"]);
    }
}
