//! The loxilb-compatible REST API (`/netlox/v1`): turns requests into desired-state changes and
//! hands each to the [`Appliance`], one change at a time, answering in loxilb's JSON shapes.
//!
//! loxilb answers a change that worked with status 200 and `{"result":"Success"}`, and a failure
//! with its `Error` model (`code` = HTTP status, `message`, `result`); kube-loxilb treats any
//! status but 200 as a failure and reports `result` as the reason. Every answer here, including
//! a malformed body or an unknown path, is JSON.
//!
//! With a token ([`ApiOptions::token`]) every path, the liveness probe included, first passes
//! [`crate::auth::require_token`]; with a TLS configuration the API is served over HTTPS only.
//!
//! Every route here is registered from its handler's `#[utoipa::path]` annotation (`routes!`),
//! which also puts it in the OpenAPI document served at `GET /netlox/v1/openapi.json`: a route
//! added with a plain `.route(...)` would be served but missing from the document. The
//! operations routes of [`crate::ops`] are described in [`openapi`] by hand, and a test checks
//! that every operation of the document is served.

use crate::auth::{self, ApiToken};
use crate::compile::Down;
use crate::state::DesiredState;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use oxlb_api::{
    check_overlap, check_snat_overlap, oper, service_key, to_cistatus, to_entry, validate,
    validate_cistate, CiStateList, CiStatusEntry, ConntrackEntry, ConntrackList, EndpointList,
    ErrorResponse, HealthResponse, LoadBalancerEntry, LoadBalancerList, Oper, ResultResponse,
    ServiceSpec, StatusResponse, ValidationError,
};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Mutex;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

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
    /// Monitored endpoints their probe currently reports down (the rest are up).
    fn down_endpoints(&self) -> Down {
        Down::new()
    }
    /// The source ports of one-arm and full-NAT flows (first, last), which no service port on
    /// a full-NAT address may use; `None` where there is no dataplane to collide with.
    fn snat_ports(&self) -> Option<(u16, u16)> {
        None
    }
    /// The BGP neighbours' sessions (see [`crate::bgp`]); none where nothing speaks BGP.
    fn bgp_peers(&self) -> Vec<oxlb_bgp::PeerStatus> {
        Vec::new()
    }
}

/// What the status call reports about the running appliance beyond its rules.
#[derive(Debug, Clone)]
pub struct About {
    /// The interfaces served, as given with `--iface`.
    pub interfaces: Vec<String>,
    /// Packet worker threads.
    pub workers: usize,
    /// When the appliance started; uptime counts from here.
    pub started: Instant,
}

impl Default for About {
    fn default() -> About {
        About {
            interfaces: Vec::new(),
            workers: 0,
            started: Instant::now(),
        }
    }
}

/// How the API is served: its token, its TLS configuration, and what the status call reports.
/// The default is plain HTTP without a token, for a loopback address only (see
/// [`crate::auth::check_exposure`]).
#[derive(Debug, Clone, Default)]
pub struct ApiOptions {
    /// When set, every request must carry `Authorization: Bearer <token>`.
    pub token: Option<ApiToken>,
    /// When set, the API speaks HTTPS only.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub about: About,
    /// When set, `/netlox/v1/config/loglevel` reads and changes the log filter through it.
    pub log: Option<crate::ops::LogHandle>,
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

#[derive(Clone)]
pub(crate) struct Api {
    pub(crate) app: Arc<dyn Appliance>,
    about: Arc<About>,
    /// The OpenAPI document, serialized once.
    openapi: Arc<String>,
    /// Held from reading the current state until the next one is applied, so concurrent
    /// changes cannot overwrite each other.
    changes: Arc<Mutex<()>>,
}

/// The API's routes over `app`, without a token.
pub fn router(app: Arc<dyn Appliance>) -> Router {
    router_with(app, &ApiOptions::default())
}

/// Every route of this module, each with its part of the OpenAPI document: the one list both
/// the router and the document are made from. Handlers sharing a path share a `routes!`.
fn routes() -> OpenApiRouter<Api> {
    OpenApiRouter::new()
        // kube-loxilb's liveness probe asks for the base path without a trailing slash.
        .routes(routes!(health))
        .routes(routes!(health_slash))
        .routes(routes!(create))
        .routes(routes!(list, delete_all))
        .routes(routes!(delete_by_name))
        .routes(routes!(delete_one))
        .routes(routes!(conntrack))
        .routes(routes!(endpoints))
        .routes(routes!(cistate_list))
        .routes(routes!(cistate_set))
        .routes(routes!(crate::bgp::bgp_global))
        .routes(routes!(crate::bgp::bgp_neigh_add))
        .routes(routes!(crate::bgp::bgp_neigh_delete))
        .routes(routes!(crate::bgp::bgp_neigh_list))
        .routes(routes!(status))
        .routes(routes!(openapi_json))
        .routes(routes!(metrics))
}

/// The OpenAPI document of the API, as `GET /netlox/v1/openapi.json` serves it.
pub fn openapi() -> utoipa::openapi::OpenApi {
    crate::openapi::finish(routes().split_for_parts().1)
}

/// The API's routes over `app`, behind `options.token` if there is one.
pub fn router_with(app: Arc<dyn Appliance>, options: &ApiOptions) -> Router {
    let (routes, doc) = routes().split_for_parts();
    let doc = crate::openapi::finish(doc)
        .to_json()
        .expect("the OpenAPI document always serializes to JSON");
    let api = Api {
        app,
        about: Arc::new(options.about.clone()),
        openapi: Arc::new(doc),
        changes: Arc::new(Mutex::new(())),
    };
    let routes = routes
        .fallback(no_such_path)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(api)
        .merge(crate::ops::router(options.log.clone()));
    // Layered last, so that it wraps every route and both fallbacks.
    match &options.token {
        Some(token) => routes.layer(axum::middleware::from_fn_with_state(
            token.clone(),
            auth::require_token,
        )),
        None => routes,
    }
}

/// Serves the API over plain HTTP without a token on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Arc<dyn Appliance>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, app, ApiOptions::default(), shutdown).await
}

