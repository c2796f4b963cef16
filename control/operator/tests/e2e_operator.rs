//! End to end: the real operator binary, fed by the stand-in API server, programs a real oxlb
//! appliance in network namespaces; a client reaches the backends through the assigned VIP;
//! scaling the endpoints and deleting the Service show on the appliance. Needs root.

mod support;

use oxlb_tests::{
    in_netns, parse_answer, unique_prefix, Node, Topology, TopologyOptions, BACKEND_IPS,
};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use support::{service, slice, wait_for, wait_for_ingress, ApiServer};

/// Binds 127.0.0.1:0 inside network namespace `ns` (a socket stays in the namespace it was
/// created in, so the test's runtime can serve it from anywhere).
fn listen_in_netns(ns: &str) -> std::net::TcpListener {
    in_netns(ns, || {
        std::net::TcpListener::bind("127.0.0.1:0").expect("bind in the namespace")
    })
}

fn rules(topo: &Topology) -> Vec<Value> {
    let (code, body) = topo.api("GET", "/netlox/v1/config/loadbalancer/all", None);
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["lbAttr"].as_array().cloned().unwrap_or_default()
}

fn web_rule(topo: &Topology) -> Option<Value> {
    rules(topo)
        .into_iter()
        .find(|r| r["serviceArguments"]["name"] == "shop_web:llb-inst0")
}

#[test]
fn a_service_is_served_through_its_vip_scaled_and_removed() {
    let topo = Topology::build(&unique_prefix(), TopologyOptions::default());
    let _backends = topo.start_backends();
    let oxlb = topo.start_oxlb(&[]);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let api = ApiServer::default();
    let listener = listen_in_netns(topo.ns(Node::Lb).name());
    let port = listener.local_addr().unwrap().port();
    api.serve(listener);
    let kc = support::kubeconfig(topo.scratch_dir(), port);
    let bin = env!("CARGO_BIN_EXE_oxlb-operator");
    let kc_env = format!("KUBECONFIG={}", kc.display());
    let operator = topo.spawn(
        Node::Lb,
        &[
            "env",
            &kc_env,
            "RUST_LOG=info",
            bin,
            "--loxiURL=http://127.0.0.1:11111",
            "--externalCIDR=198.18.100.0/24",
            "--usePodNetwork",
            "--resyncPeriod=2",
        ],
        "operator",
    );
    let diag = || format!("operator:\n{}\noxlb:\n{}", operator.log(), oxlb.log());

    api.apply("endpointslices", slice("shop", "web", &BACKEND_IPS));
    api.apply("services", service("shop", "web", 2020, json!({})));
    let rule = wait_for(
        30,
        "the rule on the appliance",
        || web_rule(&topo).filter(|r| r["endpoints"].as_array().is_some_and(|e| e.len() == 3)),
        &diag,
    );
    assert_eq!(rule["serviceArguments"]["externalIP"], "198.18.100.1");
    let svc = wait_for_ingress(&api, "shop", "web", 30, &diag);
    assert_eq!(
        svc["status"]["loadBalancer"]["ingress"],
        json!([{"hostname": "llb-198.18.100.1"}])
    );

    let seen = |n: usize| -> BTreeSet<String> {
        (0..n)
            .map(|_| {
                let body = topo
                    .http_get(Node::Client, "http://198.18.100.1:2020/", 5)
                    .unwrap_or_else(|e| panic!("{e}\n{}", diag()));
                parse_answer(&body).backend
            })
            .collect()
    };
    assert_eq!(
        seen(6),
        ["b1", "b2", "b3"].iter().map(|s| s.to_string()).collect()
    );

    // Level-triggered and idempotent: resyncs against an up-to-date appliance write nothing.
    let writes = || operator.log().matches("rule(s) written").count();
    let before = writes();
    assert!(before >= 1, "the first write is logged\n{}", diag());
    std::thread::sleep(std::time::Duration::from_secs(5));
    assert_eq!(
        writes(),
        before,
        "resyncs rewrote an unchanged rule\n{}",
        diag()
    );

    // Drift: the rule deleted behind the operator's back is back within a resync period.
    let (code, body) = topo.api(
        "DELETE",
        "/netlox/v1/config/loadbalancer/externalipaddress/198.18.100.1/port/2020/protocol/tcp",
        None,
    );
    assert_eq!(code, 200, "{body}");
    wait_for(
        30,
        "the rule restored",
        || web_rule(&topo).filter(|r| r["endpoints"].as_array().is_some_and(|e| e.len() == 3)),
        &diag,
    );

    // Scale down to one endpoint.
    api.apply("endpointslices", slice("shop", "web", &BACKEND_IPS[..1]));
    wait_for(
        30,
        "one endpoint",
        || web_rule(&topo).filter(|r| r["endpoints"].as_array().is_some_and(|e| e.len() == 1)),
        &diag,
    );
    assert_eq!(seen(3), ["b1".to_string()].into_iter().collect());

    // Delete: the rule leaves the appliance and the VIP stops answering.
    api.delete("services", "shop", "web");
    wait_for(
        30,
        "the rule removed",
        || web_rule(&topo).is_none().then_some(()),
        &diag,
    );
    wait_for(
        30,
        "the Service gone",
        || api.get("services", "shop", "web").is_none().then_some(()),
        &diag,
    );
    assert!(topo
        .http_get(Node::Client, "http://198.18.100.1:2020/", 2)
        .is_err());
}

