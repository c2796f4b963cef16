//! The REST client of one appliance (`/netlox/v1`, loxilb-compatible): its credentials, the
//! liveness probe, role pushes and BGP neighbours, and the diff that makes its rules for one Service equal to
//! the desired ones, replacing rules whole or (with `--appendEPs`) attaching and detaching
//! endpoints.

use crate::crds::BgpPeerSpec;
use oxlb_api::{Endpoint, ErrorResponse, LoadBalancerEntry, LoadBalancerList};
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use std::collections::BTreeSet;
use std::time::Duration;

/// How long a rule call may take before the appliance counts as unreachable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// kube-loxilb's liveness probe timeout.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// loxilb's `oper` values (kube-loxilb's `LBOPAdd`, `LBOPAttach`, `LBOPDetach`).
pub const OPER_REPLACE: i64 = 0;
pub const OPER_ATTACH: i64 = 1;
pub const OPER_DETACH: i64 = 2;

/// Why a call to an appliance failed. `label` gives the metric label.
#[derive(Debug, thiserror::Error)]
pub enum ApplianceError {
    #[error("appliance {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("appliance {url} refused {what}: HTTP {status}: {message}")]
    Refused {
        url: String,
        what: String,
        status: u16,
        message: String,
    },
}

impl ApplianceError {
    /// The HTTP status of a refusal; None when the appliance was not reached.
    pub fn status(&self) -> Option<u16> {
        match self {
            ApplianceError::Unreachable { .. } => None,
            ApplianceError::Refused { status, .. } => Some(*status),
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            ApplianceError::Unreachable { .. } => "appliance_unreachable",
            ApplianceError::Refused { .. } => "appliance_refused",
        }
    }
}

/// Why an appliance client cannot be set up; found at start, before anything connects.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("--loxiURL {url}: not a URL: {why}")]
    BadUrl { url: String, why: String },
    #[error("--loxiURL {url}: HTTPS appliance URLs are not implemented yet by oxlb-operator; use http:// (on a trusted network, or through a TLS-terminating tunnel)")]
    HttpsNotImplemented { url: String },
    #[error("--loxiURL {url}: scheme {scheme:?} is not http")]
    Scheme { url: String, scheme: String },
    #[error("--apiTokenFile {path}: {source}")]
    TokenFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("--apiTokenFile {path} is empty; write the appliance's token into it")]
    EmptyToken { path: String },
    #[error("the API token from {source_name} must be one word of visible ASCII characters, as it is sent in an HTTP header")]
    TokenNotAHeaderValue { source_name: String },
}

/// The credentials sent to appliances: the token of `--apiTokenFile` for every appliance,
/// unless kube-loxilb's per-host variable `ACCESS_TOKEN_<host>_<port>` names one for it.
/// `Debug` never shows a token.
#[derive(Clone, Default)]
pub struct Credentials {
    file_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = if self.file_token.is_some() {
            "<hidden>"
        } else {
            "none"
        };
        write!(f, "Credentials({shown})")
    }
}