/// Serves the API as `options` say on `listener` until `shutdown` completes.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    app: Arc<dyn Appliance>,
    options: ApiOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let routes = router_with(app, &options);
    match options.tls {
        Some(config) => {
            axum::serve(crate::tls::TlsListener::new(listener, config), routes)
                .with_graceful_shutdown(shutdown)
                .await
        }
        None => {
            axum::serve(listener, routes)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

/// An error answer: loxilb's `Error` body with its code as the HTTP status.
pub(crate) struct Failure(pub(crate) ErrorResponse);

impl Failure {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Failure {
        Failure(ErrorResponse::new(status.as_u16(), message))
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Failure {
        Failure::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self.0)).into_response()
    }
}

pub(crate) fn success() -> Json<ResultResponse> {
    Json(ResultResponse::success())
}

/// oxlb's own counters in Prometheus' text format (outside `/netlox/v1`, where scrapers look).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "oxlb",
    responses(
        (status = 200, description = "Prometheus text exposition format 0.0.4", body = String,
         content_type = "text/plain"),
        (status = 404, description = "This appliance reports no metrics", body = ErrorResponse),
    )
)]
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

/// kube-loxilb's liveness probe: 200 whenever the API answers.
#[utoipa::path(
    get,
    path = "/netlox/v1",
    tag = "loxilb",
    responses((status = 200, description = "The API answers", body = HealthResponse))
)]
async fn health() -> Json<HealthResponse> {
    Json(HealthResponse {
        status: "ok".to_owned(),
    })
}

/// The liveness probe with a trailing slash, as loxilb's own clients ask for it.
#[utoipa::path(
    get,
    path = "/netlox/v1/",
    tag = "loxilb",
    responses((status = 200, description = "The API answers", body = HealthResponse))
)]
async fn health_slash() -> Json<HealthResponse> {
    health().await
}

/// This document.
#[utoipa::path(
    get,
    path = "/netlox/v1/openapi.json",
    tag = "oxlb",
    responses((status = 200, description = "The OpenAPI document of this API",
               body = serde_json::Value))
)]
async fn openapi_json(State(api): State<Api>) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        api.openapi.as_str().to_owned(),
    )
        .into_response()
}

