//! The endpoint listing of `GET /netlox/v1/config/endpoint/all`: every endpoint of the running
//! rules with its probe and the probe's verdict, keyed as loxilb keys endpoint hosts.

use crate::compile::{Down, HealthKey};
use crate::state::DesiredState;
use oxlb_api::endpoint::{STATE_NOK, STATE_OK};
use oxlb_api::{EndpointEntry, ProbeKind};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// One entry per (endpoint address, probe type, probe port), as loxilb lists endpoint hosts:
/// rules sharing an endpoint and its probe share an entry, which is `nok` when the probe of any
/// of them reports the endpoint down. Endpoints of rules without a probe are listed with probe
/// type `none`, always `ok`. Ordered by address, then probe type and port.
pub fn list(state: &DesiredState, down: &Down) -> Vec<EndpointEntry> {
    let mut out: BTreeMap<(IpAddr, &'static str, u16), EndpointEntry> = BTreeMap::new();
    for spec in state.services() {
        let probe = spec.monitor.as_ref().filter(|p| p.kind != ProbeKind::None);
        for e in &spec.endpoints {
            let (kind, port) = match probe {
                Some(p) => (p.kind.as_str(), p.port_of(e)),
                None => (ProbeKind::None.as_str(), 0),
            };
            let is_down = down.contains(&HealthKey {
                service: spec.key,
                endpoint: e.ip,
                target_port: e.target_port,
            });
            let entry = out
                .entry((e.ip, kind, port))
                .or_insert_with(|| EndpointEntry {
                    host_name: e.ip.to_string(),
                    name: format!("{}_{kind}_{port}", e.ip),
                    inactive_retries: probe.map_or(0, |p| i64::from(p.retries)),
                    probe_type: kind.to_owned(),
                    probe_req: probe.map(|p| p.request.clone()).unwrap_or_default(),
                    probe_resp: probe.map(|p| p.response.clone()).unwrap_or_default(),
                    probe_duration: probe.map_or(0, |p| {
                        i64::try_from(crate::probe::interval(p).as_secs()).unwrap_or(i64::MAX)
                    }),
                    probe_port: i64::from(port),
                    min_delay: String::new(),
                    avg_delay: String::new(),
                    max_delay: String::new(),
                    curr_state: STATE_OK.to_owned(),
                });
            if is_down {
                entry.curr_state = STATE_NOK.to_owned();
            }
        }
    }
    out.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::test_spec;
    use oxlb_api::ProbeSpec;

    fn tcp_probe(retries: u32) -> ProbeSpec {
        ProbeSpec {
            kind: ProbeKind::Tcp,
            port: 0,
            request: String::new(),
            response: String::new(),
            timeout_secs: 2,
            retries,
        }
    }

    fn down_of(state: &DesiredState, port: u16, last: u8) -> HealthKey {
        let spec = state.services().find(|s| s.key.port == port).unwrap();
        HealthKey {
            service: spec.key,
            endpoint: std::net::Ipv4Addr::new(198, 18, 31, last).into(),
            target_port: 8080,
        }
    }

    #[test]
    fn a_monitored_endpoint_its_probe_reports_down_is_nok_and_the_others_ok() {
        let mut state = DesiredState::default();
        let mut spec = test_spec(80, &[1, 2]);
        spec.monitor = Some(tcp_probe(3));
        state.upsert(spec);
        let down = [down_of(&state, 80, 2)].into();
        let list = list(&state, &down);
        let seen: Vec<(&str, &str, &str)> = list
            .iter()
            .map(|e| (e.host_name.as_str(), e.name.as_str(), e.curr_state.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                ("198.18.31.1", "198.18.31.1_tcp_8080", "ok"),
                ("198.18.31.2", "198.18.31.2_tcp_8080", "nok"),
            ]
        );
        assert_eq!(list[0].probe_type, "tcp");
        assert_eq!(list[0].probe_port, 8080);
        assert_eq!(list[0].inactive_retries, 3);
        assert_eq!(list[0].probe_duration, 2);
    }

    #[test]
    fn endpoints_without_a_probe_are_listed_as_none_and_ok() {
        let mut state = DesiredState::default();
        state.upsert(test_spec(80, &[1]));
        let list = list(&state, &Down::new());
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].name, "198.18.31.1_none_0");
        assert_eq!(list[0].probe_type, "none");
        assert_eq!(list[0].curr_state, "ok");
    }

    #[test]
    fn rules_sharing_an_endpoint_and_probe_share_one_entry_down_if_any_says_so() {
        let mut state = DesiredState::default();
        for port in [80, 443] {
            let mut spec = test_spec(port, &[1]);
            spec.monitor = Some(tcp_probe(2));
            state.upsert(spec);
        }
        assert_eq!(list(&state, &Down::new()).len(), 1);
        let down = [down_of(&state, 443, 1)].into();
        let list = list(&state, &down);
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].curr_state, "nok");
    }

    #[test]
    fn an_ipv6_endpoint_is_listed_as_written() {
        let mut state = DesiredState::default();
        let mut spec = test_spec(80, &[1]);
        spec.key.external_ip = "fd00:100::1".parse().unwrap();
        spec.endpoints[0].ip = "fd00:31::1".parse().unwrap();
        state.upsert(spec);
        let list = list(&state, &Down::new());
        assert_eq!(list[0].host_name, "fd00:31::1");
        assert_eq!(list[0].name, "fd00:31::1_none_0");
    }

    #[test]
    fn an_empty_state_lists_nothing() {
        assert!(list(&DesiredState::default(), &Down::new()).is_empty());
    }
}