impl Credentials {
    /// Reads `--apiTokenFile` (empty path: no file token).
    pub fn from_file(path: &str) -> Result<Credentials, SetupError> {
        if path.is_empty() {
            return Ok(Credentials::default());
        }
        let text = std::fs::read_to_string(path).map_err(|source| SetupError::TokenFile {
            path: path.to_owned(),
            source,
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(SetupError::EmptyToken {
                path: path.to_owned(),
            });
        }
        Ok(Credentials {
            file_token: Some(token.to_owned()),
        })
    }

    /// A token given directly (tests, and callers that read it elsewhere).
    pub fn with_token(token: &str) -> Credentials {
        Credentials {
            file_token: Some(token.trim().to_owned()),
        }
    }

    /// The `Authorization` value for the appliance at `host_port` (`10.0.0.1:11111`), if any.
    /// kube-loxilb puts its variable's value in the header verbatim; oxlb appliances expect
    /// `Bearer <token>`, so a bare token gets the scheme added and a `Bearer ...` value is kept.
    fn authorization(
        &self,
        host_port: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<HeaderValue>, SetupError> {
        let var = access_token_variable(host_port);
        let (value, source_name) = match env(&var).filter(|v| !v.trim().is_empty()) {
            Some(v) => (v.trim().to_owned(), var),
            None => match &self.file_token {
                Some(t) => (t.clone(), "--apiTokenFile".to_owned()),
                None => return Ok(None),
            },
        };
        let header = if value.len() > 7 && value[..7].eq_ignore_ascii_case("bearer ") {
            value
        } else {
            format!("Bearer {value}")
        };
        let token_part = header[7..].trim();
        if token_part.is_empty() || !token_part.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(SetupError::TokenNotAHeaderValue { source_name });
        }
        let mut v = HeaderValue::from_str(&header)
            .map_err(|_| SetupError::TokenNotAHeaderValue { source_name })?;
        // Keeps the token out of any Debug output of the request or the client.
        v.set_sensitive(true);
        Ok(Some(v))
    }
}

/// kube-loxilb's per-appliance token variable: `ACCESS_TOKEN_` and the URL's host and port,
/// `.` and `:` turned into `_` (`ACCESS_TOKEN_10_0_0_1_11111`).
pub fn access_token_variable(host_port: &str) -> String {
    format!("ACCESS_TOKEN_{}", host_port.replace(['.', ':'], "_"))
}

/// What `with_append_eps` changes: how endpoint changes reach an existing rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EndpointUpdates {
    /// Post the rule again with the full endpoint set (oper 0).
    #[default]
    Replace,
    /// kube-loxilb's `--appendEPs`: attach new endpoints (oper 1), detach gone ones (oper 2).
    AttachDetach,
}

/// One appliance API, e.g. `http://10.0.0.1:11111`.
#[derive(Debug, Clone)]
pub struct Appliance {
    url: String,
    /// `host:port` of the URL, for messages, `--excludeRoleList` and the token variable.
    host: String,
    http: reqwest::Client,
    updates: EndpointUpdates,
}

/// What a sync changed on one appliance.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// Rules posted whole (oper 0).
    pub created: usize,
    pub deleted: usize,
    /// Endpoints attached to (oper 1) and detached from (oper 2) existing rules.
    pub attached: usize,
    pub detached: usize,
}

impl SyncReport {
    pub fn changed(&self) -> bool {
        self.created + self.deleted + self.attached + self.detached > 0
    }
}

/// The body of loxilb's `POST /config/cistate` (kube-loxilb's `CIStatusModel`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CiState {
    pub instance: String,
    /// `MASTER` or `BACKUP`.
    pub state: String,
    pub vip: String,
}

impl Appliance {
    /// A client of the appliance at `url` (`http://host:port`), sending `credentials` and
    /// updating endpoints as `updates` says.
    pub fn new(
        url: &str,
        credentials: &Credentials,
        updates: EndpointUpdates,
    ) -> Result<Appliance, SetupError> {
        Appliance::with_env(url, credentials, updates, &|k| std::env::var(k).ok())
    }

