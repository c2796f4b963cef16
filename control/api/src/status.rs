//! The appliance's status (`GET /netlox/v1/status`, oxlb's own call: loxilb has none like it).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What is running: the build, for how long, on which interfaces and with how many rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusResponse {
    /// `ok` whenever the API answers, as in `GET /netlox/v1/`.
    pub status: String,
    /// The appliance's version (its crate version).
    pub version: String,
    /// Seconds since the appliance started.
    #[serde(rename = "uptimeSeconds")]
    pub uptime_seconds: u64,
    /// Packet worker threads, one per served queue.
    pub workers: usize,
    /// The interfaces served, as given with `--iface`.
    pub interfaces: Vec<String>,
    /// Load-balancer rules in the running state.
    pub services: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_is_written_in_camel_case_like_the_rest_of_the_api() {
        let s = StatusResponse {
            status: "ok".into(),
            version: "0.1.0".into(),
            uptime_seconds: 7,
            workers: 2,
            interfaces: vec!["lb0".into(), "lb1".into()],
            services: 1,
        };
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"status":"ok","version":"0.1.0","uptimeSeconds":7,"workers":2,"interfaces":["lb0","lb1"],"services":1}"#
        );
    }
}
