//! `reconcile::reconcile` for one Service, driven directly against a mocked Kubernetes API (a
//! `kube::Client` over `tower_test::mock::pair`) and the fake appliance: every request the
//! operator makes to the API is recorded with its method, path, content type and JSON body, and
//! each test asserts the exact list, in order. Needs no root.
//!
//! The mock answers as an API server would for what reconcile calls: merge patches of a Service
//! (409 when the patch's `resourceVersion` is stale) and of its status, and Event creation;
//! anything else gets 404, which a test then sees in the recorded list.

mod support;

use http::{Request, Response, StatusCode};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use kube::Client;
use kube_watcher::{Family, Settings};
use oxlb_operator::appliance::{Appliance, Credentials, EndpointUpdates};
use oxlb_operator::fleet::Fleet;
use oxlb_operator::ipam::{self, Ipam};
use oxlb_operator::reconcile::{self, Context, FINALIZER};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::appliance::FakeAppliance;

/// Longer than any reconcile here takes (the appliance client's own timeout is 5 s).
const BOUND: Duration = Duration::from_secs(10);
const SERVICE_PATH: &str = "/api/v1/namespaces/shop/services/web";
const MERGE: &str = "application/merge-patch+json";

/// Awaits `f`, failing the test after [`BOUND`].
async fn bounded<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {BOUND:?}"))
}

/// One request to the Kubernetes API.
#[derive(Debug, Clone, PartialEq)]
struct Call {
    method: String,
    /// Path and query as sent.
    uri: String,
    content_type: Option<String>,
    /// `Null` when the request had no body.
    body: Value,
}

/// The call a JSON merge patch of `uri` with `body` is.
fn merge_patch(uri: &str, body: Value) -> Call {
    Call {
        method: "PATCH".into(),
        uri: uri.into(),
        content_type: Some(MERGE.into()),
        body,
    }
}

/// What the mocked API server holds and what it was asked, shared with the test.
#[derive(Clone, Default)]
struct ApiMock {
    calls: Arc<Mutex<Vec<Call>>>,
    /// `namespace/name` -> Service.
    services: Arc<Mutex<BTreeMap<String, Value>>>,
    resource_version: Arc<Mutex<u64>>,
}

fn status(code: StatusCode, message: String) -> (StatusCode, Value) {
    let reason = if code == StatusCode::CONFLICT {
        "Conflict"
    } else {
        "NotFound"
    };
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16()});
    (code, body)
}

