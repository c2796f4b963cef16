//! Desired rules computed from Service / EndpointSlice / Node fixtures (JSON as the API
//! server sends them).

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube_watcher::{address_families, desired_rules, is_ours, DesiredError, Family, Settings};
use oxlb_api::LoadBalancerEntry;
use serde_json::{json, Value};
use std::net::IpAddr;

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

struct World {
    svc: Service,
    slices: Vec<EndpointSlice>,
    nodes: Vec<Node>,
}

impl World {
    fn web() -> World {
        World {
            svc: serde_json::from_value(fixture("service_web.json")).unwrap(),
            slices: serde_json::from_value(fixture("slices_web.json")).unwrap(),
            nodes: serde_json::from_value(fixture("nodes.json")).unwrap(),
        }
    }
    fn with_service(mut self, patch: Value) -> World {
        let mut v = serde_json::to_value(&self.svc).unwrap();
        merge(&mut v, patch);
        self.svc = serde_json::from_value(v).unwrap();
        self
    }
    fn rules(&self, settings: &Settings) -> Result<Vec<LoadBalancerEntry>, DesiredError> {
        self.rules_for(settings, &["198.18.100.1"])
    }
    fn rules_for(
        &self,
        settings: &Settings,
        vips: &[&str],
    ) -> Result<Vec<LoadBalancerEntry>, DesiredError> {
        let s: Vec<&EndpointSlice> = self.slices.iter().collect();
        let n: Vec<&Node> = self.nodes.iter().collect();
        let vips: Vec<IpAddr> = vips.iter().map(|v| v.parse().unwrap()).collect();
        desired_rules(&self.svc, &s, &n, settings, &vips)
    }
}

fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

fn endpoints(e: &LoadBalancerEntry) -> Vec<(String, i64)> {
    e.endpoints
        .iter()
        .map(|p| (p.endpoint_ip.clone(), p.target_port))
        .collect()
}

#[test]
fn by_default_endpoints_are_ready_unexcluded_nodes_with_the_node_port() {
    let rules = World::web().rules(&Settings::default()).unwrap();
    assert_eq!(rules.len(), 2);
    let v = serde_json::to_value(&rules[1]).unwrap();
    assert_eq!(
        v,
        json!({"serviceArguments": {"externalIP": "198.18.100.1", "port": 80, "protocol": "tcp",
               "inactiveTimeOut": 600, "managed": true, "name": "shop_web:llb-inst0"},
               "endpoints": [{"endpointIP": "192.168.0.11", "targetPort": 30080, "weight": 1},
                             {"endpointIP": "192.168.0.12", "targetPort": 30080, "weight": 1}],
               "secondaryIPs": [], "allowedSources": []})
    );
    assert_eq!(rules[0].service_arguments.protocol, "udp");
    assert_eq!(endpoints(&rules[0])[0], ("192.168.0.11".into(), 30053));
}

#[test]
fn pod_network_uses_ready_ipv4_pod_addresses_and_the_pod_port() {
    let w = World::web()
        .with_service(json!({"metadata": {"annotations": {"oxlb.io/usepodnetwork": "yes"}}}));
    let rules = w.rules(&Settings::default()).unwrap();
    assert_eq!(
        endpoints(&rules[1]),
        vec![("10.244.1.5".into(), 8080), ("10.244.1.6".into(), 8080)]
    );
    let flag = Settings {
        use_pod_network: true,
        ..Settings::default()
    };
    assert_eq!(World::web().rules(&flag).unwrap(), rules);
}

#[test]
fn local_traffic_policy_keeps_nodes_with_a_ready_endpoint() {
    let w = World::web().with_service(json!({"spec": {"externalTrafficPolicy": "Local"}}));
    let rules = w.rules(&Settings::default()).unwrap();
    assert_eq!(endpoints(&rules[1]), vec![("192.168.0.11".into(), 30080)]);
}

