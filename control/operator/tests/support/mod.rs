//! Test support: a small stand-in Kubernetes API server (lists and watches with
//! resourceVersions and bookmarks, merge / JSON patches, the status subresource, finalizers,
//! events, kube-loxilb's LoxiURL and BGPPeerService objects), a fake appliance that records requests, and a runner for the operator binary.
#![allow(dead_code)]

pub mod appliance;
pub mod operator;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// The resources the stand-in serves: plural -> (apiVersion, kind, namespaced).
fn meta_of(plural: &str) -> (&'static str, &'static str) {
    match plural {
        "services" => ("v1", "Service"),
        "nodes" => ("v1", "Node"),
        "endpointslices" => ("discovery.k8s.io/v1", "EndpointSlice"),
        "loxiurls" => ("loxiurl.loxilb.io/v1", "LoxiURL"),
        "bgppeerservices" => ("bgppeer.loxilb.io/v1", "BGPPeerService"),
        _ => ("v1", "Unknown"),
    }
}

#[derive(Default)]
struct Inner {
    rv: u64,
    /// (plural, namespace, name) -> object
    objects: BTreeMap<(String, String, String), Value>,
    /// (rv, plural, type, object)
    history: Vec<(u64, String, &'static str, Value)>,
    events: Vec<Value>,
    patches: Vec<(String, String, Value)>,
}

/// The stand-in API server's state, shared with the test.
#[derive(Clone, Default)]
pub struct ApiServer {
    inner: Arc<Mutex<Inner>>,
    changed: Arc<Notify>,
}

impl ApiServer {
    fn record(&self, inner: &mut Inner, plural: &str, ty: &'static str, obj: Value) {
        inner.history.push((inner.rv, plural.to_owned(), ty, obj));
        self.changed.notify_waiters();
    }

    /// Creates or replaces an object (namespace "" for cluster-scoped ones).
    pub fn apply(&self, plural: &str, mut obj: Value) {
        let mut g = self.inner.lock().unwrap();
        g.rv += 1;
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        let name = obj["metadata"]["name"].as_str().unwrap().to_owned();
        let k = (plural.to_owned(), ns, name);
        let ty = if let Some(old) = g.objects.get(&k) {
            // Keep what the controller owns: finalizers and status.
            if obj["metadata"].get("finalizers").is_none() {
                obj["metadata"]["finalizers"] = old["metadata"]["finalizers"].clone();
            }
            if obj.get("status").is_none() {
                obj["status"] = old["status"].clone();
            }
            "MODIFIED"
        } else {
            "ADDED"
        };
        obj["metadata"]["resourceVersion"] = json!(g.rv.to_string());
        obj["metadata"]["uid"] = json!(format!("uid-{}", k.2));
        g.objects.insert(k, obj.clone());
        self.record(&mut g, plural, ty, obj);
    }