impl ApiMock {
    /// A client whose requests this mock answers until every clone of the client is dropped.
    fn client(&self) -> (Client, tokio::task::JoinHandle<()>) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api = self.clone();
        let server = tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                let (parts, body) = req.into_parts();
                let bytes = body.collect_bytes().await.expect("request body");
                let body = if bytes.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&bytes).expect("a JSON request body")
                };
                let call = Call {
                    method: parts.method.to_string(),
                    uri: parts.uri.to_string(),
                    content_type: parts
                        .headers
                        .get(http::header::CONTENT_TYPE)
                        .map(|v| v.to_str().unwrap().to_owned()),
                    body,
                };
                let (code, reply) = api.answer(&call);
                api.calls.lock().unwrap().push(call);
                send.send_response(
                    Response::builder()
                        .status(code)
                        .header(http::header::CONTENT_TYPE, "application/json")
                        .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                        .unwrap(),
                );
            }
        });
        (Client::new(service, "default"), server)
    }

    fn answer(&self, call: &Call) -> (StatusCode, Value) {
        let path = call.uri.split('?').next().unwrap_or_default();
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (call.method.as_str(), parts.as_slice()) {
            ("PATCH", ["api", "v1", "namespaces", ns, "services", name, rest @ ..])
                if call.content_type.as_deref() == Some(MERGE) && rest.len() <= 1 =>
            {
                let mut services = self.services.lock().unwrap();
                let Some(obj) = services.get_mut(&format!("{ns}/{name}")) else {
                    return status(
                        StatusCode::NOT_FOUND,
                        format!("services {name:?} not found"),
                    );
                };
                let status_only = rest == ["status"];
                if !status_only {
                    let wanted = &call.body["metadata"]["resourceVersion"];
                    if !wanted.is_null() && *wanted != obj["metadata"]["resourceVersion"] {
                        return status(StatusCode::CONFLICT, "the object has been modified".into());
                    }
                }
                let patch = if status_only {
                    json!({"status": call.body["status"]})
                } else {
                    call.body.clone()
                };
                json_patch::merge(obj, &patch);
                let mut rv = self.resource_version.lock().unwrap();
                *rv += 1;
                obj["metadata"]["resourceVersion"] = json!(rv.to_string());
                (StatusCode::OK, obj.clone())
            }
            ("POST", ["apis", "events.k8s.io", "v1", "namespaces", _, "events"]) => {
                (StatusCode::CREATED, call.body.clone())
            }
            _ => status(StatusCode::NOT_FOUND, format!("no route for {path}")),
        }
    }

    /// Stores `svc` as the API server's copy, with a new resourceVersion.
    fn put(&self, mut svc: Value) {
        let mut rv = self.resource_version.lock().unwrap();
        *rv += 1;
        svc["metadata"]["resourceVersion"] = json!(rv.to_string());
        let key = format!(
            "{}/{}",
            svc["metadata"]["namespace"].as_str().unwrap(),
            svc["metadata"]["name"].as_str().unwrap()
        );
        self.services.lock().unwrap().insert(key, svc);
    }

    /// The API server's copy of `namespace/name`, as a watch would deliver it.
    fn service(&self, key: &str) -> Arc<Service> {
        let v = self.services.lock().unwrap()[key].clone();
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }
}

fn service_json(name: &str, annotations: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"),
                     "annotations": annotations},
        "spec": {"type": "LoadBalancer", "loadBalancerClass": "loxilb.io/loxilb",
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080,
                            "nodePort": 30080}]}})
}

fn slice(service: &str, pods: &[&str]) -> EndpointSlice {
    let endpoints: Vec<Value> = pods
        .iter()
        .map(|p| json!({"addresses": [p], "conditions": {"ready": true}}))
        .collect();
    serde_json::from_value(
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "addressType": "IPv4",
        "metadata": {"name": format!("{service}-abc"), "namespace": "shop",
                     "labels": {"kubernetes.io/service-name": service}},
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints}),
    )
    .unwrap()
}

/// `--externalSecondaryCIDRs` of every operator here.
const SECONDARY_CIDRS: &str = "124.124.124.0/24,125.125.125.0/24";

/// One operator: a context as `run` builds it (pool 198.18.100.0/24, secondary pools
/// [`SECONDARY_CIDRS`], zone `llb`, pod network), over the mocked API and one fake appliance, with the EndpointSlice store's writer
/// in the test's hands.
struct Operator {
    ctx: Arc<Context>,
    slices: Writer<EndpointSlice>,
}

impl Operator {
    /// Starts with its IPAM rebuilt from the Services the API holds, as `run` does at start.
    fn start(client: &Client, api: &ApiMock, appliance_url: &str) -> Operator {
        let settings = Settings {
            use_pod_network: true,
            ..Settings::default()
        };
        let mut ipam = Ipam::new(
            ipam::pools_from_flags("198.18.100.0/24", "").unwrap(),
            false,
        );
        let existing: Vec<Service> = api
            .services
            .lock()
            .unwrap()
            .values()
            .map(|v| serde_json::from_value(v.clone()).unwrap())
            .collect();
        reconcile::rebuild(&mut ipam, &existing, &settings.lb_class, &settings.zone);
        // Rebuilt lazily, from the appliance, by the reconcile that needs it.
        let secondary_pools = ipam::secondary_pools_from_flag(SECONDARY_CIDRS).unwrap();
        let (slices, writer) = reflector::store::<EndpointSlice>();
        let (nodes, _) = reflector::store::<Node>();
        let appliance = Appliance::new(
            appliance_url,
            &Credentials::default(),
            EndpointUpdates::Replace,
        )
        .unwrap();
        let ctx = Arc::new(Context {
            client: client.clone(),
            appliances: Fleet::new(vec![appliance]),
            ipam: Mutex::new(ipam),
            secondary_ipam: Mutex::new(Ipam::new(secondary_pools.clone(), false)),
            secondary_pools,
            settings,
            slices,
            nodes,
            recorder: Recorder::new(
                client.clone(),
                Reporter {
                    controller: "oxlb-operator".into(),
                    instance: None,
                },
            ),
            resync: Duration::from_secs(60),
            failures: Mutex::new(Default::default()),
            status_written: Mutex::new(Default::default()),
            error_counts: Mutex::new(Default::default()),
        });
        Operator {
            ctx,
            slices: writer,
        }
    }

