//! Bearer-token authentication of the REST API: the token from `--api-token-file`, the check
//! every request passes before any handler runs, and the rule that an API reachable from
//! other hosts must have a token.
//!
//! loxilb's clients (kube-loxilb, loxicmd) send `Authorization: Bearer <token>` on every
//! request once a token is configured, the liveness probe `GET /netlox/v1/` included, so the
//! check covers every path: nothing, not even which paths exist, is told to a caller without
//! the token.

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use oxlb_api::ErrorResponse;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Tokens shorter than this are accepted with a warning: guessable, but a test setup may want one.
const SHORT_TOKEN: usize = 16;

/// Why the API's token cannot be used, or why the API may not start without one.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The token file cannot be read.
    #[error("cannot read the API token file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The token file holds nothing but whitespace.
    #[error("the API token file {path} is empty; write one token into it (e.g. `openssl rand -hex 32 > {path}`)")]
    Empty { path: PathBuf },
    /// The token has a character an HTTP header cannot carry, or inner whitespace.
    #[error("the API token in {path} must be one word of visible ASCII characters (no spaces or line breaks inside), as it is sent in an HTTP header")]
    NotAHeaderValue { path: PathBuf },
    /// The API would listen beyond this host with nothing to stop anyone changing the rules.
    #[error("refusing to serve the API on {addr} without authentication, as anyone who can reach it could change the load-balancer rules: give --api-token-file PATH (with --api-tls-cert/--api-tls-key so the token is not sent in clear), or listen on a loopback address such as 127.0.0.1:11111")]
    ExposedWithoutToken { addr: SocketAddr },
}

/// The API's bearer token. It has no `PartialEq` and its `Debug` hides it: the only comparison
/// is [`ApiToken::matches`], in constant time, and the token never reaches a log.
#[derive(Clone)]
pub struct ApiToken(Arc<[u8]>);

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiToken(<{} bytes, hidden>)", self.0.len())
    }
}

impl ApiToken {
    /// The token in `path`: its whole content, trimmed of surrounding whitespace (a trailing
    /// newline, as `echo` writes it).
    pub fn from_file(path: &Path) -> Result<ApiToken, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
            path: path.to_owned(),
            source,
        })?;
        let token = ApiToken::new(&text).map_err(|e| match e {
            TokenProblem::Empty => AuthError::Empty {
                path: path.to_owned(),
            },
            TokenProblem::NotAHeaderValue => AuthError::NotAHeaderValue {
                path: path.to_owned(),
            },
        })?;
        if token.0.len() < SHORT_TOKEN {
            log::warn!(
                "the API token in {} has only {} characters; use at least {SHORT_TOKEN} random ones",
                path.display(),
                token.0.len()
            );
        }
        warn_if_readable_by_others(path);
        Ok(token)
    }

    fn new(text: &str) -> Result<ApiToken, TokenProblem> {
        let t = text.trim();
        if t.is_empty() {
            return Err(TokenProblem::Empty);
        }
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenProblem::NotAHeaderValue);
        }
        Ok(ApiToken(t.as_bytes().into()))
    }

    /// Whether `presented` is the token. Constant time in the content, so the time an answer
    /// takes does not tell how many leading bytes were right; a different length is refused
    /// at once, which reveals only the length.
    pub fn matches(&self, presented: &[u8]) -> bool {
        self.0.as_ref().ct_eq(presented).into()
    }
}

enum TokenProblem {
    Empty,
    NotAHeaderValue,
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            log::warn!(
                "the API token file {} can be read by other users; `chmod 600` it",
                path.display()
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

/// Refuses an API reachable from other hosts (any non-loopback address, the unspecified one
/// included) unless it has a token.
pub fn check_exposure(addr: SocketAddr, token: Option<&ApiToken>) -> Result<(), AuthError> {
    if token.is_none() && !addr.ip().is_loopback() {
        return Err(AuthError::ExposedWithoutToken { addr });
    }
    Ok(())
}

/// What is wrong with a request's credentials; each becomes a 401 saying so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    Missing,
    NotBearer,
    WrongToken,
}

impl Rejection {
    fn message(self) -> &'static str {
        match self {
            Rejection::Missing => "this API needs a token: send the header `Authorization: Bearer <token>` with the token of the appliance's --api-token-file (oxlbctl: --token-file PATH or OXLB_TOKEN_FILE)",
            Rejection::NotBearer => "the Authorization header must read `Bearer <token>`",
            Rejection::WrongToken => "the bearer token is not the one this appliance was started with (its --api-token-file)",
        }
    }
}

/// Checks the `Authorization` header of a request against `token`.
pub fn check(token: &ApiToken, authorization: Option<&HeaderValue>) -> Result<(), Rejection> {
    let value = authorization.ok_or(Rejection::Missing)?.as_bytes();
    // The scheme is case-insensitive (RFC 9110); the token follows after one or more spaces.
    let scheme = value.get(..7).ok_or(Rejection::NotBearer)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return Err(Rejection::NotBearer);
    }
    let presented = value[7..].trim_ascii();
    if token.matches(presented) {
        Ok(())
    } else {
        Err(Rejection::WrongToken)
    }
}

