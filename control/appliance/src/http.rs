//! The loxilb-compatible REST API (`/netlox/v1`): turns requests into desired-state changes and
//! hands each to the [`Appliance`], one change at a time, answering in loxilb's JSON shapes.
//!
//! loxilb answers a change that worked with status 200 and `{"result":"Success"}`, and a failure
//! with its `Error` model (`code` = HTTP status, `message`, `result`); kube-loxilb treats any
//! status but 200 as a failure and reports `result` as the reason. Every answer here, including
//! a malformed body or an unknown path, is JSON.

use crate::state::DesiredState;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use oxlb_api::{
    oper, service_key, to_entry, validate, ConntrackEntry, ConntrackList, ErrorResponse,
    HealthResponse, LoadBalancerEntry, LoadBalancerList, Oper, ResultResponse, ServiceSpec,
};
use std::future::Future;
use std::sync::Arc;
use tokio::sync::Mutex;

/// What the HTTP layer needs from the appliance. `apply` makes `next` the running state:
/// either all of it takes effect, or none of it and the previous state stays.
pub trait Appliance: Send + Sync + 'static {
    fn current(&self) -> DesiredState;
    fn apply(&self, next: DesiredState) -> Result<(), ApplyError>;
    /// The Prometheus text page of `/metrics`; `None` when there is nothing to report (then
    /// the path answers 404).
    fn metrics(&self) -> Option<String> {
        None
    }
    /// Every tracked connection, one entry per direction, as loxilb lists them (the answer of
    /// `GET /netlox/v1/config/conntrack/all`). May wait (boundedly) for the packet workers.
    fn conntrack(&self) -> Result<Vec<ConntrackEntry>, ApplyError> {
        Ok(Vec::new())
    }
}

/// Why the appliance could not run a new desired state. The previous state still runs.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The packet workers could not take the new rules.
    #[error("the packet workers could not take the new rules: {0}")]
    Dataplane(String),
    /// The XDP program's maps could not be updated to steer the new addresses.
    #[error("the XDP program's maps could not be updated: {0}")]
    Xdp(String),
    /// The new rules could not be saved durably, so they were not kept running either.
    #[error("the new rules could not be saved to the state file: {0}")]
    Persist(String),
    /// A listing of the packet workers' connections could not be collected.
    #[error("the packet workers did not report their connections: {0}")]
    Flows(String),
}

const BASE: &str = "/netlox/v1";

#[derive(Clone)]
struct Api {
    app: Arc<dyn Appliance>,
    /// Held from reading the current state until the next one is applied, so concurrent
    /// changes cannot overwrite each other.
    changes: Arc<Mutex<()>>,
}

/// The API's routes over `app`.
pub fn router(app: Arc<dyn Appliance>) -> Router {
    let api = Api {
        app,
        changes: Arc::new(Mutex::new(())),
    };
    Router::new()
        // kube-loxilb's liveness probe asks for the base path without a trailing slash.
        .route(BASE, get(health))
        .route(&format!("{BASE}/"), get(health))
        .route(&format!("{BASE}/config/loadbalancer"), post(create))
        .route(
            &format!("{BASE}/config/loadbalancer/all"),
            get(list).delete(delete_all),
        )
        .route(
            &format!("{BASE}/config/loadbalancer/name/{{name}}"),
            delete(delete_by_name),
        )
        .route(
            &format!(
                "{BASE}/config/loadbalancer/externalipaddress/{{ip}}/port/{{port}}/protocol/{{proto}}"
            ),
            delete(delete_one),
        )
        .route(&format!("{BASE}/config/conntrack/all"), get(conntrack))
        .route("/metrics", get(metrics))
        .fallback(no_such_path)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(api)
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Arc<dyn Appliance>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(app))
        .with_graceful_shutdown(shutdown)
        .await
}

/// An error answer: loxilb's `Error` body with its code as the HTTP status.
struct Failure(ErrorResponse);

impl Failure {
    fn new(status: StatusCode, message: impl Into<String>) -> Failure {
        Failure(ErrorResponse::new(status.as_u16(), message))
    }

    fn bad_request(message: impl Into<String>) -> Failure {
        Failure::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self.0)).into_response()
    }
}

fn success() -> Json<ResultResponse> {
    Json(ResultResponse::success())
}

async fn metrics(State(api): State<Api>) -> Response {
    match api.app.metrics() {
        Some(page) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            page,
        )
            .into_response(),
        None => {
            Failure::new(StatusCode::NOT_FOUND, "this appliance has no metrics").into_response()
        }
    }
}

async fn health() -> Json<HealthResponse> {
    Json(HealthResponse {
        status: "ok".to_owned(),
    })
}