    fn set_slice(&mut self, s: EndpointSlice) {
        self.slices.apply_watcher_event(&watcher::Event::Apply(s));
    }

    async fn reconcile(&self, svc: Arc<Service>) -> Result<Action, reconcile::Error> {
        bounded("reconcile", reconcile::reconcile(svc, self.ctx.clone())).await
    }

    fn address_of(&self, key: &str) -> Option<std::net::IpAddr> {
        self.ctx.ipam.lock().unwrap().address_of(key, Family::V4)
    }
}

/// The appliance's rules as `name vip:port/proto -> ep:port,...`.
fn rules_on(a: &FakeAppliance) -> Vec<String> {
    a.rules()
        .iter()
        .map(|r| {
            let sa = &r.service_arguments;
            let eps: Vec<String> = r
                .endpoints
                .iter()
                .map(|e| format!("{}:{}", e.endpoint_ip, e.target_port))
                .collect();
            format!(
                "{} {}:{}/{} -> {}",
                sa.name,
                sa.external_ip,
                sa.port,
                sa.protocol,
                eps.join(",")
            )
        })
        .collect()
}

/// The fake appliance, serving on a free loopback port, and its URL.
fn appliance() -> (FakeAppliance, String) {
    let a = FakeAppliance::default();
    let url = format!("http://127.0.0.1:{}", a.start());
    (a, url)
}

/// What most tests start from: a mocked API holding Service `shop/web` (no finalizer, no
/// status) with two ready pods, a client of it, the fake appliance and an operator over them.
struct Web {
    api: ApiMock,
    client: Client,
    appliance: FakeAppliance,
    url: String,
    op: Operator,
}

fn web_fixture() -> Web {
    let api = ApiMock::default();
    api.put(service_json("web", json!({})));
    let (client, _server) = api.client();
    let (appliance, url) = appliance();
    let mut op = Operator::start(&client, &api, &url);
    op.set_slice(slice("web", &["10.244.1.5", "10.244.1.6"]));
    Web {
        api,
        client,
        appliance,
        url,
        op,
    }
}

/// Reconciles the new `shop/web` and checks it reached the state the add test asserts.
async fn add_web(api: &ApiMock, appliance: &FakeAppliance, op: &Operator) {
    let action = op.reconcile(api.service("shop/web")).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(60)));
    assert_eq!(api.take_calls().len(), 2);
    assert_eq!(
        rules_on(appliance),
        vec!["shop_web:llb-inst0 198.18.100.1:80/tcp -> 10.244.1.5:8080,10.244.1.6:8080"]
    );
    appliance.take_requests();
}

