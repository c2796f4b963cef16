//! Sends one API call and sorts the outcome the way the exit status does: an answer, a
//! refusal by the appliance (with its own message), or no answer at all.

use crate::args::{Call, Method};
use oxlb_api::ErrorResponse;
use reqwest::blocking::Client;
use std::path::{Path, PathBuf};
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
    /// The appliance wants a token (none was given) or refused the one given: HTTP 401.
    #[error("HTTP 401: {message}; {}", match token_file {
        None => "give the API token with --token-file PATH (or the OXLB_TOKEN_FILE environment variable)".to_string(),
        Some(p) => format!("the token in {} was not accepted: it must be the one in the appliance's --api-token-file", p.display()),
    })]
    Unauthorized {
        message: String,
        body: String,
        /// The file the token that was sent came from, if one was.
        token_file: Option<PathBuf>,
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
    /// `Bearer <token>`, and the file it came from.
    bearer: Option<(String, PathBuf)>,
}

/// How to reach the API besides its URL.
#[derive(Debug, Default)]
pub struct Access<'a> {
    /// File holding the bearer token.
    pub token_file: Option<&'a Path>,
    /// PEM certificates to trust besides the system's.
    pub ca_file: Option<&'a Path>,
}

impl ApiClient {
    /// A client of the API at `base` (e.g. `http://127.0.0.1:11111`); `Err` says what is wrong
    /// with the URL or with the token or CA file.
    pub fn new(base: &str, access: &Access<'_>) -> Result<ApiClient, String> {
        let url = reqwest::Url::parse(base).map_err(|e| format!("--api {base:?}: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
            return Err(format!("--api {base:?}: use an http:// or https:// URL"));
        }
        let mut builder = Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT);
        if let Some(path) = access.ca_file {
            for cert in ca_certificates(path)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .map_err(|e| format!("cannot set up the HTTP client: {e}"))?;
        let bearer = access
            .token_file
            .map(|p| read_token(p).map(|t| (format!("Bearer {t}"), p.to_owned())))
            .transpose()?;
        Ok(ApiClient {
            base: base.trim_end_matches('/').to_string(),
            http,
            bearer,
        })
    }

    /// Sends `call`; the body of a 2xx answer.
    pub fn send(&self, call: &Call) -> Result<String, CallError> {
        let url = format!("{}{}", self.base, call.path);
        let req = match call.method {
            Method::Get => self.http.get(&url),
            Method::Post => self.http.post(&url),
            Method::Put => self.http.put(&url),
            Method::Delete => self.http.delete(&url),
        };
        let req = match &call.body {
            Some(b) => req.json(b),
            None => req,
        };
        let req = match &self.bearer {
            Some((value, _)) => req.header(reqwest::header::AUTHORIZATION, value),
            None => req,
        };
        let unreachable = |e: reqwest::Error| {
            let mut detail = chain(&e);
            if detail.contains("certificate") {
                detail.push_str(
                    "; if the appliance has its own (self-signed) certificate, trust it with --ca-file PATH",
                );
            }
            CallError::Unreachable {
                api: self.base.clone(),
                detail,
            }
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
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(CallError::Unauthorized {
                message,
                body,
                token_file: self.bearer.as_ref().map(|(_, p)| p.clone()),
            });
        }
        Err(CallError::Refused {
            status: status.as_u16(),
            message,
            body,
        })
    }
}

/// The token in `path`, trimmed as the appliance trims its own.
fn read_token(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("the token file {} is empty", path.display()));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "the token in {} must be one word of visible ASCII characters",
            path.display()
        ));
    }
    Ok(token.to_owned())
}

/// Every PEM certificate in `path`.
fn ca_certificates(path: &Path) -> Result<Vec<reqwest::Certificate>, String> {
    let pem = std::fs::read(path)
        .map_err(|e| format!("cannot read the CA file {}: {e}", path.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("the CA file {} is not PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "the CA file {} holds no `-----BEGIN CERTIFICATE-----` block",
            path.display()
        ));
    }
    Ok(certs)
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