#[test]
fn annotations_and_standard_fields_shape_the_rule() {
    let w = World::web().with_service(json!({
        "metadata": {"annotations": {"loxilb.io/lbmode": "fullnat", "loxilb.io/liveness": "yes",
                                     "loxilb.io/probetype": "tcp", "loxilb.io/probeport": "9000"}},
        "spec": {"sessionAffinity": "ClientIP", "loadBalancerSourceRanges": ["10.0.0.0/8"]}}));
    let settings = Settings {
        zone: "az1".into(),
        ..Settings::default()
    };
    let r = &w.rules(&settings).unwrap()[1];
    let sa = &r.service_arguments;
    assert_eq!((sa.mode, sa.sel, sa.monitor), (2, 3, true));
    assert_eq!((sa.probetype.as_str(), sa.probeport), ("tcp", 9000));
    assert_eq!(sa.name, "shop_web:az1-inst0");
    assert_eq!(r.allowed_sources[0].prefix, "10.0.0.0/8");
}

#[test]
fn no_zone_name_gives_kube_loxilbs_bare_instance_name() {
    let settings = Settings {
        zone: String::new(),
        ..Settings::default()
    };
    let rules = World::web().rules(&settings).unwrap();
    assert_eq!(rules[0].service_arguments.name, "shop_web:-inst0");
}

#[test]
fn a_bad_annotation_is_an_error_that_names_it() {
    let w = World::web()
        .with_service(json!({"metadata": {"annotations": {"loxilb.io/lbmode": "turbo"}}}));
    let e = w.rules(&Settings::default()).unwrap_err();
    assert!(e.to_string().contains("loxilb.io/lbmode=\"turbo\""), "{e}");
}

#[test]
fn no_ready_endpoint_means_no_rule() {
    let mut w = World::web()
        .with_service(json!({"metadata": {"annotations": {"loxilb.io/usepodnetwork": "yes"}}}));
    for s in &mut w.slices {
        for e in &mut s.endpoints {
            e.conditions = Some(serde_json::from_value(json!({"ready": false})).unwrap());
        }
    }
    assert!(w.rules(&Settings::default()).unwrap().is_empty());
}

