//! A fake oxlb appliance: the loxilb-compatible routes the operator uses, keeping rules in
//! memory and recording every request. It follows oxlb's semantics where the operator depends
//! on them: `oper` 1 attaches endpoints to an existing rule (same address and port: the new
//! weight), 2 detaches them, both refused for a missing rule (404) or when nothing would be
//! left (400); a bearer token, when set, is required on every path; `POST /config/cistate`
//! records roles; `POST /config/bgp/neigh` and `DELETE /config/bgp/neigh/{ip}?remoteAs=N`
//! keep BGP neighbours as loxilb does (409 for one it has), or answer 404 as oxlb (no BGP yet)
//! does after `refuse_bgp(true)`; `POST /config/bgp/global` records the global configuration
//! (404 too after `refuse_bgp(true)`). `hang` makes it stop answering, as a wedged appliance does.

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use oxlb_api::{ErrorResponse, LoadBalancerEntry, LoadBalancerList};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Default)]
pub struct FakeAppliance {
    pub rules: Arc<Mutex<Vec<LoadBalancerEntry>>>,
    requests: Arc<Mutex<Vec<String>>>,
    token: Arc<Mutex<Option<String>>>,
    hung: Arc<AtomicBool>,
    refused_auth: Arc<AtomicUsize>,
    /// Every cistate body posted, in order.
    roles: Arc<Mutex<Vec<Value>>>,
    /// Every request of any path, answered or not.
    calls: Arc<AtomicUsize>,
    /// BGP neighbours held (POST bodies).
    neighbors: Arc<Mutex<Vec<Value>>>,
    /// Every BGP neighbour call, with its time: `POST <body>` or `DELETE <ip> remoteAs=<n>`.
    bgp_calls: Arc<Mutex<Vec<(Instant, String)>>>,
    /// Answer BGP calls 404, as an appliance without BGP.
    no_bgp: Arc<AtomicBool>,
    /// Every BGP global configuration accepted (POST bodies), in order.
    bgp_global: Arc<Mutex<Vec<Value>>>,
}

fn refuse(code: StatusCode, msg: String) -> Response {
    (code, Json(ErrorResponse::new(code.as_u16(), msg))).into_response()
}

fn endpoints_of(e: &LoadBalancerEntry) -> String {
    e.endpoints
        .iter()
        .map(|p| format!("{}:{}", p.endpoint_ip, p.target_port))
        .collect::<Vec<_>>()
        .join(",")
}

async fn gate(State(f): State<FakeAppliance>, req: Request, next: Next) -> Response {
    f.calls.fetch_add(1, Ordering::Relaxed);
    if f.hung.load(Ordering::Relaxed) {
        // Longer than any client timeout; bounded so the task ends on its own.
        tokio::time::sleep(Duration::from_secs(10)).await;
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "hung".into());
    }
    let want = f.token.lock().unwrap().clone();
    if let Some(t) = want {
        let got = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if got != Some(format!("Bearer {t}").as_str()) {
            f.refused_auth.fetch_add(1, Ordering::Relaxed);
            return refuse(
                StatusCode::UNAUTHORIZED,
                "this API needs a token: send the header `Authorization: Bearer <token>`".into(),
            );
        }
    }
    next.run(req).await
}

async fn post_rule(State(f): State<FakeAppliance>, Json(e): Json<LoadBalancerEntry>) -> Response {
    let sa = &e.service_arguments;
    let key = kube_watcher::rule_key(&e);
    let what = format!("{}:{}/{}", sa.external_ip, sa.port, sa.protocol);
    let mut rules = f.rules.lock().unwrap();
    match sa.oper {
        0 => {
            f.requests
                .lock()
                .unwrap()
                .push(format!("POST {what} {}", e.endpoints.len()));
            rules.retain(|x| kube_watcher::rule_key(x) != key);
            rules.push(e);
        }
        1 | 2 => {
            let verb = if sa.oper == 1 { "ATTACH" } else { "DETACH" };
            f.requests
                .lock()
                .unwrap()
                .push(format!("{verb} {what} {}", endpoints_of(&e)));
            let Some(current) = rules.iter_mut().find(|x| kube_watcher::rule_key(x) == key) else {
                return refuse(
                    StatusCode::NOT_FOUND,
                    format!("no load-balancer rule for {what} to attach endpoints to or detach them from; create it with oper 0"),
                );
            };
            let mut next = current.endpoints.clone();
            for ep in &e.endpoints {
                next.retain(|x| {
                    !(x.endpoint_ip == ep.endpoint_ip && x.target_port == ep.target_port)
                });
                if sa.oper == 1 {
                    next.push(ep.clone());
                }
            }
            if next.is_empty() {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    format!("detaching these endpoints would leave {what} with none; delete the rule instead"),
                );
            }
            current.endpoints = next;
        }
        other => return refuse(StatusCode::BAD_REQUEST, format!("oper {other} is unknown")),
    }
    Json(json!({"result": "Success"})).into_response()
}

async fn post_neigh(State(f): State<FakeAppliance>, Json(v): Json<Value>) -> Response {
    f.bgp_calls
        .lock()
        .unwrap()
        .push((Instant::now(), format!("POST {v}")));
    if f.no_bgp.load(Ordering::Relaxed) {
        return refuse(
            StatusCode::NOT_FOUND,
            "no route for /netlox/v1/config/bgp/neigh".into(),
        );
    }
    let mut n = f.neighbors.lock().unwrap();
    if n.iter().any(|x| x["ipAddress"] == v["ipAddress"]) {
        return refuse(StatusCode::CONFLICT, "bgp neigh already exists".into());
    }
    n.push(v);
    StatusCode::NO_CONTENT.into_response()
}

