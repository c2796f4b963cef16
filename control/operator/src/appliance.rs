//! The REST client of one appliance (`/netlox/v1`, loxilb-compatible) and the diff that makes
//! its rules for one Service equal to the desired ones.

use oxlb_api::{ErrorResponse, LoadBalancerEntry, LoadBalancerList};
use std::collections::BTreeSet;
use std::time::Duration;

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
    pub fn label(&self) -> &'static str {
        match self {
            ApplianceError::Unreachable { .. } => "appliance_unreachable",
            ApplianceError::Refused { .. } => "appliance_refused",
        }
    }
}

/// One appliance API, e.g. `http://10.0.0.1:11111`.
#[derive(Debug, Clone)]
pub struct Appliance {
    url: String,
    http: reqwest::Client,
}

/// What a sync changed on one appliance.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncReport {
    pub created: usize,
    pub deleted: usize,
}

impl Appliance {
    pub fn new(url: &str) -> Appliance {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("a reqwest client without TLS always builds");
        Appliance {
            url: url.trim_end_matches('/').to_owned(),
            http,
        }
    }

    pub fn url(&self) -> &str {
        &self.url
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

    /// Creates (or replaces) one rule.
    pub async fn create(&self, e: &LoadBalancerEntry) -> Result<(), ApplianceError> {
        let url = format!("{}/netlox/v1/config/loadbalancer", self.url);
        let resp = self
            .http
            .post(&url)
            .json(e)
            .send()
            .await
            .map_err(self.unreachable())?;
        self.check(format!("rule {}", describe(e)), resp).await?;
        Ok(())
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
    /// missing or different ones. Safe to run any number of times.
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
            if !current.is_some_and(|a| same_rule(d, a)) {
                self.create(d).await?;
                report.created += 1;
            }
        }
        Ok(report)
    }

    /// Deletes every rule named with `prefix`; returns how many.
    pub async fn remove_all(&self, prefix: &str) -> Result<usize, ApplianceError> {
        Ok(self.sync(prefix, &[]).await?.deleted)
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

/// True when the appliance's rule `actual` already is `desired`. Fields a listing may fill in
/// (the default timeout, `managed`, endpoint state and counters) do not count.
pub fn same_rule(desired: &LoadBalancerEntry, actual: &LoadBalancerEntry) -> bool {
    let norm = |e: &LoadBalancerEntry| {
        let mut sa = e.service_arguments.clone();
        sa.managed = false;
        sa.oper = 0;
        if sa.inactive_timeout == 0 {
            sa.inactive_timeout = i64::from(oxlb_api::DEFAULT_INACTIVE_TIMEOUT_SECS);
        }
        let eps: BTreeSet<(String, i64, i64)> = e
            .endpoints
            .iter()
            .map(|p| (p.endpoint_ip.clone(), p.target_port, p.weight))
            .collect();
        let srcs: BTreeSet<String> = e.allowed_sources.iter().map(|s| s.prefix.clone()).collect();
        let secs: BTreeSet<String> = e
            .secondary_ips
            .iter()
            .map(|s| s.secondary_ip.clone())
            .collect();
        (sa, eps, srcs, secs)
    };
    norm(desired) == norm(actual)
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
}