    /// [`Appliance::new`] reading variables through `env`.
    pub fn with_env(
        url: &str,
        credentials: &Credentials,
        updates: EndpointUpdates,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Appliance, SetupError> {
        let url = url.trim().trim_end_matches('/').to_owned();
        let parsed = reqwest::Url::parse(&url).map_err(|e| SetupError::BadUrl {
            url: url.clone(),
            why: e.to_string(),
        })?;
        match parsed.scheme() {
            "http" => {}
            "https" => return Err(SetupError::HttpsNotImplemented { url }),
            other => {
                return Err(SetupError::Scheme {
                    scheme: other.to_owned(),
                    url,
                })
            }
        }
        let Some(h) = parsed.host_str() else {
            return Err(SetupError::BadUrl {
                url,
                why: "it has no host".to_owned(),
            });
        };
        let host = match parsed.port_or_known_default() {
            Some(p) => format!("{h}:{p}"),
            None => h.to_owned(),
        };
        let mut headers = HeaderMap::new();
        if let Some(v) = credentials.authorization(&host, env)? {
            headers.insert(AUTHORIZATION, v);
        }
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .default_headers(headers)
            .build()
            .expect("a reqwest client without TLS always builds");
        Ok(Appliance {
            url,
            host,
            http,
            updates,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL's host without the port (an address for `--excludeRoleList`).
    pub fn host(&self) -> &str {
        let h = self
            .host
            .rsplit_once(':')
            .map_or(self.host.as_str(), |(h, _)| h);
        h.trim_start_matches('[').trim_end_matches(']')
    }

    fn unreachable(&self) -> impl Fn(reqwest::Error) -> ApplianceError + '_ {
        move |source| ApplianceError::Unreachable {
            url: self.url.clone(),
            source,
        }
    }

    async fn check(
        &self,
        what: String,
        resp: reqwest::Response,
    ) -> Result<reqwest::Response, ApplianceError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<ErrorResponse>(&text)
            .map(|e| e.message)
            .unwrap_or(text);
        Err(ApplianceError::Refused {
            url: self.url.clone(),
            what,
            status: status.as_u16(),
            message,
        })
    }

    /// Every rule on the appliance.
    pub async fn list(&self) -> Result<Vec<LoadBalancerEntry>, ApplianceError> {
        let url = format!("{}/netlox/v1/config/loadbalancer/all", self.url);
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(self.unreachable())?;
        let resp = self.check("the rule listing".into(), resp).await?;
        let list: LoadBalancerList = resp.json().await.map_err(self.unreachable())?;
        Ok(list.lb_attr)
    }

    async fn post_rule(&self, e: &LoadBalancerEntry, what: String) -> Result<(), ApplianceError> {
        let url = format!("{}/netlox/v1/config/loadbalancer", self.url);
        let resp = self
            .http
            .post(&url)
            .json(e)
            .send()
            .await
            .map_err(self.unreachable())?;
        self.check(what, resp).await?;
        Ok(())
    }

    /// Creates (or replaces) one rule with exactly its endpoints (oper 0).
    pub async fn create(&self, e: &LoadBalancerEntry) -> Result<(), ApplianceError> {
        let mut e = e.clone();
        e.service_arguments.oper = OPER_REPLACE;
        self.post_rule(&e, format!("rule {}", describe(&e))).await
    }

    /// Attaches (oper 1) or detaches (oper 2) `endpoints` to or from the existing rule of
    /// `rule`'s address, port and protocol; the rule's other settings stay as they are.
    pub async fn change_endpoints(
        &self,
        rule: &LoadBalancerEntry,
        oper: i64,
        endpoints: Vec<Endpoint>,
    ) -> Result<(), ApplianceError> {
        let mut e = rule.clone();
        e.service_arguments.oper = oper;
        let verb = if oper == OPER_ATTACH {
            "attaching"
        } else {
            "detaching"
        };
        let what = format!(
            "{verb} {} to/from rule {}",
            endpoints
                .iter()
                .map(|p| format!("{}:{}", p.endpoint_ip, p.target_port))
                .collect::<Vec<_>>()
                .join(","),
            describe(&e)
        );
        e.endpoints = endpoints;
        self.post_rule(&e, what).await
    }

    /// Deletes one rule.
    pub async fn delete(&self, e: &LoadBalancerEntry) -> Result<(), ApplianceError> {
        let sa = &e.service_arguments;
        let url = format!(
            "{}/netlox/v1/config/loadbalancer/externalipaddress/{}/port/{}/protocol/{}",
            self.url, sa.external_ip, sa.port, sa.protocol
        );
        let resp = self
            .http
            .delete(&url)
            .send()
            .await
            .map_err(self.unreachable())?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(());
        }
        self.check(format!("deleting rule {}", describe(e)), resp)
            .await?;
        Ok(())
    }

    /// Makes the rules named with `prefix` equal to `desired`: deletes stale ones, creates
    /// missing ones, and brings different ones in line. Safe to run any number of times.
    ///
    /// In `AttachDetach` mode a rule whose settings match and only its endpoints differ gets
    /// the missing endpoints attached first and the extra ones detached after, so it never
    /// passes through an empty set (which appliances refuse); endpoints on the appliance that
    /// the cluster does not have are detached too, so a resync converges as in `Replace`
    /// mode. A rule that is missing, or differs in a setting an attach cannot change, is
    /// posted whole: loxilb would create it on attach, oxlb refuses attaching to nothing.
    pub async fn sync(
        &self,
        prefix: &str,
        desired: &[LoadBalancerEntry],
    ) -> Result<SyncReport, ApplianceError> {
        let actual = self.list().await?;
        let mut report = SyncReport::default();
        for a in actual
            .iter()
            .filter(|a| a.service_arguments.name.starts_with(prefix))
        {
            let key = kube_watcher::rule_key(a);
            if !desired.iter().any(|d| kube_watcher::rule_key(d) == key) {
                self.delete(a).await?;
                report.deleted += 1;
            }
        }
        for d in desired {
            let key = kube_watcher::rule_key(d);
            let current = actual.iter().find(|a| kube_watcher::rule_key(a) == key);
            match current {
                Some(a) if same_rule(d, a) => {}
                Some(a) if self.updates == EndpointUpdates::AttachDetach && same_settings(d, a) => {
                    let (attach, detach) = endpoint_delta(d, a);
                    if !attach.is_empty() {
                        report.attached += attach.len();
                        self.change_endpoints(d, OPER_ATTACH, attach).await?;
                    }
                    if !detach.is_empty() {
                        report.detached += detach.len();
                        self.change_endpoints(d, OPER_DETACH, detach).await?;
                    }
                }
                _ => {
                    self.create(d).await?;
                    report.created += 1;
                }
            }
        }
        Ok(report)
    }

    /// Deletes every rule named with `prefix`; returns how many. Also in `AttachDetach`
    /// mode: kube-loxilb detaches a deleted Service's endpoints, but every endpoint of a
    /// converged rule is the Service's, and an appliance refuses to detach the last one.
    pub async fn remove_all(&self, prefix: &str) -> Result<usize, ApplianceError> {
        Ok(self.sync(prefix, &[]).await?.deleted)
    }

    /// kube-loxilb's liveness probe: `GET /netlox/v1/` answered with a success within
    /// [`PROBE_TIMEOUT`].
    pub async fn probe(&self) -> Result<(), ApplianceError> {
        let url = format!("{}/netlox/v1/", self.url);
        let resp = self
            .http
            .get(&url)
            .timeout(PROBE_TIMEOUT)
            .send()
            .await
            .map_err(self.unreachable())?;
        self.check("the liveness probe".into(), resp).await?;
        Ok(())
    }

    /// Sets the appliance's role for one instance (`POST /netlox/v1/config/cistate`).
    pub async fn set_role(&self, state: &CiState) -> Result<(), ApplianceError> {
        let url = format!("{}/netlox/v1/config/cistate", self.url);
        let resp = self
            .http
            .post(&url)
            .json(state)
            .send()
            .await
            .map_err(self.unreachable())?;
        self.check(
            format!("role {} for instance {}", state.state, state.instance),
            resp,
        )
        .await?;
        Ok(())
    }
}

impl Appliance {
    /// Adds a BGP neighbour (loxilb's `POST /netlox/v1/config/bgp/neigh`, the body kube-loxilb
    /// sends). loxilb answers 409 for a neighbour it already has: that is success here.
    pub async fn add_bgp_neighbor(&self, peer: &BgpPeerSpec) -> Result<(), ApplianceError> {
        let url = format!("{}/netlox/v1/config/bgp/neigh", self.url);
        let resp = self
            .http
            .post(&url)
            .json(peer)
            .send()
            .await
            .map_err(self.unreachable())?;
        if resp.status() == reqwest::StatusCode::CONFLICT {
            return Ok(());
        }
        self.check(
            format!("BGP neighbour {} AS {}", peer.ip_address, peer.remote_as),
            resp,
        )
        .await?;
        Ok(())
    }