async fn create(
    State(api): State<Api>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ResultResponse>, Failure> {
    let body = body.map_err(|r| Failure::new(r.status(), r.body_text()))?;
    let entry: LoadBalancerEntry = serde_json::from_slice(&body).map_err(body_error)?;
    let spec = validate(&entry).map_err(|e| {
        let field = e.field();
        Failure(ErrorResponse::new(400, e.to_string()).with_field(field))
    })?;
    let op = oper(&entry);
    change(&api, move |state| {
        let key = spec.key;
        let spec = match op {
            Oper::Replace => spec,
            Oper::Attach | Oper::Detach => endpoints_changed(state, spec, op)?,
        };
        let endpoints = spec.endpoints.len();
        let verb = match (op, state.upsert(spec)) {
            (Oper::Replace, None) => "created",
            (Oper::Replace, Some(_)) => "replaced",
            (Oper::Attach, _) => "given endpoints",
            (Oper::Detach, _) => "relieved of endpoints",
        };
        Ok(format!(
            "load-balancer rule {key} {verb}, now {endpoints} endpoint(s)"
        ))
    })
    .await?;
    Ok(success())
}

/// The existing rule of `req.key` with `req`'s endpoints attached or detached; every other
/// setting of the rule stays as it was.
fn endpoints_changed(
    state: &DesiredState,
    req: ServiceSpec,
    op: Oper,
) -> Result<ServiceSpec, Failure> {
    let key = req.key;
    let Some(current) = state.get(&key) else {
        return Err(Failure::new(
            StatusCode::NOT_FOUND,
            format!("no load-balancer rule for {key} to attach endpoints to or detach them from; create it with oper 0"),
        ));
    };
    let mut next = current.clone();
    let same = |a: &oxlb_api::EndpointSpec, b: &oxlb_api::EndpointSpec| {
        a.ip == b.ip && a.target_port == b.target_port
    };
    for ep in req.endpoints {
        next.endpoints.retain(|e| !same(e, &ep));
        if op == Oper::Attach {
            next.endpoints.push(ep);
        }
    }
    if next.endpoints.is_empty() {
        return Err(Failure(
            ErrorResponse::new(
                400,
                format!("detaching these endpoints would leave {key} with none; delete the rule instead"),
            )
            .with_field("endpoints"),
        ));
    }
    Ok(next)
}

async fn list(State(api): State<Api>) -> Result<Json<LoadBalancerList>, Failure> {
    let app = api.app.clone();
    let state = tokio::task::spawn_blocking(move || app.current())
        .await
        .map_err(|e| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(LoadBalancerList {
        lb_attr: state.services().map(to_entry).collect(),
    }))
}

async fn conntrack(State(api): State<Api>) -> Result<Json<ConntrackList>, Failure> {
    let app = api.app.clone();
    let entries = tokio::task::spawn_blocking(move || app.conntrack())
        .await
        .map_err(|e| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(ConntrackList { ct_attr: entries }))
}

async fn delete_one(
    State(api): State<Api>,
    path: Result<Path<(String, String, String)>, PathRejection>,
) -> Result<Json<ResultResponse>, Failure> {
    let Path((ip, port, proto)) = path.map_err(|r| Failure::bad_request(r.body_text()))?;
    let key = service_key(&ip, &port, &proto).map_err(|e| {
        let field = e.field();
        Failure(ErrorResponse::new(400, e.to_string()).with_field(field))
    })?;
    change(&api, move |state| {
        if let Some(endpoints) = state.get(&key).map(|s| s.endpoints.len()) {
            state.remove(&key);
            Ok(format!(
                "load-balancer rule {key} deleted with its {endpoints} endpoint(s)"
            ))
        } else {
            Err(Failure::new(
                StatusCode::NOT_FOUND,
                format!("no load-balancer rule for {key}"),
            ))
        }
    })
    .await?;
    Ok(success())
}

/// Deletes every rule with this name (kube-loxilb gives all ports of a Service one name).
async fn delete_by_name(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<Json<ResultResponse>, Failure> {
    change(&api, move |state| {
        let keys: Vec<_> = state
            .services()
            .filter(|s| s.name == name)
            .map(|s| s.key)
            .collect();
        if keys.is_empty() || name.is_empty() {
            return Err(Failure::new(
                StatusCode::NOT_FOUND,
                format!("no load-balancer rule named {name:?}"),
            ));
        }
        for k in &keys {
            state.remove(k);
        }
        Ok(format!(
            "{} load-balancer rule(s) named {name:?} deleted",
            keys.len()
        ))
    })
    .await?;
    Ok(success())
}

async fn delete_all(State(api): State<Api>) -> Result<Json<ResultResponse>, Failure> {
    change(&api, |state| {
        let n = state.len();
        state.clear();
        Ok(format!("all {n} load-balancer rule(s) deleted"))
    })
    .await?;
    Ok(success())
}

async fn no_such_path(method: Method, uri: Uri) -> Failure {
    Failure::new(
        StatusCode::NOT_FOUND,
        format!("no such API: {method} {}", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> Failure {
    Failure::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} does not accept {method}", uri.path()),
    )
}

/// Says what is wrong with a body that is not a loxilb `LoadbalanceEntry`; serde_json's
/// message names the unknown or missing field, or the line and column of a syntax error.
fn body_error(e: serde_json::Error) -> Failure {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => "the request body is not valid JSON",
        Category::Data => "the request body is not a loxilb load-balancer entry",
    };
    Failure::bad_request(format!("{what}: {e}"))
}

/// Runs `edit` on a copy of the current state and applies the result if it differs, holding
/// the change lock throughout. `edit` returns the log line describing the change, or the
/// answer to give instead (then nothing is applied).
async fn change<F>(api: &Api, edit: F) -> Result<(), Failure>
where
    F: FnOnce(&mut DesiredState) -> Result<String, Failure> + Send + 'static,
{
    // The guard moves into the blocking task: if the client goes away mid-request, the lock
    // is still held until the appliance has finished applying.
    let guard = api.changes.clone().lock_owned().await;
    let app = api.app.clone();
    tokio::task::spawn_blocking(move || {
        let _guard = guard;
        let before = app.current();
        let mut next = before.clone();
        let description = edit(&mut next)?;
        if next == before {
            log::debug!("{description}: no change");
            return Ok(());
        }
        app.apply(next).map_err(|e| {
            log::warn!("refused change ({description}): {e}");
            Failure::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{e}; nothing was changed, the previous rules still run"),
            )
        })?;
        log::info!("{description}");
        Ok(())
    })
    .await
    .map_err(|e| {
        log::error!("applying a change failed unexpectedly: {e}");
        Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal error while applying the change: {e}"),
        )
    })?
}