    /// Deletes an object as the API server does: with finalizers it only gets a
    /// deletionTimestamp; it goes away when the last finalizer is removed.
    pub fn delete(&self, plural: &str, ns: &str, name: &str) {
        let mut g = self.inner.lock().unwrap();
        let k = (plural.to_owned(), ns.to_owned(), name.to_owned());
        let Some(mut obj) = g.objects.get(&k).cloned() else {
            return;
        };
        g.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(g.rv.to_string());
        let has_finalizers = obj["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if has_finalizers {
            obj["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
            g.objects.insert(k, obj.clone());
            self.record(&mut g, plural, "MODIFIED", obj);
        } else {
            g.objects.remove(&k);
            self.record(&mut g, plural, "DELETED", obj);
        }
    }

    pub fn get(&self, plural: &str, ns: &str, name: &str) -> Option<Value> {
        let g = self.inner.lock().unwrap();
        g.objects
            .get(&(plural.to_owned(), ns.to_owned(), name.to_owned()))
            .cloned()
    }

    pub fn events(&self) -> Vec<Value> {
        self.inner.lock().unwrap().events.clone()
    }

    pub fn patches(&self) -> Vec<(String, String, Value)> {
        self.inner.lock().unwrap().patches.clone()
    }

    /// Serves on `listener` until the runtime stops.
    pub fn serve(&self, listener: std::net::TcpListener) {
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let app = Router::new()
            .route(
                "/version",
                get(|| async {
                    Json(json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0"}))
                }),
            )
            .route("/api/v1/{plural}", get(list_or_watch))
            .route("/apis/discovery.k8s.io/v1/{plural}", get(list_or_watch))
            // kube-loxilb's custom resources (cluster-scoped).
            .route("/apis/loxiurl.loxilb.io/v1/{plural}", get(list_or_watch))
            .route("/apis/bgppeer.loxilb.io/v1/{plural}", get(list_or_watch))
            .route(
                "/api/v1/namespaces/{ns}/services/{name}",
                get(get_service).patch(patch_service),
            )
            .route(
                "/api/v1/namespaces/{ns}/services/{name}/status",
                axum::routing::patch(patch_status),
            )
            .route(
                "/apis/events.k8s.io/v1/namespaces/{ns}/events",
                post(post_event),
            )
            .route(
                "/apis/events.k8s.io/v1/namespaces/{ns}/events/{name}",
                axum::routing::patch(patch_event),
            )
            .with_state(self.clone());
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
    }
}

fn status(code: StatusCode, msg: &str) -> Response {
    (
        code,
        Json(
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": msg,
                    "reason": "Invalid", "code": code.as_u16()}),
        ),
    )
        .into_response()
}

async fn list_or_watch(
    State(s): State<ApiServer>,
    Path(plural): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (api_version, kind) = meta_of(&plural);
    if q.get("watch").map(String::as_str) != Some("true") {
        let g = s.inner.lock().unwrap();
        let items: Vec<Value> = g
            .objects
            .iter()
            .filter(|(k, _)| k.0 == plural)
            .map(|(_, v)| v.clone())
            .collect();
        return Json(
            json!({"apiVersion": api_version, "kind": format!("{kind}List"),
                           "metadata": {"resourceVersion": g.rv.to_string()}, "items": items}),
        )
        .into_response();
    }
    let from: u64 = q
        .get("resourceVersion")
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .unwrap_or(290u64)
        .min(30);
    let bookmarks = q.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let deadline = Instant::now() + Duration::from_secs(timeout);
    let stream = async_stream(s, plural, api_version, kind, from, bookmarks, deadline);
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap()
}

/// The watch body: every change after `from`, newline-delimited, plus a bookmark about every
/// second, until `deadline`.
fn async_stream(
    s: ApiServer,
    plural: String,
    api_version: &'static str,
    kind: &'static str,
    from: u64,
    bookmarks: bool,
    deadline: Instant,
) -> impl futures_stream::Stream<Item = Result<Bytes, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    tokio::spawn(async move {
        let mut sent = from;
        while Instant::now() < deadline {
            let notified = s.changed.notified();
            let (lines, rv) = {
                let g = s.inner.lock().unwrap();
                let lines: Vec<(u64, String)> = g
                    .history
                    .iter()
                    .filter(|(rv, p, _, _)| *rv > sent && *p == plural)
                    .map(|(rv, _, ty, o)| (*rv, json!({"type": ty, "object": o}).to_string()))
                    .collect();
                (lines, g.rv)
            };
            for (rv, line) in lines {
                sent = rv;
                if tx.send(Ok(Bytes::from(line + "\n"))).await.is_err() {
                    return;
                }
            }
            if bookmarks {
                let bm = json!({"type": "BOOKMARK", "object": {"apiVersion": api_version, "kind": kind,
                                "metadata": {"resourceVersion": rv.max(sent).to_string()}}});
                if tx
                    .send(Ok(Bytes::from(bm.to_string() + "\n")))
                    .await
                    .is_err()
                {
                    return;
                }
                sent = sent.max(rv);
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
        }
    });
    futures_stream::ReceiverStream(rx)
}

mod futures_stream {
    pub use futures::Stream;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    pub struct ReceiverStream<T>(pub tokio::sync::mpsc::Receiver<T>);

    impl<T> Stream for ReceiverStream<T> {
        type Item = T;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
            self.0.poll_recv(cx)
        }
    }
}

async fn get_service(
    State(s): State<ApiServer>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    match s.get("services", &ns, &name) {
        Some(v) => Json(v).into_response(),
        None => status(StatusCode::NOT_FOUND, "not found"),
    }
}