    /// Sets the appliance's BGP global configuration (loxilb's `POST
    /// /netlox/v1/config/bgp/global`). 409 (already configured so) counts as success, as for
    /// neighbours.
    pub async fn set_bgp_global(
        &self,
        config: &crate::bgp_flags::GlobalConfig,
    ) -> Result<(), ApplianceError> {
        let url = format!("{}/netlox/v1/config/bgp/global", self.url);
        let resp = self
            .http
            .post(&url)
            .json(config)
            .send()
            .await
            .map_err(self.unreachable())?;
        if resp.status() == reqwest::StatusCode::CONFLICT {
            return Ok(());
        }
        self.check(
            format!("BGP global configuration AS {}", config.local_as),
            resp,
        )
        .await?;
        Ok(())
    }

    /// Removes a BGP neighbour (loxilb's `DELETE /netlox/v1/config/bgp/neigh/{ip}?remoteAs=N`).
    /// Only called for a neighbour the appliance accepted, so 404 means it is gone already.
    pub async fn delete_bgp_neighbor(&self, peer: &BgpPeerSpec) -> Result<(), ApplianceError> {
        let url = format!(
            "{}/netlox/v1/config/bgp/neigh/{}",
            self.url, peer.ip_address
        );
        let resp = self
            .http
            .delete(&url)
            .query(&[("remoteAs", peer.remote_as)])
            .send()
            .await
            .map_err(self.unreachable())?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(());
        }
        self.check(
            format!(
                "deleting BGP neighbour {} AS {}",
                peer.ip_address, peer.remote_as
            ),
            resp,
        )
        .await?;
        Ok(())
    }
}

