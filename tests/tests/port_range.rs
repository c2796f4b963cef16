//! End-to-end port ranges (loxilb's `portMax`) through a real oxlb: XDP steers every port of
//! the range, the workers rewrite each to the endpoint's `targetPort` (as loxilb does) and the
//! answers go back from the port the client used. Needs root; guards clean up on failure.

use oxlb_tests::{parse_answer, unique_prefix, Node, Topology, TopologyOptions, BACKEND_IPS, VIP};

/// A port no standard backend listens on: reaching it proves the rewrite to `targetPort`.
const TARGET_PORT: u16 = 9090;
const FIRST: u16 = 2020;
const LAST: u16 = 2030;

fn range_body(port: u16, port_max: u16) -> String {
    serde_json::json!({
        "serviceArguments": {"externalIP": VIP, "port": port, "portMax": port_max,
                             "protocol": "tcp", "sel": 0, "mode": 0, "name": "range"},
        "endpoints": [{"endpointIP": BACKEND_IPS[0], "targetPort": TARGET_PORT, "weight": 1}],
    })
    .to_string()
}

fn get(topo: &Topology, port: u16) -> Result<String, String> {
    topo.http_get(Node::Client, &format!("http://{VIP}:{port}/"), 3)
}

#[test]
fn two_ports_of_a_range_reach_the_endpoints_target_port_and_the_listing_shows_port_max() {
    let topo = Topology::build(&unique_prefix(), TopologyOptions::default());
    let _peer = topo.start_testpeer(
        Node::Backend(1),
        "b1-9090",
        TARGET_PORT,
        Node::Lb,
        BACKEND_IPS[0],
    );
    let oxlb = topo.start_oxlb(&[]);
    let log = || format!("oxlb output:\n{}", oxlb.log());

    let (status, answer) = topo.api(
        "POST",
        "/netlox/v1/config/loadbalancer",
        Some(&range_body(FIRST, LAST)),
    );
    assert_eq!(status, 200, "creating the range: {answer}\n{}", log());

    for port in [FIRST, FIRST + 3, LAST] {
        let body = get(&topo, port).unwrap_or_else(|e| panic!("port {port}: {e}\n{}", log()));
        // curl completed a TCP connection to VIP:port, so the answers came from that port.
        assert_eq!(
            parse_answer(&body).backend,
            "b1-9090",
            "port {port}: {body:?}"
        );
    }
    assert!(
        get(&topo, LAST + 1).is_err(),
        "the port after the range is not the service's"
    );

    let (status, listing) = topo.api("GET", "/netlox/v1/config/loadbalancer/all", None);
    assert_eq!(status, 200, "{listing}");
    let listing: serde_json::Value = serde_json::from_str(&listing).expect("JSON listing");
    let rule = &listing["lbAttr"][0]["serviceArguments"];
    assert_eq!(
        (rule["port"].as_u64(), rule["portMax"].as_u64()),
        (Some(u64::from(FIRST)), Some(u64::from(LAST))),
        "{listing}"
    );

    // A rule sharing a port of the range is refused and changes nothing.
    let (status, answer) = topo.api(
        "POST",
        "/netlox/v1/config/loadbalancer",
        Some(&range_body(LAST, LAST + 5)),
    );
    assert_eq!(status, 400, "an overlapping rule: {answer}");
    assert!(answer.contains("serviceArguments.portMax"), "{answer}");
    assert!(answer.contains("overlap ports 2020-2030"), "{answer}");
    let (_, after) = topo.api("GET", "/netlox/v1/config/loadbalancer/all", None);
    let after: serde_json::Value = serde_json::from_str(&after).expect("JSON listing");
    assert_eq!(after["lbAttr"].as_array().map(Vec::len), Some(1), "{after}");
    get(&topo, FIRST + 3).unwrap_or_else(|e| panic!("after the refusal: {e}\n{}", log()));

    // The rule is deleted by loxilb's key, its first port; every port of it goes.
    let (status, answer) = topo.api(
        "DELETE",
        &format!(
            "/netlox/v1/config/loadbalancer/externalipaddress/{VIP}/port/{FIRST}/protocol/tcp"
        ),
        None,
    );
    assert_eq!(status, 200, "deleting the range: {answer}");
    assert!(
        get(&topo, FIRST + 3).is_err(),
        "a port of a deleted range still answers"
    );
}

#[test]
fn an_endpoint_with_target_port_zero_is_reached_on_the_port_the_client_used() {
    let topo = Topology::build(&unique_prefix(), TopologyOptions::default());
    let ports = [FIRST, FIRST + 1];
    let _peers: Vec<_> = ports
        .iter()
        .map(|&p| {
            let name = format!("b1-{p}");
            topo.start_testpeer(Node::Backend(1), &name, p, Node::Lb, BACKEND_IPS[0])
        })
        .collect();
    let oxlb = topo.start_oxlb(&[]);
    let log = || format!("oxlb output:\n{}", oxlb.log());
    // targetPort 0: loxilb's "keep the port the client came to", for ranges.
    let body = serde_json::json!({
        "serviceArguments": {"externalIP": VIP, "port": FIRST, "portMax": FIRST + 1,
                             "protocol": "tcp", "sel": 0, "mode": 0, "name": "keep"},
        "endpoints": [{"endpointIP": BACKEND_IPS[0], "targetPort": 0, "weight": 1}],
    })
    .to_string();
    let (status, answer) = topo.api("POST", "/netlox/v1/config/loadbalancer", Some(&body));
    assert_eq!(status, 200, "creating the rule: {answer}\n{}", log());
    for port in ports {
        let body = get(&topo, port).unwrap_or_else(|e| panic!("port {port}: {e}\n{}", log()));
        assert_eq!(
            parse_answer(&body).backend,
            format!("b1-{port}"),
            "port {port}: {body:?}"
        );
    }
}