/// Creates or replaces a load-balancer rule (`oper` 0), or attaches (1) or detaches (2)
/// endpoints of an existing one.
#[utoipa::path(
    post,
    path = "/netlox/v1/config/loadbalancer",
    tag = "loxilb",
    request_body = LoadBalancerEntry,
    responses(
        (status = 200, description = "Applied and saved", body = ResultResponse),
        (status = 400, description = "The body is not JSON, not a LoadbalanceEntry, or holds a value oxlb refuses; `fields` names it", body = ErrorResponse),
        (status = 404, description = "oper 1 or 2 for a rule that does not exist", body = ErrorResponse),
        (status = 413, description = "The body is larger than 2 MiB", body = ErrorResponse),
        (status = 500, description = "The change could not be applied or saved; the previous rules still run", body = ErrorResponse),
    )
)]
async fn create(
    State(api): State<Api>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ResultResponse>, Failure> {
    let body = body.map_err(|r| Failure::new(r.status(), r.body_text()))?;
    let entry: LoadBalancerEntry =
        serde_json::from_slice(&body).map_err(|e| body_error(e, "a loxilb load-balancer entry"))?;
    let spec = validate(&entry).map_err(|e| {
        let field = e.field();
        Failure(ErrorResponse::new(400, e.to_string()).with_field(field))
    })?;
    let op = oper(&entry);
    let snat_ports = api.app.snat_ports();
    change(&api, move |state| {
        let key = spec.key;
        let spec = match op {
            Oper::Replace => spec,
            Oper::Attach | Oper::Detach => endpoints_changed(state, spec, op)?,
        };
        // Clashes with other rules are the request's fault too: refused like bad input.
        let refused = |e: ValidationError| {
            let field = e.field();
            Failure(ErrorResponse::new(400, e.to_string()).with_field(field))
        };
        check_overlap(&spec, state.services()).map_err(refused)?;
        if let Some((first, last)) = snat_ports {
            check_snat_overlap(&spec, state.services(), first, last).map_err(refused)?;
        }
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

/// The running state, read off the async threads (the appliance's lock may be held by a change).
pub(crate) async fn current(api: &Api) -> Result<DesiredState, Failure> {
    let app = api.app.clone();
    tokio::task::spawn_blocking(move || app.current())
        .await
        .map_err(|e| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// Every load-balancer rule.
#[utoipa::path(
    get,
    path = "/netlox/v1/config/loadbalancer/all",
    tag = "loxilb",
    responses(
        (status = 200, description = "Every rule, in loxilb's shape", body = LoadBalancerList),
        (status = 500, description = "Internal error reading the state", body = ErrorResponse),
    )
)]
async fn list(State(api): State<Api>) -> Result<Json<LoadBalancerList>, Failure> {
    let state = current(&api).await?;
    Ok(Json(LoadBalancerList {
        lb_attr: state.services().map(to_entry).collect(),
    }))
}

/// Every tracked connection, one entry per direction.
#[utoipa::path(
    get,
    path = "/netlox/v1/config/conntrack/all",
    tag = "loxilb",
    responses(
        (status = 200, description = "Tracked connections", body = ConntrackList),
        (status = 500, description = "The packet workers did not report their connections in time", body = ErrorResponse),
    )
)]
async fn conntrack(State(api): State<Api>) -> Result<Json<ConntrackList>, Failure> {
    let app = api.app.clone();
    let entries = tokio::task::spawn_blocking(move || app.conntrack())
        .await
        .map_err(|e| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(ConntrackList { ct_attr: entries }))
}

/// Every endpoint of the running rules with its probe's verdict, in loxilb's shape.
#[utoipa::path(
    get,
    path = "/netlox/v1/config/endpoint/all",
    tag = "loxilb",
    responses(
        (status = 200, description = "Endpoints and their probe state", body = EndpointList),
        (status = 500, description = "Internal error reading the state", body = ErrorResponse),
    )
)]
async fn endpoints(State(api): State<Api>) -> Result<Json<EndpointList>, Failure> {
    let app = api.app.clone();
    let attr = tokio::task::spawn_blocking(move || {
        // Read one after the other, not atomically: a rule changed in between shows its
        // endpoints as up until the next listing, which is what its new probes start with.
        let state = app.current();
        let down = app.down_endpoints();
        crate::endpoints::list(&state, &down)
    })
    .await
    .map_err(|e| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(EndpointList { attr }))
}

/// What is running (oxlb's own call).
#[utoipa::path(
    get,
    path = "/netlox/v1/status",
    tag = "oxlb",
    responses(
        (status = 200, description = "Version, uptime, workers, interfaces, rules", body = StatusResponse),
        (status = 500, description = "Internal error reading the state", body = ErrorResponse),
    )
)]
async fn status(State(api): State<Api>) -> Result<Json<StatusResponse>, Failure> {
    let services = current(&api).await?.len();
    Ok(Json(StatusResponse {
        status: "ok".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_seconds: api.about.started.elapsed().as_secs(),
        workers: api.about.workers,
        interfaces: api.about.interfaces.clone(),
        services,
    }))
}

