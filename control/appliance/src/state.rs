//! The desired state: every load-balancer rule the API accepted, keyed as loxilb keys them,
//! and the HA role assigned to each cluster instance.

use oxlb_api::{BgpConfig, CiState, ServiceKey, ServiceSpec};
use std::collections::BTreeMap;

/// The rules the appliance should run and the HA roles it was told. Ordered by key so
/// listings, snapshots and the state file are stable.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DesiredState {
    services: BTreeMap<ServiceKey, ServiceSpec>,
    /// HA state by instance name (`POST /config/cistate`). Recorded, persisted and listed;
    /// it does not change forwarding yet.
    ha: BTreeMap<String, CiState>,
    /// BGP identity and neighbours (`/config/bgp/...`); see `crate::bgp`.
    bgp: BgpConfig,
}

impl DesiredState {
    /// Adds `spec`, or replaces the rule with the same key (its endpoint set included).
    /// Returns the rule it replaced.
    pub fn upsert(&mut self, spec: ServiceSpec) -> Option<ServiceSpec> {
        self.services.insert(spec.key, spec)
    }

    /// Removes the rule with this key; false if there was none.
    pub fn remove(&mut self, key: &ServiceKey) -> bool {
        self.services.remove(key).is_some()
    }

    /// Removes every load-balancer rule; the HA state stays (`DELETE /config/loadbalancer/all`
    /// is about rules only).
    pub fn clear_services(&mut self) {
        self.services.clear();
    }

    pub fn services(&self) -> impl Iterator<Item = &ServiceSpec> {
        self.services.values()
    }

    pub fn get(&self, key: &ServiceKey) -> Option<&ServiceSpec> {
        self.services.get(key)
    }

    /// The number of load-balancer rules.
    pub fn len(&self) -> usize {
        self.services.len()
    }

    /// No rule and no HA state: nothing to restore or run. (A state holding only HA roles is
    /// not empty, so that a restart restores it.)
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.ha.is_empty() && self.bgp.is_empty()
    }

    pub fn bgp(&self) -> &BgpConfig {
        &self.bgp
    }

    pub fn bgp_mut(&mut self) -> &mut BgpConfig {
        &mut self.bgp
    }

    /// Records `state` for its instance; returns the state it replaced.
    pub fn set_ha(&mut self, state: CiState) -> Option<CiState> {
        self.ha.insert(state.instance.clone(), state)
    }

    /// Every instance's HA state, by instance name.
    pub fn ha(&self) -> impl Iterator<Item = &CiState> {
        self.ha.values()
    }
}

/// A DNAT round-robin rule named `svc<port>` on 198.18.100.1:`port`/tcp, with endpoints
/// 198.18.31.`n`:8080 for each `n` of `endpoints`: the one rule builder of the crate's tests.
#[cfg(test)]
pub(crate) fn test_spec(port: u16, endpoints: &[u8]) -> ServiceSpec {
    use oxlb_api::{EndpointSpec, NatMode, Protocol, Selection};
    use std::net::Ipv4Addr;
    ServiceSpec {
        key: ServiceKey {
            external_ip: Ipv4Addr::new(198, 18, 100, 1).into(),
            port,
            protocol: Protocol::Tcp,
        },
        port_max: port,
        name: format!("svc{port}"),
        mode: NatMode::Dnat,
        selection: Selection::RoundRobin,
        endpoints: endpoints
            .iter()
            .map(|&last| EndpointSpec {
                ip: Ipv4Addr::new(198, 18, 31, last).into(),
                target_port: 8080,
                weight: 1,
            })
            .collect(),
        inactive_timeout_secs: 1800,
        allowed_sources: Vec::new(),
        secondary_ips: Vec::new(),
        block_new_flows: false,
        monitor: None,
        bgp: false,
        on_endpoint_down: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::test_spec as spec;
    use super::*;

    #[test]
    fn upserting_the_same_key_replaces_the_whole_endpoint_set() {
        let mut state = DesiredState::default();
        assert!(state.upsert(spec(80, &[1, 2])).is_none());
        let old = state.upsert(spec(80, &[3])).unwrap();
        assert_eq!(old.endpoints.len(), 2);
        assert_eq!(state.len(), 1);
        assert_eq!(state.get(&spec(80, &[]).key).unwrap(), &spec(80, &[3]));
    }

    #[test]
    fn services_are_listed_in_key_order() {
        let mut state = DesiredState::default();
        state.upsert(spec(443, &[1]));
        state.upsert(spec(80, &[1]));
        let ports: Vec<u16> = state.services().map(|s| s.key.port).collect();
        assert_eq!(ports, [80, 443]);
    }

    #[test]
    fn removing_reports_whether_the_rule_existed() {
        let mut state = DesiredState::default();
        state.upsert(spec(80, &[1]));
        assert!(!state.remove(&spec(81, &[]).key));
        assert!(state.remove(&spec(80, &[]).key));
        assert!(state.is_empty());
    }

    #[test]
    fn clearing_removes_every_rule() {
        let mut state = DesiredState::default();
        state.upsert(spec(80, &[1]));
        state.upsert(spec(81, &[1]));
        state.clear_services();
        assert_eq!(state, DesiredState::default());
    }

    fn ha(instance: &str, role: oxlb_api::HaRole) -> CiState {
        CiState {
            instance: instance.to_owned(),
            role,
            vip: None,
        }
    }

    #[test]
    fn ha_state_is_kept_per_instance_and_survives_clearing_the_rules() {
        use oxlb_api::HaRole::{Backup, Master};
        let mut state = DesiredState::default();
        state.set_ha(ha("llb-inst1", Backup));
        state.set_ha(ha("llb-inst0", Backup));
        let old = state.set_ha(ha("llb-inst0", Master)).unwrap();
        assert_eq!(old.role, Backup);
        let listed: Vec<_> = state.ha().map(|s| (s.instance.as_str(), s.role)).collect();
        assert_eq!(listed, [("llb-inst0", Master), ("llb-inst1", Backup)]);
        state.upsert(spec(80, &[1]));
        state.clear_services();
        assert_eq!(state.len(), 0);
        assert!(!state.is_empty(), "HA state alone is something to restore");
        assert_eq!(state.ha().count(), 2);
    }
}