/// `ip:port/protocol (name)`, for messages.
pub fn describe(e: &LoadBalancerEntry) -> String {
    let sa = &e.service_arguments;
    format!(
        "{}:{}/{} ({})",
        sa.external_ip, sa.port, sa.protocol, sa.name
    )
}

type Settings = (
    oxlb_api::ServiceArguments,
    BTreeSet<String>,
    BTreeSet<String>,
);

/// The parts of a rule that decide equality, with fields a listing may fill in (the default
/// timeout, `managed`, `oper`, endpoint state and counters) normalised away.
fn settings(e: &LoadBalancerEntry) -> Settings {
    let mut sa = e.service_arguments.clone();
    sa.external_ip = kube_watcher::canonical_ip(&sa.external_ip);
    sa.managed = false;
    sa.oper = 0;
    if sa.inactive_timeout == 0 {
        sa.inactive_timeout = i64::from(oxlb_api::DEFAULT_INACTIVE_TIMEOUT_SECS);
    }
    let srcs: BTreeSet<String> = e.allowed_sources.iter().map(|s| s.prefix.clone()).collect();
    let secs: BTreeSet<String> = e
        .secondary_ips
        .iter()
        .map(|s| s.secondary_ip.clone())
        .collect();
    (sa, srcs, secs)
}

fn endpoint_set(e: &LoadBalancerEntry) -> BTreeSet<(String, i64, i64)> {
    e.endpoints
        .iter()
        .map(|p| {
            (
                kube_watcher::canonical_ip(&p.endpoint_ip),
                p.target_port,
                p.weight,
            )
        })
        .collect()
}