/// Middleware answering 401 (loxilb's `Error` body, and `WWW-Authenticate: Bearer`) to any
/// request without the token; the handler, and so any change, never runs for it.
pub async fn require_token(State(token): State<ApiToken>, req: Request, next: Next) -> Response {
    match check(&token, req.headers().get(header::AUTHORIZATION)) {
        Ok(()) => next.run(req).await,
        Err(why) => {
            log::debug!("refused {} {}: {why:?}", req.method(), req.uri().path());
            let body = ErrorResponse::new(StatusCode::UNAUTHORIZED.as_u16(), why.message());
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                Json(body),
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(t: &str) -> ApiToken {
        ApiToken::new(t).ok().expect("a valid token")
    }

    fn header(v: &str) -> HeaderValue {
        HeaderValue::from_str(v).unwrap()
    }

    #[test]
    fn a_request_without_an_authorization_header_is_refused_as_missing() {
        assert_eq!(check(&token("s3cret-token"), None), Err(Rejection::Missing));
    }

    #[test]
    fn a_wrong_token_or_a_prefix_of_the_right_one_is_refused() {
        let t = token("s3cret-token");
        for wrong in [
            "Bearer s3cret-tokeN",
            "Bearer x3cret-token",
            "Bearer s3cret",
            "Bearer s3cret-token-and-more",
            "Bearer ",
        ] {
            assert_eq!(
                check(&t, Some(&header(wrong))),
                Err(Rejection::WrongToken),
                "{wrong}"
            );
        }
    }

    #[test]
    fn another_scheme_than_bearer_is_refused_as_such() {
        let t = token("s3cret-token");
        for v in [
            "Basic czNjcmV0LXRva2Vu",
            "s3cret-token",
            "Bearers3cret-token",
        ] {
            assert_eq!(
                check(&t, Some(&header(v))),
                Err(Rejection::NotBearer),
                "{v}"
            );
        }
    }

    #[test]
    fn the_right_token_passes_whatever_the_case_of_the_scheme() {
        let t = token("s3cret-token");
        for v in [
            "Bearer s3cret-token",
            "bearer s3cret-token",
            "BEARER  s3cret-token",
        ] {
            assert_eq!(check(&t, Some(&header(v))), Ok(()), "{v}");
        }
    }

    #[test]
    fn the_token_file_is_trimmed_and_must_hold_one_word() {
        assert!(token("  abc\n").matches(b"abc"));
        assert!(matches!(ApiToken::new(" \n"), Err(TokenProblem::Empty)));
        assert!(matches!(
            ApiToken::new("two words"),
            Err(TokenProblem::NotAHeaderValue)
        ));
        assert!(matches!(
            ApiToken::new("t\u{e9}st"),
            Err(TokenProblem::NotAHeaderValue)
        ));
    }

    /// Compiles only while `ApiToken` has no `PartialEq`: with one, the second impl below
    /// would apply too and the call would be ambiguous. So the token can only be compared
    /// through `matches`, which is `subtle`'s constant-time equality.
    #[test]
    fn the_token_can_only_be_compared_in_constant_time() {
        trait AmbiguousIfPartialEq<A> {
            fn check() {}
        }
        impl<T: ?Sized> AmbiguousIfPartialEq<()> for T {}
        #[allow(dead_code)]
        struct Marker;
        impl<T: ?Sized + PartialEq> AmbiguousIfPartialEq<Marker> for T {}
        <ApiToken as AmbiguousIfPartialEq<_>>::check();

        // And `matches` agrees with subtle's constant-time comparison on every kind of input.
        let t = token("s3cret-token");
        for presented in [
            &b"s3cret-token"[..],
            b"s3cret-tokeX",
            b"X3cret-token",
            b"s3c",
            b"",
        ] {
            let ct: bool = b"s3cret-token"[..].ct_eq(presented).into();
            assert_eq!(t.matches(presented), ct);
        }
    }

    #[test]
    fn the_token_never_appears_in_debug_output() {
        let shown = format!("{:?}", token("s3cret-token"));
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn a_non_loopback_address_needs_a_token_and_loopback_does_not() {
        let t = token("s3cret-token");
        let lb: SocketAddr = "198.18.0.1:11111".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:11111".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:11111".parse().unwrap();
        let local6: SocketAddr = "[::1]:11111".parse().unwrap();
        let e = check_exposure(lb, None).unwrap_err().to_string();
        assert!(e.contains("--api-token-file"), "{e}");
        assert!(check_exposure(any, None).is_err());
        assert!(check_exposure(lb, Some(&t)).is_ok());
        assert!(check_exposure(local, None).is_ok());
        assert!(check_exposure(local6, None).is_ok());
    }
}