/// Deletes the rule of one address, port and protocol.
#[utoipa::path(
    delete,
    path = "/netlox/v1/config/loadbalancer/externalipaddress/{ip}/port/{port}/protocol/{proto}",
    tag = "loxilb",
    params(
        ("ip" = String, Path, description = "The rule's externalIP (IPv4)",
         pattern = r"^[0-9]{1,3}(\.[0-9]{1,3}){3}$", example = "198.18.100.1"),
        ("port" = i64, Path, description = "The rule's port", minimum = 1, maximum = 65535),
        ("proto" = String, Path, description = "tcp or udp", pattern = "^(tcp|udp)$"),
    ),
    responses(
        (status = 200, description = "Deleted and saved", body = ResultResponse),
        (status = 400, description = "The address, port or protocol is not valid; `fields` names it", body = ErrorResponse),
        (status = 404, description = "No rule has this address, port and protocol", body = ErrorResponse),
        (status = 500, description = "The change could not be applied or saved; the previous rules still run", body = ErrorResponse),
    )
)]
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
#[utoipa::path(
    delete,
    path = "/netlox/v1/config/loadbalancer/name/{name}",
    tag = "loxilb",
    params(("name" = String, Path, description = "The rules' `name`", example = "web")),
    responses(
        (status = 200, description = "Deleted and saved", body = ResultResponse),
        (status = 400, description = "The name is not valid UTF-8 once percent-decoded", body = ErrorResponse),
        (status = 404, description = "No rule has this name", body = ErrorResponse),
        (status = 500, description = "The change could not be applied or saved; the previous rules still run", body = ErrorResponse),
    )
)]
async fn delete_by_name(
    State(api): State<Api>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<ResultResponse>, Failure> {
    let Path(name) = path.map_err(|r| Failure::bad_request(r.body_text()))?;
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

/// Deletes every load-balancer rule (the HA state stays).
#[utoipa::path(
    delete,
    path = "/netlox/v1/config/loadbalancer/all",
    tag = "loxilb",
    responses(
        (status = 200, description = "Deleted and saved", body = ResultResponse),
        (status = 500, description = "The change could not be applied or saved; the previous rules still run", body = ErrorResponse),
    )
)]
async fn delete_all(State(api): State<Api>) -> Result<Json<ResultResponse>, Failure> {
    change(&api, |state| {
        let n = state.len();
        state.clear_services();
        Ok(format!("all {n} load-balancer rule(s) deleted"))
    })
    .await?;
    Ok(success())
}

/// The HA state of every cluster instance, in loxilb's `CIStatusGetEntry` shape.
#[utoipa::path(
    get,
    path = "/netlox/v1/config/cistate/all",
    tag = "loxilb",
    responses(
        (status = 200, description = "Every instance's HA state (empty before the first POST)", body = CiStateList),
        (status = 500, description = "Internal error reading the state", body = ErrorResponse),
    )
)]
async fn cistate_list(State(api): State<Api>) -> Result<Json<CiStateList>, Failure> {
    let state = current(&api).await?;
    Ok(Json(CiStateList {
        attr: state.ha().map(to_cistatus).collect(),
    }))
}