/// Applies a merge or JSON patch to the service, the whole object or only its status.
fn apply_patch(
    s: &ApiServer,
    ns: &str,
    name: &str,
    headers: &HeaderMap,
    body: &[u8],
    status_only: bool,
) -> Response {
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let Ok(patch) = serde_json::from_slice::<Value>(body) else {
        return status(StatusCode::BAD_REQUEST, "patch body is not JSON");
    };
    let mut g = s.inner.lock().unwrap();
    g.patches.push((
        format!("{ns}/{name}{}", if status_only { "/status" } else { "" }),
        ct.clone(),
        patch.clone(),
    ));
    let k = ("services".to_owned(), ns.to_owned(), name.to_owned());
    let Some(old) = g.objects.get(&k).cloned() else {
        return status(StatusCode::NOT_FOUND, "not found");
    };
    let mut new = old.clone();
    if ct.starts_with("application/merge-patch+json") {
        if let Some(rv) = patch["metadata"]["resourceVersion"].as_str() {
            if rv != old["metadata"]["resourceVersion"] {
                return status(StatusCode::CONFLICT, "the object has been modified");
            }
        }
        json_patch::merge(&mut new, &patch);
    } else if ct.starts_with("application/json-patch+json") {
        let Ok(p) = serde_json::from_value::<json_patch::Patch>(patch) else {
            return status(StatusCode::BAD_REQUEST, "bad JSON patch");
        };
        if json_patch::patch(&mut new, &p).is_err() {
            return status(StatusCode::UNPROCESSABLE_ENTITY, "JSON patch test failed");
        }
    } else {
        return status(StatusCode::UNSUPPORTED_MEDIA_TYPE, &ct);
    }
    if status_only {
        let mut kept = old.clone();
        kept["status"] = new["status"].clone();
        new = kept;
    } else {
        new["status"] = old["status"].clone();
    }
    g.rv += 1;
    new["metadata"]["resourceVersion"] = json!(g.rv.to_string());
    let gone = new["metadata"].get("deletionTimestamp").is_some()
        && new["metadata"]["finalizers"]
            .as_array()
            .is_none_or(|f| f.is_empty());
    if gone {
        g.objects.remove(&k);
        s.record(&mut g, "services", "DELETED", new.clone());
    } else {
        g.objects.insert(k, new.clone());
        s.record(&mut g, "services", "MODIFIED", new.clone());
    }
    Json(new).into_response()
}

async fn patch_service(
    State(s): State<ApiServer>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    apply_patch(&s, &ns, &name, &headers, &body, false)
}

async fn patch_status(
    State(s): State<ApiServer>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    apply_patch(&s, &ns, &name, &headers, &body, true)
}

async fn post_event(State(s): State<ApiServer>, Json(ev): Json<Value>) -> Response {
    s.inner.lock().unwrap().events.push(ev.clone());
    (StatusCode::CREATED, Json(ev)).into_response()
}

async fn patch_event(State(s): State<ApiServer>, Json(ev): Json<Value>) -> Response {
    s.inner.lock().unwrap().events.push(ev.clone());
    Json(ev).into_response()
}

/// A kubeconfig pointing at the stand-in, written to `dir`.
/// A scratch directory for the test `what` in this process, and in it a kubeconfig for the
/// stand-in API server on `api_port`: (directory, kubeconfig).
pub fn scratch(what: &str, api_port: u16) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("oxlb-op-{what}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kc = kubeconfig(&dir, api_port);
    (dir, kc)
}

/// Waits (at most `secs`) until the Service `ns/name` has a status ingress, and returns it.
pub fn wait_for_ingress(
    api: &ApiServer,
    ns: &str,
    name: &str,
    secs: u64,
    diag: &dyn Fn() -> String,
) -> Value {
    wait_for(
        secs,
        "the status",
        || {
            api.get("services", ns, name)
                .filter(|s| s["status"]["loadBalancer"]["ingress"].is_array())
        },
        diag,
    )
}

pub fn kubeconfig(dir: &std::path::Path, port: u16) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:{port}\n\
             users:\n- name: u\n  user: {{}}\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\n    namespace: default\n\
             current-context: x\n"
        ),
    )
    .unwrap();
    path
}

/// A LoadBalancer Service of class `loxilb.io/loxilb`.
pub fn service(ns: &str, name: &str, port: u16, annotations: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": name, "namespace": ns, "annotations": annotations},
           "spec": {"type": "LoadBalancer", "loadBalancerClass": "loxilb.io/loxilb",
                    "ports": [{"name": "http", "port": port, "protocol": "TCP", "targetPort": 8080, "nodePort": 30080}]}})
}

/// An EndpointSlice of Service `ns/name` with `ips` ready on port 8080 (named `http`).
pub fn slice(ns: &str, name: &str, ips: &[&str]) -> Value {
    let eps: Vec<Value> = ips
        .iter()
        .map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}}))
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
           "metadata": {"name": format!("{name}-1"), "namespace": ns,
                        "labels": {"kubernetes.io/service-name": name}},
           "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}], "endpoints": eps})
}

/// Polls `f` every 100 ms until it returns `Some`, at most `secs` seconds.
pub fn wait_for<T>(
    secs: u64,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
    diag: &dyn Fn() -> String,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}\n{}",
            diag()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
