//! Sends one API call and sorts the outcome the way the exit status does: an answer, a
//! refusal by the appliance (with its own message), or no answer at all.

use crate::args::{Call, Method};
use oxlb_api::ErrorResponse;
use reqwest::blocking::Client;
use std::time::Duration;

/// How long a change may take: the appliance answers only once the change runs and is saved.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a call did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The appliance answered with a status other than 2xx.
    #[error("HTTP {status}: {message}")]
    Refused {
        status: u16,
        /// The appliance's `message`, or its whole body if that is not loxilb's error shape.
        message: String,
        body: String,
    },
    /// The appliance answered 2xx with something this client does not understand.
    #[error("unexpected answer to {what}: {problem}")]
    Unexpected { what: String, problem: String },
    /// No HTTP answer: nothing listens, the connection broke, or it timed out.
    #[error("cannot reach the appliance at {api}: {detail}")]
    Unreachable { api: String, detail: String },
}

pub struct ApiClient {
    base: String,
    http: Client,
}

impl ApiClient {
    /// A client of the API at `base` (e.g. `http://127.0.0.1:11111`); `Err` says what is wrong
    /// with the URL.
    pub fn new(base: &str) -> Result<ApiClient, String> {
        let url = reqwest::Url::parse(base).map_err(|e| format!("--api {base:?}: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
            return Err(format!("--api {base:?}: use an http:// URL"));
        }
        let http = Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| format!("cannot set up the HTTP client: {e}"))?;
        Ok(ApiClient {
            base: base.trim_end_matches('/').to_string(),
            http,
        })
    }

    /// Sends `call`; the body of a 2xx answer.
    pub fn send(&self, call: &Call) -> Result<String, CallError> {
        let url = format!("{}{}", self.base, call.path);
        let req = match call.method {
            Method::Get => self.http.get(&url),
            Method::Post => self.http.post(&url),
            Method::Delete => self.http.delete(&url),
        };
        let req = match &call.body {
            Some(b) => req.json(b),
            None => req,
        };
        let unreachable = |e: reqwest::Error| CallError::Unreachable {
            api: self.base.clone(),
            detail: chain(&e),
        };
        let resp = req.send().map_err(unreachable)?;
        let status = resp.status();
        let body = resp.text().map_err(unreachable)?;
        if status.is_success() {
            return Ok(body);
        }
        let message = serde_json::from_str::<ErrorResponse>(&body)
            .map(|e| e.message)
            .unwrap_or_else(|_| body.trim().to_string());
        Err(CallError::Refused {
            status: status.as_u16(),
            message,
            body,
        })
    }
}

/// An error with its causes: reqwest's own text alone ("error sending request") hides why.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        cause = c.source();
    }
    text
}