/// True when the appliance's rule `actual` already is `desired`.
pub fn same_rule(desired: &LoadBalancerEntry, actual: &LoadBalancerEntry) -> bool {
    same_settings(desired, actual) && endpoint_set(desired) == endpoint_set(actual)
}

/// True when the two rules differ at most in their endpoints.
pub fn same_settings(desired: &LoadBalancerEntry, actual: &LoadBalancerEntry) -> bool {
    settings(desired) == settings(actual)
}

/// The endpoints to attach to `actual` (missing, or with another weight: an attach of the
/// same address and port sets the new weight) and to detach from it (address and port not
/// in `desired`).
pub fn endpoint_delta(
    desired: &LoadBalancerEntry,
    actual: &LoadBalancerEntry,
) -> (Vec<Endpoint>, Vec<Endpoint>) {
    let have = endpoint_set(actual);
    let attach: Vec<Endpoint> = desired
        .endpoints
        .iter()
        .filter(|p| {
            !have.contains(&(
                kube_watcher::canonical_ip(&p.endpoint_ip),
                p.target_port,
                p.weight,
            ))
        })
        .map(bare)
        .collect();
    let detach: Vec<Endpoint> = actual
        .endpoints
        .iter()
        .filter(|p| {
            !desired.endpoints.iter().any(|d| {
                kube_watcher::canonical_ip(&d.endpoint_ip)
                    == kube_watcher::canonical_ip(&p.endpoint_ip)
                    && d.target_port == p.target_port
            })
        })
        .map(bare)
        .collect();
    (attach, detach)
}