async fn post_global(State(f): State<FakeAppliance>, Json(v): Json<Value>) -> Response {
    f.bgp_calls
        .lock()
        .unwrap()
        .push((Instant::now(), format!("GLOBAL {v}")));
    if f.no_bgp.load(Ordering::Relaxed) {
        return refuse(
            StatusCode::NOT_FOUND,
            "no route for /netlox/v1/config/bgp/global".into(),
        );
    }
    f.bgp_global.lock().unwrap().push(v);
    StatusCode::NO_CONTENT.into_response()
}

async fn delete_neigh(
    State(f): State<FakeAppliance>,
    Path(ip): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let remote_as = q.get("remoteAs").cloned().unwrap_or_default();
    f.bgp_calls
        .lock()
        .unwrap()
        .push((Instant::now(), format!("DELETE {ip} remoteAs={remote_as}")));
    if f.no_bgp.load(Ordering::Relaxed) {
        return refuse(StatusCode::NOT_FOUND, "no route".into());
    }
    let mut n = f.neighbors.lock().unwrap();
    let before = n.len();
    n.retain(|x| x["ipAddress"] != ip.as_str());
    if n.len() == before {
        return refuse(StatusCode::NOT_FOUND, format!("no bgp neigh {ip}"));
    }
    StatusCode::NO_CONTENT.into_response()
}

impl FakeAppliance {
    /// Serves on `listener` until the runtime stops.
    pub fn serve(&self, listener: std::net::TcpListener) {
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let app = Router::new()
            .route("/netlox/v1/", get(|| async { Json(json!({"status": "ok"})) }))
            .route(
                "/netlox/v1/config/loadbalancer/all",
                get(|State(f): State<FakeAppliance>| async move {
                    f.requests.lock().unwrap().push("GET all".into());
                    Json(LoadBalancerList {
                        lb_attr: f.rules.lock().unwrap().clone(),
                    })
                }),
            )
            .route("/netlox/v1/config/loadbalancer", post(post_rule))
            .route(
                "/netlox/v1/config/loadbalancer/externalipaddress/{ip}/port/{port}/protocol/{proto}",
                delete(
                    |State(f): State<FakeAppliance>,
                     Path((ip, port, proto)): Path<(String, i64, String)>| async move {
                        f.requests
                            .lock()
                            .unwrap()
                            .push(format!("DELETE {ip}:{port}/{proto}"));
                        f.rules
                            .lock()
                            .unwrap()
                            .retain(|x| kube_watcher::rule_key(x) != (ip.clone(), port, proto.clone()));
                        Json(json!({"result": "Success"}))
                    },
                ),
            )
            .route(
                "/netlox/v1/config/cistate",
                post(|State(f): State<FakeAppliance>, Json(v): Json<Value>| async move {
                    f.roles.lock().unwrap().push(v);
                    Json(json!({"result": "Success"}))
                }),
            )
            .route("/netlox/v1/config/bgp/global", post(post_global))
            .route("/netlox/v1/config/bgp/neigh", post(post_neigh))
            .route("/netlox/v1/config/bgp/neigh/{ip}", delete(delete_neigh))
            .layer(axum::middleware::from_fn_with_state(self.clone(), gate))
            .with_state(self.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    }

    /// Binds 127.0.0.1 on a free port, serves, returns the port.
    pub fn start(&self) -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        self.serve(l);
        port
    }

    /// Binds `addr` (`127.x.y.z:port`), serves; None when the address is taken.
    pub fn start_on(&self, addr: &str) -> Option<()> {
        let l = std::net::TcpListener::bind(addr).ok()?;
        self.serve(l);
        Some(())
    }

    /// Every BGP global configuration accepted, in order.
    pub fn bgp_global(&self) -> Vec<Value> {
        self.bgp_global.lock().unwrap().clone()
    }

    /// From now on every request needs `Authorization: Bearer <token>`.
    pub fn require_token(&self, token: &str) {
        *self.token.lock().unwrap() = Some(token.to_owned());
    }

    /// Requests refused for a missing or wrong token.
    pub fn refused_auth(&self) -> usize {
        self.refused_auth.load(Ordering::Relaxed)
    }

    /// Stops (or resumes) answering anything.
    pub fn hang(&self, hung: bool) {
        self.hung.store(hung, Ordering::Relaxed);
    }

    pub fn take_requests(&self) -> Vec<String> {
        std::mem::take(&mut *self.requests.lock().unwrap())
    }

    pub fn rules(&self) -> Vec<LoadBalancerEntry> {
        self.rules.lock().unwrap().clone()
    }

    /// Requests of any kind received so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::Relaxed)
    }

    /// Answer BGP neighbour calls 404 (as oxlb, which has no BGP yet), or serve them.
    pub fn refuse_bgp(&self, refuse: bool) {
        self.no_bgp.store(refuse, Ordering::Relaxed);
    }

    /// The BGP neighbours held, as posted.
    pub fn neighbors(&self) -> Vec<Value> {
        self.neighbors.lock().unwrap().clone()
    }

    /// Every BGP neighbour call so far, with its time.
    pub fn bgp_calls(&self) -> Vec<(Instant, String)> {
        self.bgp_calls.lock().unwrap().clone()
    }

    /// Every cistate body received, in order.
    pub fn roles(&self) -> Vec<Value> {
        self.roles.lock().unwrap().clone()
    }

    /// The last state set for `instance`.
    pub fn role(&self, instance: &str) -> Option<String> {
        self.roles()
            .iter()
            .rev()
            .find(|v| v["instance"] == instance)
            .and_then(|v| v["state"].as_str().map(str::to_owned))
    }
}