#[tokio::test]
async fn a_new_service_gets_the_finalizer_then_its_rule_then_the_status_with_its_address() {
    let Web {
        api, appliance, op, ..
    } = web_fixture();

    let action = op.reconcile(api.service("shop/web")).await.unwrap();

    assert_eq!(action, Action::requeue(Duration::from_secs(60)));
    assert_eq!(
        api.take_calls(),
        vec![
            // Guarded by the version reconcile saw ("1"), so a concurrent change is not lost.
            merge_patch(
                &format!("{SERVICE_PATH}?"),
                json!({"metadata": {"finalizers": [FINALIZER], "resourceVersion": "1"}})
            ),
            merge_patch(
                &format!("{SERVICE_PATH}/status?"),
                json!({"status": {"loadBalancer": {"ingress": [{"hostname": "llb-198.18.100.1"}]}}})
            ),
        ]
    );
    assert_eq!(
        appliance.take_requests(),
        vec!["GET all", "POST 198.18.100.1:80/tcp 2"]
    );
    assert_eq!(
        rules_on(&appliance),
        vec!["shop_web:llb-inst0 198.18.100.1:80/tcp -> 10.244.1.5:8080,10.244.1.6:8080"]
    );
    assert_eq!(
        op.address_of("shop/web"),
        Some("198.18.100.1".parse().unwrap())
    );
}

#[tokio::test]
async fn an_endpoint_slice_change_updates_the_rule_and_writes_nothing_to_kubernetes() {
    let Web {
        api,
        appliance,
        mut op,
        ..
    } = web_fixture();
    add_web(&api, &appliance, &op).await;

    op.set_slice(slice("web", &["10.244.1.5", "10.244.1.6", "10.244.2.9"]));
    op.reconcile(api.service("shop/web")).await.unwrap();

    assert_eq!(api.take_calls(), vec![]);
    assert_eq!(
        appliance.take_requests(),
        vec!["GET all", "POST 198.18.100.1:80/tcp 3"]
    );
    assert_eq!(
        rules_on(&appliance),
        vec!["shop_web:llb-inst0 198.18.100.1:80/tcp -> 10.244.1.5:8080,10.244.1.6:8080,10.244.2.9:8080"]
    );

    // Level-triggered: the same state again changes nothing anywhere.
    op.reconcile(api.service("shop/web")).await.unwrap();
    assert_eq!(api.take_calls(), vec![]);
    assert_eq!(appliance.take_requests(), vec!["GET all"]);
}

#[tokio::test]
async fn a_deleted_service_loses_its_rule_and_address_then_only_our_finalizer() {
    let Web {
        api, appliance, op, ..
    } = web_fixture();
    add_web(&api, &appliance, &op).await;
    // Deleted by a user while another controller also holds it: the API server sets the
    // deletion timestamp and keeps the object until every finalizer is gone.
    {
        let mut services = api.services.lock().unwrap();
        let svc = services.get_mut("shop/web").unwrap();
        svc["metadata"]["finalizers"] = json!(["example.com/keep", FINALIZER]);
        svc["metadata"]["deletionTimestamp"] =
            serde_json::to_value(Time(k8s_openapi::jiff::Timestamp::now())).unwrap();
    }
    let svc = api.service("shop/web");
    let seen_version = svc.metadata.resource_version.clone().unwrap();

    let action = op.reconcile(svc).await.unwrap();

    assert_eq!(action, Action::await_change());
    assert_eq!(
        appliance.take_requests(),
        vec!["GET all", "DELETE 198.18.100.1:80/tcp"]
    );
    assert_eq!(rules_on(&appliance), Vec::<String>::new());
    assert_eq!(
        api.take_calls(),
        vec![merge_patch(
            &format!("{SERVICE_PATH}?"),
            json!({"metadata": {"finalizers": ["example.com/keep"], "resourceVersion": seen_version}})
        )]
    );
    assert_eq!(op.address_of("shop/web"), None);
}

