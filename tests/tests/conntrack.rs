//! The conntrack listing of a real oxlb: connections made through the VIP show up in
//! `GET /netlox/v1/config/conntrack/all` and in `oxlbctl get ct`, in loxilb's shape.
//! Needs root; without it the test fails, saying so.

use oxlb_tests::checks::get_via_vip;
use oxlb_tests::{
    binary, unique_prefix, Node, Topology, TopologyOptions, CLIENT_IP, VIP, VIP_PORT,
};
use serde_json::Value;

/// The entries of a `{"ctAttr": [...]}` body; panics with the body if it is not one.
fn entries(body: &str) -> Vec<Value> {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["ctAttr"]
        .as_array()
        .unwrap_or_else(|| panic!("no ctAttr array: {body}"))
        .clone()
}

/// Whether `e` is the client's direction of a connection to the standard VIP of service `web`.
fn is_client_to_vip(e: &Value) -> bool {
    e["sourceIP"] == CLIENT_IP
        && e["destinationIP"] == VIP
        && e["destinationPort"] == VIP_PORT
        && e["protocol"] == "tcp"
        && e["servName"] == "web"
        && e["packets"].as_u64().is_some_and(|p| p > 0)
        && e["bytes"].as_u64().is_some_and(|b| b > 0)
}

#[test]
fn connections_through_the_vip_are_listed_by_the_api_and_by_oxlbctl() {
    let topo = Topology::build(&unique_prefix(), TopologyOptions::default());
    let _backends = topo.start_backends();
    let oxlb = topo.start_oxlb(&[]);
    let diag = || format!("oxlb output:\n{}", oxlb.log());

    let (status, body) = topo.api("GET", "/netlox/v1/config/conntrack/all", None);
    assert_eq!(status, 200, "{body}\n{}", diag());
    assert!(entries(&body).is_empty(), "no connection yet: {body}");

    topo.add_vip("tcp");
    // Finished connections linger (closing) for seconds, long enough to be listed below.
    for _ in 0..3 {
        get_via_vip(&topo, &diag);
    }

    let (status, body) = topo.api("GET", "/netlox/v1/config/conntrack/all", None);
    assert_eq!(status, 200, "{body}\n{}", diag());
    let list = entries(&body);
    let forward: Vec<&Value> = list.iter().filter(|e| is_client_to_vip(e)).collect();
    assert_eq!(forward.len(), 3, "one entry per request expected: {body}");
    for e in &forward {
        let act = e["conntrackAct"].as_str().unwrap_or_default();
        assert!(act.starts_with("dnat-198.18.31."), "{e}");
        assert!(act.ends_with(":8080:w1"), "{e}");
        assert!(
            ["est", "fini"].contains(&e["conntrackState"].as_str().unwrap_or_default()),
            "{e}"
        );
    }
    // Each connection's reply direction: from its endpoint back to the client, from the VIP.
    let replies = list
        .iter()
        .filter(|e| {
            e["destinationIP"] == CLIENT_IP
                && e["sourcePort"] == 8080
                && e["conntrackAct"] == format!("snat-{VIP}:{VIP_PORT}:w1")
        })
        .count();
    assert_eq!(replies, 3, "{body}");

    let bin = binary("oxlbctl");
    let bin = bin.to_str().expect("utf-8 path");
    let out = topo.exec(Node::Lb, &[bin, "get", "ct", "-o", "json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = entries(&stdout);
    assert!(listed.iter().any(is_client_to_vip), "{stdout}");

    let out = topo.exec(Node::Lb, &[bin, "get", "ct"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert!(
        table
            .lines()
            .next()
            .unwrap_or_default()
            .contains("SERVICE NAME"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.contains("| web ") && l.contains(VIP) && l.contains("dnat-")),
        "{table}"
    );
}
