//! Operations routes beside the loxilb API: reading and changing the log filter of the running
//! appliance (`/netlox/v1/config/loglevel`).
//!
//! The filter itself lives in the binary, which owns the log subscriber; it reaches these routes
//! as a [`LogControl`], so this crate does not depend on a particular subscriber. The routes are
//! merged into [`crate::http::router_with`] before its token layer: they need the token like
//! every other call.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use oxlb_api::ErrorResponse;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// Path of the log filter: `GET` reads it, `PUT` or `POST` replace it.
pub const LOG_LEVEL_PATH: &str = "/netlox/v1/config/loglevel";

/// The log filter of the running process, in `RUST_LOG` syntax
/// (`info,oxlb_dataplane=debug`).
pub trait LogControl: Send + Sync + 'static {
    /// The filter in force.
    fn filter(&self) -> String;
    /// Makes `filter` the filter in force; on an error the previous one stays.
    fn set_filter(&self, filter: &str) -> Result<(), LogFilterError>;
}

/// Why the log filter was not changed. The previous filter stays in force.
#[derive(Debug, thiserror::Error)]
pub enum LogFilterError {
    /// The text is not a filter: the reason names the directive that does not parse.
    #[error("{filter:?} is not a log filter ({reason}); write it as RUST_LOG, e.g. \"info,oxlb_dataplane=debug\"")]
    Invalid { filter: String, reason: String },
    /// The log subscriber no longer takes changes (it is shutting down).
    #[error("the log filter cannot be changed now: {0}")]
    Unavailable(String),
}

/// A [`LogControl`] to hand to the API (see `ApiOptions::log`).
#[derive(Clone)]
pub struct LogHandle(Arc<dyn LogControl>);

impl LogHandle {
    pub fn new(control: Arc<dyn LogControl>) -> LogHandle {
        LogHandle(control)
    }
}

impl fmt::Debug for LogHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("LogHandle").field(&self.0.filter()).finish()
    }
}

/// The body of the log-level call, both ways: `{"filter":"info"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogLevel {
    pub filter: String,
}

/// The operations routes. Without a [`LogHandle`] (an appliance that does not control its own
/// logging, e.g. in tests) the log-level path answers 404, saying so.
pub fn router(log: Option<LogHandle>) -> Router {
    Router::new()
        .route(LOG_LEVEL_PATH, get(read).put(replace).post(replace))
        // Merged after the main router's own fallback was set, so these routes need theirs.
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(log)
}

fn failure(status: StatusCode, error: ErrorResponse) -> Response {
    (status, Json(error)).into_response()
}

fn no_log_control() -> Response {
    failure(
        StatusCode::NOT_FOUND,
        ErrorResponse::new(404, "this appliance does not control its log level"),
    )
}

async fn read(State(log): State<Option<LogHandle>>) -> Response {
    match log {
        Some(LogHandle(control)) => Json(LogLevel {
            filter: control.filter(),
        })
        .into_response(),
        None => no_log_control(),
    }
}

async fn replace(
    State(log): State<Option<LogHandle>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Some(LogHandle(control)) = log else {
        return no_log_control();
    };
    let body = match body {
        Ok(b) => b,
        Err(r) => {
            return failure(
                r.status(),
                ErrorResponse::new(r.status().as_u16(), r.body_text()),
            )
        }
    };
    let wanted: LogLevel = match serde_json::from_slice(&body) {
        Ok(w) => w,
        Err(e) => {
            return failure(
                StatusCode::BAD_REQUEST,
                ErrorResponse::new(
                    400,
                    format!(
                        "the request body is not {{\"filter\":\"RUST_LOG-style filter\"}}: {e}"
                    ),
                )
                .with_field("filter"),
            )
        }
    };
    match control.set_filter(&wanted.filter) {
        Ok(()) => {
            let now = control.filter();
            log_change(&now);
            Json(LogLevel { filter: now }).into_response()
        }
        Err(e @ LogFilterError::Invalid { .. }) => failure(
            StatusCode::BAD_REQUEST,
            ErrorResponse::new(400, e.to_string()).with_field("filter"),
        ),
        Err(e @ LogFilterError::Unavailable(_)) => failure(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorResponse::new(503, e.to_string()),
        ),
    }
}