#[test]
fn an_sctp_service_with_secondaries_gets_them_on_the_real_appliance_until_deleted() {
    let topo = Topology::build(&unique_prefix(), TopologyOptions::default());
    let oxlb = topo.start_oxlb(&[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let api = ApiServer::default();
    let listener = listen_in_netns(topo.ns(Node::Lb).name());
    let port = listener.local_addr().unwrap().port();
    api.serve(listener);
    let kc = support::kubeconfig(topo.scratch_dir(), port);
    let kc_env = format!("KUBECONFIG={}", kc.display());
    let operator = topo.spawn(
        Node::Lb,
        &[
            "env",
            &kc_env,
            "RUST_LOG=info",
            env!("CARGO_BIN_EXE_oxlb-operator"),
            "--loxiURL=http://127.0.0.1:11111",
            "--externalCIDR=198.18.100.0/24",
            "--externalSecondaryCIDRs=198.18.110.0/24,198.18.111.0/24",
            "--usePodNetwork",
            "--resyncPeriod=2",
        ],
        "operator",
    );
    let diag = || format!("operator:\n{}\noxlb:\n{}", operator.log(), oxlb.log());
    let mut slice = slice("shop", "sig", &BACKEND_IPS[..1]);
    slice["ports"] = json!([{"name": "http", "port": 38412, "protocol": "SCTP"}]);
    let mut svc = service(
        "shop",
        "sig",
        38412,
        json!({"loxilb.io/num-secondary-networks": "2"}),
    );
    svc["spec"]["ports"][0]["protocol"] = json!("SCTP");
    api.apply("endpointslices", slice);
    api.apply("services", svc);

    let sig_rule = || {
        rules(&topo)
            .into_iter()
            .find(|r| r["serviceArguments"]["name"] == "shop_sig:llb-inst0")
    };
    let rule = wait_for(30, "the SCTP rule on the appliance", sig_rule, &diag);
    assert_eq!(rule["serviceArguments"]["externalIP"], "198.18.100.1");
    assert_eq!(rule["serviceArguments"]["protocol"], "sctp");
    assert_eq!(
        rule["secondaryIPs"],
        json!([{"secondaryIP": "198.18.110.1"}, {"secondaryIP": "198.18.111.1"}]),
        "{}",
        diag()
    );
    let svc = wait_for_ingress(&api, "shop", "sig", 30, &diag);
    assert_eq!(
        svc["status"]["loadBalancer"]["ingress"],
        json!([{"hostname": "llb-198.18.100.1"}])
    );

    api.delete("services", "shop", "sig");
    wait_for(
        30,
        "the SCTP rule removed",
        || sig_rule().is_none().then_some(()),
        &diag,
    );
}
