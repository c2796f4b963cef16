//! A fake oxlb appliance: the loxilb-compatible routes the operator uses, keeping rules in
//! memory and recording every request. It follows oxlb's semantics where the operator depends
//! on them: `oper` 1 attaches endpoints to an existing rule (same address and port: the new
//! weight), 2 detaches them, both refused for a missing rule (404) or when nothing would be
//! left (400); a bearer token, when set, is required on every path; `POST /config/cistate`
//! records roles. `hang` makes it stop answering, as a wedged appliance does.

use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use oxlb_api::{ErrorResponse, LoadBalancerEntry, LoadBalancerList};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Default)]
pub struct FakeAppliance {
    pub rules: Arc<Mutex<Vec<LoadBalancerEntry>>>,
    requests: Arc<Mutex<Vec<String>>>,
    token: Arc<Mutex<Option<String>>>,
    hung: Arc<AtomicBool>,
    refused_auth: Arc<AtomicUsize>,
    /// Every cistate body posted, in order.
    roles: Arc<Mutex<Vec<Value>>>,
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