/// Logged at warn so that it shows whatever the new filter lets through: a filter change is
/// exactly what someone reading the log later needs to know about.
fn log_change(filter: &str) {
    log::warn!("log filter changed through the API to {filter:?}");
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    failure(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorResponse::new(405, format!("{} does not accept {method}", uri.path())),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{serve_with, ApiOptions, Appliance, ApplyError};
    use crate::state::DesiredState;
    use std::sync::Mutex;

    /// Accepts any filter without a `!` (a stand-in for a parse error) and remembers it.
    struct FakeLog(Mutex<String>);

    impl LogControl for FakeLog {
        fn filter(&self) -> String {
            self.0.lock().unwrap().clone()
        }
        fn set_filter(&self, filter: &str) -> Result<(), LogFilterError> {
            if filter.contains('!') {
                return Err(LogFilterError::Invalid {
                    filter: filter.to_owned(),
                    reason: "'!' is not allowed".to_owned(),
                });
            }
            *self.0.lock().unwrap() = filter.to_owned();
            Ok(())
        }
    }

    struct NoRules;

    impl Appliance for NoRules {
        fn current(&self) -> DesiredState {
            DesiredState::default()
        }
        fn apply(&self, _: DesiredState) -> Result<(), ApplyError> {
            Ok(())
        }
    }

    const TOKEN: &str = "ops-test-token-0123456789abcdef";

    /// Serves the whole API with `log` and `token`; returns its base URL. The server stops when
    /// the returned sender is dropped.
    async fn start(
        log: Option<Arc<FakeLog>>,
        token: bool,
    ) -> (String, tokio::sync::oneshot::Sender<()>) {
        let token = token.then(|| {
            let path = std::env::temp_dir().join(format!("oxlb-ops-test-{}", std::process::id()));
            std::fs::write(&path, TOKEN).unwrap();
            let t = crate::auth::ApiToken::from_file(&path).unwrap();
            let _ = std::fs::remove_file(&path);
            t
        });
        let options = ApiOptions {
            token,
            log: log.map(|l| LogHandle::new(l as Arc<dyn LogControl>)),
            ..ApiOptions::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}{LOG_LEVEL_PATH}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            serve_with(listener, Arc::new(NoRules), options, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        (base, stop)
    }

    async fn call(req: reqwest::RequestBuilder) -> (u16, serde_json::Value) {
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    #[tokio::test]
    async fn the_log_filter_is_read_and_replaced_and_a_bad_one_is_refused_naming_the_field() {
        let log = Arc::new(FakeLog(Mutex::new("info".to_owned())));
        let (url, _stop) = start(Some(log.clone()), false).await;
        let http = reqwest::Client::new();

        let (status, body) = call(http.get(&url)).await;
        assert_eq!((status, body), (200, serde_json::json!({"filter": "info"})));

        let (status, body) = call(
            http.put(&url)
                .json(&serde_json::json!({"filter": "debug,oxlb_dataplane=trace"})),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["filter"], "debug,oxlb_dataplane=trace");
        assert_eq!(log.filter(), "debug,oxlb_dataplane=trace");

        let (status, body) =
            call(http.post(&url).json(&serde_json::json!({"filter": "warn"}))).await;
        assert_eq!((status, body["filter"].as_str()), (200, Some("warn")));

        let (status, body) = call(http.put(&url).json(&serde_json::json!({"filter": "!!"}))).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["fields"], serde_json::json!(["filter"]));
        assert!(
            body["message"].as_str().unwrap().contains("\"!!\""),
            "{body}"
        );
        assert_eq!(
            log.filter(),
            "warn",
            "a refused filter changed the one in force"
        );

        for bad in [r#"{"level":"debug"}"#, "not json", "{}"] {
            let (status, body) = call(
                http.put(&url)
                    .header("content-type", "application/json")
                    .body(bad),
            )
            .await;
            assert_eq!(status, 400, "{bad}: {body}");
            assert_eq!(body["fields"], serde_json::json!(["filter"]), "{bad}");
        }

        let (status, body) = call(http.delete(&url)).await;
        assert_eq!(status, 405, "{body}");
    }

    #[tokio::test]
    async fn the_log_level_route_needs_the_token_like_every_other() {
        let log = Arc::new(FakeLog(Mutex::new("info".to_owned())));
        let (url, _stop) = start(Some(log.clone()), true).await;
        let http = reqwest::Client::new();
        let (status, _) = call(http.get(&url)).await;
        assert_eq!(status, 401);
        let (status, _) = call(http.put(&url).json(&serde_json::json!({"filter": "trace"}))).await;
        assert_eq!(status, 401);
        assert_eq!(
            log.filter(),
            "info",
            "a call without the token changed the filter"
        );
        let (status, body) = call(http.get(&url).bearer_auth(TOKEN)).await;
        assert_eq!((status, body["filter"].as_str()), (200, Some("info")));
    }

    #[tokio::test]
    async fn without_log_control_the_route_says_so_with_404() {
        let (url, _stop) = start(None, false).await;
        let (status, body) = call(reqwest::Client::new().get(&url)).await;
        assert_eq!(status, 404);
        assert!(
            body["message"].as_str().unwrap().contains("log level"),
            "{body}"
        );
    }
}
