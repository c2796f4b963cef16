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

use crate::auth::{self, ApiToken};
use crate::compile::Down;
use crate::state::DesiredState;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use oxlb_api::{
    oper, service_key, to_entry, validate, ConntrackEntry, ConntrackList, EndpointList,
    ErrorResponse, HealthResponse, LoadBalancerEntry, LoadBalancerList, Oper, ResultResponse,
    ServiceSpec, StatusResponse,
};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;
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
    /// Monitored endpoints their probe currently reports down (the rest are up).
    fn down_endpoints(&self) -> Down {
        Down::new()
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
    about: Arc<About>,
    /// Held from reading the current state until the next one is applied, so concurrent
    /// changes cannot overwrite each other.
    changes: Arc<Mutex<()>>,
}

/// The API's routes over `app`, without a token.
pub fn router(app: Arc<dyn Appliance>) -> Router {
    router_with(app, &ApiOptions::default())
}

/// The API's routes over `app`, behind `options.token` if there is one.
pub fn router_with(app: Arc<dyn Appliance>, options: &ApiOptions) -> Router {
    let api = Api {
        app,
        about: Arc::new(options.about.clone()),
        changes: Arc::new(Mutex::new(())),
    };
    let routes = Router::new()
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
        .route(&format!("{BASE}/config/endpoint/all"), get(endpoints))
        .route(&format!("{BASE}/status"), get(status))
        .route("/metrics", get(metrics))
        .fallback(no_such_path)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(api);
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

/// Every endpoint of the running rules with its probe's verdict, in loxilb's shape.
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

async fn status(State(api): State<Api>) -> Result<Json<StatusResponse>, Failure> {
    let app = api.app.clone();
    let services = tokio::task::spawn_blocking(move || app.current().len())
        .await
        .map_err(|e| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(StatusResponse {
        status: "ok".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_seconds: api.about.started.elapsed().as_secs(),
        workers: api.about.workers,
        interfaces: api.about.interfaces.clone(),
        services,
    }))
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
                endpoint: Ipv4Addr::new(198, 18, 31, 2),
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
}