#[tokio::test]
async fn a_bad_lbmode_posts_a_warning_event_and_leaves_the_appliance_and_the_service_alone() {
    let api = ApiMock::default();
    api.put(service_json("web", json!({"loxilb.io/lbmode": "nat"})));
    let (client, server) = api.client();
    let (appliance, url) = appliance();
    let mut op = Operator::start(&client, &api, &url);
    drop(client);
    op.set_slice(slice("web", &["10.244.1.5"]));
    let svc = api.service("shop/web");

    let err = op.reconcile(svc.clone()).await.unwrap_err();
    assert_eq!(err.label(), "bad_annotation");
    let action = reconcile::error_policy(svc, &err, op.ctx.clone());
    assert_eq!(action, Action::requeue(Duration::from_secs(1)));
    // The Event goes out from a task of its own; once it is done no client is left and the
    // mock server ends.
    drop(op);
    bounded("the Event and the end of the mock server", server)
        .await
        .unwrap();

    let mut calls = api.take_calls();
    assert_eq!(calls.len(), 1, "{calls:#?}");
    let mut event = calls.remove(0);
    // Name and time are generated: present, then left out of the comparison.
    let generated = event.body.as_object_mut().unwrap();
    assert!(generated.remove("eventTime").is_some());
    let name = generated["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("name")
        .unwrap();
    assert!(name.as_str().unwrap().starts_with("web."), "{name}");
    assert_eq!(
        event,
        Call {
            method: "POST".into(),
            uri: "/apis/events.k8s.io/v1/namespaces/shop/events?".into(),
            content_type: Some("application/json".into()),
            body: json!({
                "apiVersion": "events.k8s.io/v1",
                "kind": "Event",
                "metadata": {"namespace": "shop"},
                "type": "Warning",
                "reason": "BadAnnotation",
                "note": "annotation loxilb.io/lbmode=\"nat\" is invalid: use default, onearm, fullnat, dsr, fullproxy or hostonearm",
                "action": "Reconcile",
                "regarding": {"apiVersion": "v1", "kind": "Service", "namespace": "shop", "name": "web", "uid": "uid-web"},
                "reportingController": "oxlb-operator",
                "reportingInstance": "oxlb-operator",
            }),
        }
    );
    assert_eq!(appliance.calls(), 0, "{:?}", appliance.take_requests());
    assert!(api.services.lock().unwrap()["shop/web"]["metadata"]
        .get("finalizers")
        .is_none());
}

#[tokio::test]
async fn a_restarted_operator_keeps_the_address_from_the_status_and_writes_nothing() {
    let Web {
        api,
        client,
        appliance,
        url,
        op,
    } = web_fixture();
    add_web(&api, &appliance, &op).await;
    drop(op);
    // Another Service on the same port appears while the operator is down.
    api.put(service_json("web2", json!({})));

    let mut op = Operator::start(&client, &api, &url);
    op.set_slice(slice("web", &["10.244.1.5", "10.244.1.6"]));
    op.set_slice(slice("web2", &["10.244.3.3"]));
    // Rebuilt from the status alone, before any reconcile.
    assert_eq!(
        op.address_of("shop/web"),
        Some("198.18.100.1".parse().unwrap())
    );

    // The newcomer is reconciled first and must not be given the address web holds.
    op.reconcile(api.service("shop/web2")).await.unwrap();
    assert_eq!(
        op.address_of("shop/web2"),
        Some("198.18.100.2".parse().unwrap())
    );
    let status_of_web2 = api.take_calls().pop().unwrap();
    assert_eq!(
        status_of_web2.body,
        json!({"status": {"loadBalancer": {"ingress": [{"hostname": "llb-198.18.100.2"}]}}})
    );
    appliance.take_requests();

    op.reconcile(api.service("shop/web")).await.unwrap();
    assert_eq!(api.take_calls(), vec![]);
    assert_eq!(appliance.take_requests(), vec!["GET all"]);
    assert_eq!(
        op.address_of("shop/web"),
        Some("198.18.100.1".parse().unwrap())
    );
    assert_eq!(
        rules_on(&appliance),
        vec![
            "shop_web:llb-inst0 198.18.100.1:80/tcp -> 10.244.1.5:8080,10.244.1.6:8080",
            "shop_web2:llb-inst0 198.18.100.2:80/tcp -> 10.244.3.3:8080",
        ]
    );
}

/// An SCTP Service `shop/<name>` on port 38412 with `annotations`, and its one-pod slice.
fn sctp_service(name: &str, annotations: Value) -> (Value, EndpointSlice) {
    let mut svc = service_json(name, annotations);
    svc["spec"]["ports"] = json!([{"name": "ngap", "port": 38412, "protocol": "SCTP",
        "targetPort": 38412, "nodePort": 30412}]);
    let slice = serde_json::from_value(json!({"apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice", "addressType": "IPv4",
        "metadata": {"name": format!("{name}-abc"), "namespace": "shop",
                     "labels": {"kubernetes.io/service-name": name}},
        "ports": [{"name": "ngap", "port": 38412, "protocol": "SCTP"}],
        "endpoints": [{"addresses": ["10.244.7.7"], "conditions": {"ready": true}}]}))
    .unwrap();
    (svc, slice)
}

/// The secondary addresses of the appliance's rules, per rule name.
fn secondaries_on(a: &FakeAppliance) -> Vec<(String, Vec<String>)> {
    a.rules()
        .iter()
        .map(|r| {
            let ips = r
                .secondary_ips
                .iter()
                .map(|s| s.secondary_ip.clone())
                .collect();
            (r.service_arguments.name.clone(), ips)
        })
        .collect()
}

#[tokio::test]
async fn an_sctp_service_asking_for_two_secondaries_gets_one_from_each_secondary_pool() {
    let api = ApiMock::default();
    let (svc, slice) = sctp_service("sig", json!({"loxilb.io/num-secondary-networks": "2"}));
    api.put(svc);
    let (client, _server) = api.client();
    let (appliance, url) = appliance();
    let mut op = Operator::start(&client, &api, &url);
    op.set_slice(slice);

    op.reconcile(api.service("shop/sig")).await.unwrap();

    // The status shows the primary address only, as kube-loxilb writes it.
    assert_eq!(
        api.take_calls().pop().unwrap(),
        merge_patch(
            "/api/v1/namespaces/shop/services/sig/status?",
            json!({"status": {"loadBalancer": {"ingress": [{"hostname": "llb-198.18.100.1"}]}}})
        )
    );
    // One GET to adopt secondaries other rules carry, one for the sync.
    assert_eq!(
        appliance.take_requests(),
        vec!["GET all", "GET all", "POST 198.18.100.1:38412/sctp 1"]
    );
    let rules = appliance.rules();
    assert_eq!(rules.len(), 1);
    // The exact body the appliance received (mode 0, dnat, is left out as loxilb's default).
    assert_eq!(
        serde_json::to_value(&rules[0]).unwrap(),
        json!({
            "serviceArguments": {"externalIP": "198.18.100.1", "port": 38412, "protocol": "sctp",
                "name": "shop_sig:llb-inst0", "inactiveTimeOut": 1800, "managed": true},
            "endpoints": [{"endpointIP": "10.244.7.7", "targetPort": 38412, "weight": 1}],
            "secondaryIPs": [{"secondaryIP": "124.124.124.1"}, {"secondaryIP": "125.125.125.1"}],
            "allowedSources": [],
        })
    );
    // What the appliance's own validation makes of it: accepted, sorted.
    oxlb_api::validate::validate(&rules[0]).expect("the appliance accepts the rule");

    // Asking for one: the second goes back to its pool and the rule is rewritten.
    let mut changed = api.services.lock().unwrap()["shop/sig"].clone();
    changed["metadata"]["annotations"]["loxilb.io/num-secondary-networks"] = json!("1");
    api.put(changed);
    op.reconcile(api.service("shop/sig")).await.unwrap();
    assert_eq!(
        secondaries_on(&appliance),
        vec![(
            "shop_sig:llb-inst0".to_owned(),
            vec!["124.124.124.1".to_owned()]
        )]
    );
    let sec = op.ctx.secondary_ipam.lock().unwrap();
    assert_eq!(
        sec.address_of(&ipam::secondary_holder("shop/sig", 2), Family::V4),
        None
    );
}

#[tokio::test]
async fn a_restarted_operator_keeps_secondaries_the_appliance_carries_and_frees_them_on_delete() {
    let api = ApiMock::default();
    let (svc, slice) = sctp_service("sig", json!({"loxilb.io/num-secondary-networks": "2"}));
    api.put(svc);
    let (client, _server) = api.client();
    let (appliance, url) = appliance();
    let mut op = Operator::start(&client, &api, &url);
    op.set_slice(slice.clone());
    op.reconcile(api.service("shop/sig")).await.unwrap();
    drop(op);
    // A second Service on the same SCTP port appears while the operator is down.
    let (svc2, slice2) = sctp_service("sig2", json!({"loxilb.io/num-secondary-networks": "1"}));
    api.put(svc2);
    let mut op = Operator::start(&client, &api, &url);
    op.set_slice(slice);
    op.set_slice(slice2);
    api.take_calls();
    appliance.take_requests();

    // The newcomer first: it must not be given what sig's rule carries.
    op.reconcile(api.service("shop/sig2")).await.unwrap();
    op.reconcile(api.service("shop/sig")).await.unwrap();

    assert_eq!(
        secondaries_on(&appliance),
        vec![
            (
                "shop_sig:llb-inst0".to_owned(),
                vec!["124.124.124.1".to_owned(), "125.125.125.1".to_owned()]
            ),
            (
                "shop_sig2:llb-inst0".to_owned(),
                vec!["124.124.124.2".to_owned()]
            ),
        ]
    );
    // sig's rule was left alone: it was adopted, not reallocated.
    let requests = appliance.take_requests();
    assert!(
        !requests.iter().any(|r| r.starts_with("POST 198.18.100.1:")),
        "{requests:?}"
    );

    // Deleted: its secondaries go back, and the next Service gets them.
    {
        let mut services = api.services.lock().unwrap();
        let svc = services.get_mut("shop/sig").unwrap();
        svc["metadata"]["deletionTimestamp"] =
            serde_json::to_value(Time(k8s_openapi::jiff::Timestamp::now())).unwrap();
    }
    op.reconcile(api.service("shop/sig")).await.unwrap();
    let sec = op.ctx.secondary_ipam.lock().unwrap();
    for n in 1..=2 {
        assert_eq!(
            sec.address_of(&ipam::secondary_holder("shop/sig", n), Family::V4),
            None
        );
    }
}

#[tokio::test]
async fn secondaries_on_a_tcp_service_or_in_full_nat_are_refused_before_any_appliance_call() {
    for (annotations, ports_sctp, want) in [
        (
            json!({"loxilb.io/num-secondary-networks": "1"}),
            false,
            "the Service has no SCTP port",
        ),
        (
            json!({"loxilb.io/secondaryIPs": "124.124.124.9", "loxilb.io/lbmode": "fullnat"}),
            true,
            "lbmode default (dnat) only, not mode 2",
        ),
        (
            json!({"loxilb.io/secondaryIPs": "fd00::9"}),
            true,
            "secondary address fd00::9 is not of the family",
        ),
        (
            json!({"loxilb.io/num-secondary-networks": "3"}),
            true,
            "asks for 3 secondary address(es) but --externalSecondaryCIDRs defines 2 pool(s)",
        ),
    ] {
        let api = ApiMock::default();
        let (mut svc, slice) = sctp_service("sig", annotations.clone());
        if !ports_sctp {
            svc["spec"]["ports"][0]["protocol"] = json!("TCP");
        }
        api.put(svc);
        let (client, _server) = api.client();
        let (appliance, url) = appliance();
        let mut op = Operator::start(&client, &api, &url);
        op.set_slice(slice);

        let err = op.reconcile(api.service("shop/sig")).await.unwrap_err();

        assert!(err.to_string().contains(want), "{annotations}: {err}");
        let rules = appliance.rules();
        assert!(rules.is_empty(), "{annotations}: {rules:?}");
    }
}