#[test]
fn a_missing_node_port_is_explained() {
    let w = World::web().with_service(
        json!({"spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}),
    );
    let e = w.rules(&Settings::default()).unwrap_err();
    assert!(
        matches!(e, DesiredError::NoNodePort { port: 80, .. }),
        "{e}"
    );
}

#[test]
fn only_load_balancers_of_our_classes_are_ours() {
    let w = World::web();
    let class = "loxilb.io/loxilb";
    assert!(is_ours(&w.svc, class));
    let oxlb = World::web().with_service(json!({"spec": {"loadBalancerClass": "oxlb.io/oxlb"}}));
    assert!(is_ours(&oxlb.svc, class));
    let other = World::web().with_service(json!({"spec": {"loadBalancerClass": "other/lb"}}));
    assert!(!is_ours(&other.svc, class));
    assert!(
        is_ours(&other.svc, "other/lb"),
        "a configured class is served"
    );
    let node_port = World::web().with_service(json!({"spec": {"type": "NodePort"}}));
    assert!(!is_ours(&node_port.svc, class));
}

fn tcp_rules(rules: &[LoadBalancerEntry]) -> Vec<(String, Vec<(String, i64)>)> {
    rules
        .iter()
        .filter(|r| r.service_arguments.protocol == "tcp")
        .map(|r| (r.service_arguments.external_ip.clone(), endpoints(r)))
        .collect()
}

#[test]
fn a_dual_stack_service_gets_one_rule_per_family_with_endpoints_of_that_family() {
    let w = World::web()
        .with_service(json!({"metadata": {"annotations": {"oxlb.io/usepodnetwork": "yes"}}}));
    let rules = w
        .rules_for(&Settings::default(), &["198.18.100.1", "3ffe:cafe::1"])
        .unwrap();
    assert_eq!(
        tcp_rules(&rules),
        vec![
            (
                "198.18.100.1".into(),
                vec![("10.244.1.5".into(), 8080), ("10.244.1.6".into(), 8080)]
            ),
            ("3ffe:cafe::1".into(), vec![("fd00::5".into(), 8080)]),
        ]
    );
    // The IPv6 slice has no dns port: the UDP port has an IPv4 rule only.
    let udp: Vec<&str> = rules
        .iter()
        .filter(|r| r.service_arguments.protocol == "udp")
        .map(|r| r.service_arguments.external_ip.as_str())
        .collect();
    assert_eq!(udp, vec!["198.18.100.1"]);
}

#[test]
fn ipv6to4_puts_ipv4_endpoints_behind_the_ipv6_address() {
    let w = World::web().with_service(json!({"metadata": {"annotations": {
        "oxlb.io/usepodnetwork": "yes", "loxilb.io/ipam": "nat64"}}}));
    let rules = w
        .rules_for(&Settings::default(), &["3ffe:cafe::1"])
        .unwrap();
    assert_eq!(
        tcp_rules(&rules),
        vec![(
            "3ffe:cafe::1".into(),
            vec![("10.244.1.5".into(), 8080), ("10.244.1.6".into(), 8080)]
        )]
    );
}

#[test]
fn node_endpoints_of_an_ipv6_rule_are_the_nodes_ipv6_addresses() {
    let mut w = World::web();
    let mut nodes = serde_json::to_value(&w.nodes).unwrap();
    nodes[0]["status"]["addresses"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "InternalIP", "address": "fd00::11"}));
    w.nodes = serde_json::from_value(nodes).unwrap();
    let rules = w
        .rules_for(&Settings::default(), &["3ffe:cafe::1"])
        .unwrap();
    assert_eq!(
        tcp_rules(&rules),
        vec![("3ffe:cafe::1".into(), vec![("fd00::11".into(), 30080)])]
    );
    // No node has an IPv6 address: no IPv6 rule (an appliance refuses empty rules).
    let rules = World::web()
        .rules_for(&Settings::default(), &["3ffe:cafe::1"])
        .unwrap();
    assert!(rules.is_empty(), "{rules:?}");
}

#[test]
fn address_families_come_from_the_ipam_annotation_or_the_services_ip_families() {
    use Family::{V4, V6};
    let fams = |patch: Value| address_families(&World::web().with_service(patch).svc).unwrap();
    assert_eq!(fams(json!({})), (vec![V4], true));
    assert_eq!(
        fams(json!({"spec": {"ipFamilies": ["IPv6"], "ipFamilyPolicy": "SingleStack"}})),
        (vec![V6], true)
    );
    assert_eq!(
        fams(
            json!({"spec": {"ipFamilies": ["IPv6", "IPv4"], "ipFamilyPolicy": "RequireDualStack"}})
        ),
        (vec![V6, V4], true)
    );
    assert_eq!(
        fams(json!({"spec": {"ipFamilies": ["IPv4"], "ipFamilyPolicy": "PreferDualStack"}})),
        (vec![V4, V6], false)
    );
    assert_eq!(
        fams(
            json!({"metadata": {"annotations": {"loxilb.io/ipam": "ipv6"}},
                    "spec": {"ipFamilyPolicy": "RequireDualStack"}})
        ),
        (vec![V6], true)
    );
    assert_eq!(
        fams(json!({"metadata": {"annotations": {"loxilb.io/ipam": "ipv6to4"}}})),
        (vec![V6], true)
    );
    let bad = World::web().with_service(json!({"spec": {"ipFamilies": ["IPv5"]}}));
    assert_eq!(
        address_families(&bad.svc).unwrap_err(),
        DesiredError::BadIpFamily("IPv5".into())
    );
}