/// Records the HA role an external controller assigns to an instance (kube-loxilb's
/// `--setRoles`, a keepalived notify script). Saved with the rules; it does not change
/// forwarding yet.
#[utoipa::path(
    post,
    path = "/netlox/v1/config/cistate",
    tag = "loxilb",
    request_body = CiStatusEntry,
    responses(
        (status = 200, description = "Recorded and saved", body = ResultResponse),
        (status = 400, description = "The body is not JSON, not a CIStatusEntry, or its state, instance or vip is not valid; `fields` names it", body = ErrorResponse),
        (status = 413, description = "The body is larger than 2 MiB", body = ErrorResponse),
        (status = 500, description = "The change could not be saved; the previous state stays", body = ErrorResponse),
    )
)]
async fn cistate_set(
    State(api): State<Api>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ResultResponse>, Failure> {
    let body = body.map_err(|r| Failure::new(r.status(), r.body_text()))?;
    let entry: CiStatusEntry = serde_json::from_slice(&body)
        .map_err(|e| body_error(e, "a loxilb CIStatusEntry ({instance, state, vip})"))?;
    let ha = validate_cistate(&entry)
        .map_err(|e| Failure(ErrorResponse::new(400, e.to_string()).with_field(e.field())))?;
    change(&api, move |state| {
        let line = format!(
            "HA state of instance {} set to {} (vip {})",
            ha.instance,
            ha.role,
            ha.vip.map_or_else(|| "none".to_owned(), |v| v.to_string())
        );
        state.set_ha(ha);
        Ok(line)
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

/// Says what is wrong with a body that is not `expected` (e.g. "a loxilb load-balancer
/// entry"); serde_json's message names the unknown or missing field, or the line and column of
/// a syntax error.
pub(crate) fn body_error(e: serde_json::Error, expected: &str) -> Failure {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            Failure::bad_request(format!("the request body is not valid JSON: {e}"))
        }
        Category::Data => Failure::bad_request(format!("the request body is not {expected}: {e}")),
    }
}

/// Runs `edit` on a copy of the current state and applies the result if it differs, holding
/// the change lock throughout. `edit` returns the log line describing the change, or the
/// answer to give instead (then nothing is applied).
pub(crate) async fn change<F>(api: &Api, edit: F) -> Result<(), Failure>
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::HealthKey;
    use crate::state::test_spec;
    use std::net::Ipv4Addr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const TOKEN: &str = "0123456789abcdef-test-token";

    #[derive(Default)]
    struct Fake {
        state: std::sync::Mutex<DesiredState>,
        down: Down,
        applied: AtomicUsize,
    }

    impl Appliance for Fake {
        fn current(&self) -> DesiredState {
            self.state.lock().unwrap().clone()
        }
        fn apply(&self, next: DesiredState) -> Result<(), ApplyError> {
            *self.state.lock().unwrap() = next;
            self.applied.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn down_endpoints(&self) -> Down {
            self.down.clone()
        }
    }

    struct Server {
        base: String,
        _stop: tokio::sync::oneshot::Sender<()>,
    }

    async fn start(fake: Arc<Fake>, options: ApiOptions) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let scheme = if options.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app: Arc<dyn Appliance> = fake;
        tokio::spawn(async move {
            serve_with(listener, app, options, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Server {
            base: format!("{scheme}://{addr}"),
            _stop: stop,
        }
    }

    fn with_token() -> ApiOptions {
        ApiOptions {
            token: Some(token()),
            ..ApiOptions::default()
        }
    }

    fn token() -> ApiToken {
        let dir = Scratch::new();
        let path = dir.write("token", &format!("{TOKEN}\n"));
        ApiToken::from_file(&path).unwrap()
    }

    /// A directory removed on drop, for files the code under test reads.
    struct Scratch(std::path::PathBuf);

    impl Scratch {
        fn new() -> Scratch {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "oxlb-http-test-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::SeqCst)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
        fn write(&self, name: &str, content: &str) -> std::path::PathBuf {
            let p = self.0.join(name);
            std::fs::write(&p, content).unwrap();
            p
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn rule_body() -> String {
        serde_json::json!({
            "serviceArguments": {"externalIP": "198.18.100.1", "port": 80, "protocol": "tcp"},
            "endpoints": [{"endpointIP": "198.18.31.1", "targetPort": 8080, "weight": 1}],
        })
        .to_string()
    }

    async fn send(
        req: reqwest::RequestBuilder,
        authorization: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let req = match authorization {
            Some(a) => req.header("authorization", a),
            None => req,
        };
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        (status, body)
    }

    #[tokio::test]
    async fn a_change_without_the_token_is_refused_with_401_and_changes_nothing() {
        let fake = Arc::new(Fake::default());
        let s = start(fake.clone(), with_token()).await;
        let http = reqwest::Client::new();
        let r = http
            .post(format!("{}/netlox/v1/config/loadbalancer", s.base))
            .header("content-type", "application/json")
            .body(rule_body())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401);
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["code"], 401);
        let message = body["message"].as_str().unwrap();
        assert!(message.contains("Authorization: Bearer"), "{message}");
        assert_eq!(fake.applied.load(Ordering::SeqCst), 0);
        assert!(fake.current().is_empty());
    }

    #[tokio::test]
    async fn a_wrong_token_is_refused_on_every_path_known_or_not() {
        let s = start(Arc::new(Fake::default()), with_token()).await;
        let http = reqwest::Client::new();
        for path in [
            "/netlox/v1/",
            "/netlox/v1/config/loadbalancer/all",
            "/netlox/v1/status",
            "/netlox/v1/config/endpoint/all",
            "/metrics",
            "/no/such/path",
        ] {
            let url = format!("{}{path}", s.base);
            let (status, body) = send(http.get(&url), Some("Bearer not-the-token")).await;
            assert_eq!(status, 401, "{path}: {body}");
            assert!(
                body["message"].as_str().unwrap().contains("not the one"),
                "{path}: {body}"
            );
            let (status, _) = send(http.get(&url), None).await;
            assert_eq!(status, 401, "{path} without a token");
        }
    }

    #[tokio::test]
    async fn the_right_token_reaches_every_call() {
        let fake = Arc::new(Fake::default());
        let s = start(fake.clone(), with_token()).await;
        let http = reqwest::Client::new();
        let bearer = format!("Bearer {TOKEN}");
        let (status, body) = send(http.get(format!("{}/netlox/v1/", s.base)), Some(&bearer)).await;
        assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
        let post = http
            .post(format!("{}/netlox/v1/config/loadbalancer", s.base))
            .header("content-type", "application/json")
            .body(rule_body());
        let (status, body) = send(post, Some(&bearer)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(fake.current().len(), 1);
    }

    #[tokio::test]
    async fn without_a_token_the_api_answers_everyone_as_before() {
        let s = start(Arc::new(Fake::default()), ApiOptions::default()).await;
        let (status, _) = send(
            reqwest::Client::new().get(format!("{}/netlox/v1/", s.base)),
            None,
        )
        .await;
        assert_eq!(status, 200);
    }

    #[tokio::test]
    async fn the_status_call_reports_version_uptime_workers_interfaces_and_rules() {
        let fake = Arc::new(Fake::default());
        fake.state.lock().unwrap().upsert(test_spec(80, &[1, 2]));
        let options = ApiOptions {
            about: About {
                interfaces: vec!["lb0".into(), "lb1".into()],
                workers: 2,
                started: Instant::now() - std::time::Duration::from_secs(5),
            },
            ..ApiOptions::default()
        };
        let s = start(fake, options).await;
        let (status, body) = send(
            reqwest::Client::new().get(format!("{}/netlox/v1/status", s.base)),
            None,
        )
        .await;
        assert_eq!(status, 200);
        let got: StatusResponse = serde_json::from_value(body).unwrap();
        assert_eq!(got.version, env!("CARGO_PKG_VERSION"));
        assert!(got.uptime_seconds >= 5, "{got:?}");
        assert_eq!(got.workers, 2);
        assert_eq!(got.interfaces, ["lb0", "lb1"]);
        assert_eq!(got.services, 1);
    }

    #[tokio::test]
    async fn the_endpoint_listing_shows_endpoints_the_appliance_reports_down_as_nok() {
        let mut spec = test_spec(80, &[1, 2]);
        spec.monitor = Some(oxlb_api::ProbeSpec {
            kind: oxlb_api::ProbeKind::Tcp,
            port: 0,
            request: String::new(),
            response: String::new(),
            timeout_secs: 1,
            retries: 2,
        });
        let key = spec.key;
        let fake = Fake {
            down: [HealthKey {
                service: key,
                endpoint: Ipv4Addr::new(198, 18, 31, 2).into(),
                target_port: 8080,
            }]
            .into(),
            ..Fake::default()
        };
        fake.state.lock().unwrap().upsert(spec);
        let s = start(Arc::new(fake), ApiOptions::default()).await;
        let (status, body) = send(
            reqwest::Client::new().get(format!("{}/netlox/v1/config/endpoint/all", s.base)),
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let list: EndpointList = serde_json::from_value(body).unwrap();
        let states: Vec<(&str, &str)> = list
            .attr
            .iter()
            .map(|e| (e.host_name.as_str(), e.curr_state.as_str()))
            .collect();
        assert_eq!(states, [("198.18.31.1", "ok"), ("198.18.31.2", "nok")]);
    }

    /// A CA and a server certificate for 127.0.0.1 signed by it, as PEM: (ca, cert, key).
    fn test_pki() -> (String, String, String) {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "oxlb test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        (ca.pem(), cert.pem(), key.serialize_pem())
    }

    #[tokio::test]
    async fn https_with_the_token_works_and_plain_http_to_the_tls_port_gets_no_answer() {
        let (ca, cert, key) = test_pki();
        let dir = Scratch::new();
        let tls = crate::tls::server_config(&dir.write("c.pem", &cert), &dir.write("k.pem", &key))
            .unwrap();
        let options = ApiOptions {
            tls: Some(tls),
            ..with_token()
        };
        let s = start(Arc::new(Fake::default()), options).await;
        let https = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
            .build()
            .unwrap();
        let url = format!("{}/netlox/v1/config/loadbalancer/all", s.base);
        let (status, body) = send(https.get(&url), Some(&format!("Bearer {TOKEN}"))).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, serde_json::json!({"lbAttr": []}));
        let (status, _) = send(https.get(&url), None).await;
        assert_eq!(status, 401);
        let plain = url.replace("https://", "http://");
        assert!(reqwest::Client::new().get(&plain).send().await.is_err());
        // A client that does not trust the CA refuses the connection.
        let untrusting = reqwest::Client::builder().build().unwrap();
        assert!(untrusting.get(&url).send().await.is_err());
    }

    #[test]
    fn unusable_tls_files_are_refused_naming_the_file() {
        let (_, cert, key) = test_pki();
        let (_, _, other_key) = test_pki();
        let dir = Scratch::new();
        let cert = dir.write("c.pem", &cert);
        let key = dir.write("k.pem", &key);
        let missing = dir.0.join("missing.pem");
        let e = crate::tls::server_config(&missing, &key).unwrap_err();
        assert!(e.to_string().contains("missing.pem"), "{e}");
        let e = crate::tls::server_config(&key, &key).unwrap_err();
        assert!(
            matches!(e, crate::tls::TlsError::NoCertificate { .. }),
            "{e}"
        );
        let e = crate::tls::server_config(&cert, &cert).unwrap_err();
        assert!(matches!(e, crate::tls::TlsError::NoKey { .. }), "{e}");
        let other = dir.write("other.pem", &other_key);
        let e = crate::tls::server_config(&cert, &other).unwrap_err();
        assert!(matches!(e, crate::tls::TlsError::Invalid { .. }), "{e}");
    }

    /// Every (method, path) of the OpenAPI document.
    fn documented_operations(doc: &serde_json::Value) -> Vec<(Method, String)> {
        let mut ops = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, _) in item.as_object().expect("a path item") {
                let method = Method::from_bytes(method.to_uppercase().as_bytes())
                    .unwrap_or_else(|_| panic!("{path}: {method} is not a method"));
                ops.push((method, path.clone()));
            }
        }
        ops
    }

    /// `path` with each `{param}` replaced by a value its handler can parse.
    fn concrete(path: &str) -> String {
        path.replace("{ip}", "198.18.100.1")
            .replace("{port}", "80")
            .replace("{proto}", "tcp")
            .replace("{name}", "web")
    }

    async fn oneshot(
        router: &Router,
        method: Method,
        path: &str,
        body: &str,
    ) -> (StatusCode, String) {
        use tower::ServiceExt;
        let req = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body.to_owned()))
            .unwrap();
        let resp = router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 22)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn every_operation_of_the_served_document_is_routed_to_a_handler() {
        let router = router(Arc::new(Fake::default()));
        let (status, text) = oneshot(&router, Method::GET, "/netlox/v1/openapi.json", "").await;
        assert_eq!(status, StatusCode::OK, "{text}");
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(doc, serde_json::to_value(openapi()).unwrap());
        let ops = documented_operations(&doc);
        assert!(ops.len() >= 16, "{ops:?}");
        for (method, path) in ops {
            let (status, text) = oneshot(&router, method.clone(), &concrete(&path), "{}").await;
            // A handler may answer 404 itself (no such rule); the router's own 404 and 405
            // say "no such API" and "does not accept".
            assert_ne!(
                status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}: {text}"
            );
            assert!(
                !text.contains("no such API"),
                "{method} {path} is documented but not routed: {text}"
            );
        }
    }

    #[tokio::test]
    async fn every_route_of_the_router_is_in_the_document() {
        // The routes the router serves, probed with each method: whatever does not reach the
        // router's fallbacks must be documented. The candidate paths are the documented ones
        // plus their neighbours, so a route added beside them without a document entry shows.
        let router = router(Arc::new(Fake::default()));
        let doc = serde_json::to_value(openapi()).unwrap();
        let documented = documented_operations(&doc);
        let mut candidates: Vec<String> = documented.iter().map(|(_, p)| p.clone()).collect();
        for extra in [
            "/netlox/v1/config/loadbalancer/all/",
            "/netlox/v1/config/cistate/",
            "/netlox/v1/config/port/all",
            "/netlox/v1/config/route/all",
            "/netlox/v1/config/bfd/all",
            "/netlox/v1/version",
            "/netlox/v1/openapi.yaml",
            "/openapi.json",
            "/",
        ] {
            candidates.push(extra.to_owned());
        }
        for path in candidates {
            for method in [
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::DELETE,
                Method::PATCH,
            ] {
                let (status, text) = oneshot(&router, method.clone(), &concrete(&path), "{}").await;
                let routed =
                    status != StatusCode::METHOD_NOT_ALLOWED && !text.contains("no such API");
                let in_doc = documented.contains(&(method.clone(), path.clone()));
                assert_eq!(
                    routed, in_doc,
                    "{method} {path}: routed {routed}, documented {in_doc}: {text}"
                );
            }
        }
    }

    #[test]
    fn the_document_uses_loxilbs_names_and_lists_every_answer() {
        let doc = serde_json::to_value(openapi()).unwrap();
        let schemas = &doc["components"]["schemas"];
        for name in [
            "LoadbalanceEntry",
            "Error",
            "CiStatusEntry",
            "CiStateList",
            "LogLevel",
        ] {
            assert!(schemas.get(name).is_some(), "no schema {name}");
        }
        let sa = &schemas["ServiceArguments"]["properties"];
        for field in [
            "externalIP",
            "privateIP",
            "portMax",
            "inactiveTimeOut",
            "probeTimeout",
        ] {
            assert!(sa.get(field).is_some(), "serviceArguments has no {field}");
        }
        assert_eq!(schemas["ServiceArguments"]["additionalProperties"], false);
        assert!(schemas["CiStateList"]["properties"].get("Attr").is_some());
        let post = &doc["paths"]["/netlox/v1/config/loadbalancer"]["post"];
        for code in ["200", "400", "401", "404", "413", "500"] {
            assert!(
                post["responses"].get(code).is_some(),
                "POST loadbalancer lacks {code}"
            );
        }
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        assert!(doc["info"]["description"]
            .as_str()
            .unwrap()
            .contains("case-insensitively"));
    }

    #[tokio::test]
    async fn the_document_needs_the_token_like_every_path() {
        let s = start(Arc::new(Fake::default()), with_token()).await;
        let url = format!("{}/netlox/v1/openapi.json", s.base);
        let http = reqwest::Client::new();
        let (status, _) = send(http.get(&url), None).await;
        assert_eq!(status, 401);
        let (status, body) = send(http.get(&url), Some(&format!("Bearer {TOKEN}"))).await;
        assert_eq!(status, 200);
        assert!(
            body["openapi"].as_str().unwrap().starts_with("3."),
            "{body}"
        );
    }

    #[tokio::test]
    async fn ha_state_is_recorded_listed_and_an_unknown_state_refused_naming_the_field() {
        let fake = Arc::new(Fake::default());
        let router = router(fake.clone());
        let (status, text) =
            oneshot(&router, Method::GET, "/netlox/v1/config/cistate/all", "").await;
        assert_eq!((status, text.as_str()), (StatusCode::OK, r#"{"Attr":[]}"#));
        let body = r#"{"instance":"llb-inst0","state":"BACKUP","vip":"198.18.100.1"}"#;
        let (status, text) =
            oneshot(&router, Method::POST, "/netlox/v1/config/cistate", body).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        assert_eq!(text, r#"{"result":"Success"}"#);
        let (status, text) = oneshot(
            &router,
            Method::POST,
            "/netlox/v1/config/cistate",
            r#"{"state":"MASTER"}"#,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{text}");
        let (_, text) = oneshot(&router, Method::GET, "/netlox/v1/config/cistate/all", "").await;
        let list: CiStateList = serde_json::from_str(&text).unwrap();
        let got: Vec<_> = list
            .attr
            .iter()
            .map(|e| (e.instance.as_str(), e.state.as_str(), e.vip.as_str()))
            .collect();
        // The second POST replaced the first: same (default) instance, no vip given.
        assert_eq!(got, [("llb-inst0", "MASTER", "0.0.0.0")]);
        let applied = fake.applied.load(Ordering::SeqCst);
        let (status, text) = oneshot(
            &router,
            Method::POST,
            "/netlox/v1/config/cistate",
            r#"{"instance":"llb-inst0","state":"PRIMARY"}"#,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
        let err: ErrorResponse = serde_json::from_str(&text).unwrap();
        assert_eq!(err.fields, ["state"]);
        assert!(err.message.contains("MASTER, BACKUP"), "{}", err.message);
        let (status, text) = oneshot(
            &router,
            Method::POST,
            "/netlox/v1/config/cistate",
            r#"{"state":"MASTER","role":"x"}"#,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
        assert!(text.contains("unknown field `role`"), "{text}");
        assert_eq!(
            fake.applied.load(Ordering::SeqCst),
            applied,
            "a refused body changed the state"
        );
        // Deleting every rule leaves the HA state.
        let (status, _) = oneshot(
            &router,
            Method::DELETE,
            "/netlox/v1/config/loadbalancer/all",
            "",
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(fake.current().ha().count(), 1);
    }
}