/// The endpoint as a request carries it: no state or counter from a listing.
fn bare(p: &Endpoint) -> Endpoint {
    Endpoint {
        endpoint_ip: p.endpoint_ip.clone(),
        target_port: p.target_port,
        weight: p.weight,
        state: None,
        counter: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxlb_api::{Endpoint, ServiceArguments};

    fn desired() -> LoadBalancerEntry {
        let ep = |ip: &str| Endpoint {
            endpoint_ip: ip.to_owned(),
            target_port: 8080,
            weight: 1,
            state: None,
            counter: None,
        };
        LoadBalancerEntry {
            service_arguments: ServiceArguments {
                external_ip: "198.18.100.1".into(),
                private_ip: String::new(),
                port: 2020,
                port_max: 0,
                protocol: "tcp".into(),
                sel: 0,
                mode: 0,
                bgp: false,
                monitor: false,
                probetype: String::new(),
                probeport: 0,
                probereq: String::new(),
                proberesp: String::new(),
                probe_timeout: 0,
                probe_retries: 0,
                inactive_timeout: 1800,
                block: 0,
                managed: true,
                security: 0,
                name: "shop_web:llb-inst0".into(),
                snat: false,
                oper: 0,
                host: String::new(),
                proxyprotocolv2: false,
                egress: false,
                on_endpoint_down: String::new(),
            },
            endpoints: vec![ep("198.18.31.2"), ep("198.18.31.1")],
            secondary_ips: vec![],
            allowed_sources: vec![],
        }
    }

    #[test]
    fn what_the_appliance_lists_back_counts_as_the_same_rule() {
        let d = desired();
        let listed = oxlb_api::to_entry(&oxlb_api::validate(&d).unwrap());
        assert!(same_rule(&d, &listed), "{listed:?}");
    }

    #[test]
    fn ipv6_addresses_written_another_way_are_the_same_rule() {
        let mut d = desired();
        d.service_arguments.external_ip = "fd00:198:18::1".into();
        d.endpoints[0].endpoint_ip = "fd00::a".into();
        let mut listed = d.clone();
        listed.service_arguments.external_ip = "fd00:198:18:0:0:0:0:1".into();
        listed.endpoints[0].endpoint_ip = "FD00:0::A".into();
        assert!(same_rule(&d, &listed));
        assert_eq!(kube_watcher::rule_key(&d), kube_watcher::rule_key(&listed));
        assert_eq!(endpoint_delta(&d, &listed), (vec![], vec![]));
    }

    #[test]
    fn a_different_endpoint_set_or_setting_is_a_different_rule() {
        let d = desired();
        let mut fewer = d.clone();
        fewer.endpoints.pop();
        assert!(!same_rule(&d, &fewer));
        let mut other_sel = d.clone();
        other_sel.service_arguments.sel = 1;
        assert!(!same_rule(&d, &other_sel));
        let mut other_timeout = d.clone();
        other_timeout.service_arguments.inactive_timeout = 60;
        assert!(!same_rule(&d, &other_timeout));
    }

    #[test]
    fn the_delta_attaches_new_or_reweighted_endpoints_and_detaches_gone_ones() {
        let d = desired();
        let mut actual = d.clone();
        actual.endpoints[0].endpoint_ip = "198.18.31.9".into();
        actual.endpoints[1].weight = 5;
        actual.endpoints[1].state = Some("active".into());
        let (attach, detach) = endpoint_delta(&d, &actual);
        let ips = |v: &[Endpoint]| -> Vec<(String, i64)> {
            v.iter()
                .map(|p| (p.endpoint_ip.clone(), p.weight))
                .collect()
        };
        assert_eq!(
            ips(&attach),
            vec![("198.18.31.2".into(), 1), ("198.18.31.1".into(), 1)]
        );
        assert_eq!(ips(&detach), vec![("198.18.31.9".into(), 1)]);
        assert!(detach.iter().all(|p| p.state.is_none()));
        assert!(same_settings(&d, &actual));
        let (a, b) = endpoint_delta(&d, &d);
        assert!(a.is_empty() && b.is_empty());
    }

    #[test]
    fn a_per_host_access_token_variable_wins_over_the_token_file_and_gets_the_bearer_scheme() {
        let creds = Credentials::with_token("file-token");
        let env_none = |_: &str| None;
        let h = creds
            .authorization("10.0.0.1:11111", &env_none)
            .unwrap()
            .unwrap();
        assert_eq!(h.to_str().unwrap(), "Bearer file-token");
        assert!(h.is_sensitive());
        let env = |k: &str| (k == "ACCESS_TOKEN_10_0_0_1_11111").then(|| "env-token\n".to_owned());
        let h = creds
            .authorization("10.0.0.1:11111", &env)
            .unwrap()
            .unwrap();
        assert_eq!(h.to_str().unwrap(), "Bearer env-token");
        let verbatim = |_: &str| Some("Bearer already".to_owned());
        let h = Credentials::default()
            .authorization("h:1", &verbatim)
            .unwrap()
            .unwrap();
        assert_eq!(h.to_str().unwrap(), "Bearer already");
        assert!(Credentials::default()
            .authorization("h:1", &env_none)
            .unwrap()
            .is_none());
        let bad = |_: &str| Some("two words".to_owned());
        assert!(Credentials::default().authorization("h:1", &bad).is_err());
        assert_eq!(format!("{creds:?}"), "Credentials(<hidden>)");
    }

    #[test]
    fn https_and_other_schemes_are_refused_when_the_client_is_made() {
        let c = Credentials::default();
        let e = Appliance::new("https://a:11111", &c, EndpointUpdates::Replace).unwrap_err();
        assert!(
            e.to_string()
                .contains("HTTPS appliance URLs are not implemented"),
            "{e}"
        );
        assert!(Appliance::new("ftp://a", &c, EndpointUpdates::Replace).is_err());
        let a = Appliance::new("http://198.18.0.1:11111/", &c, EndpointUpdates::Replace).unwrap();
        assert_eq!(
            (a.url(), a.host()),
            ("http://198.18.0.1:11111", "198.18.0.1")
        );
    }
}
