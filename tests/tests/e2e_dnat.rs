//! End-to-end DNAT through a real oxlb (issue #3): XDP attached to veths in a network namespace,
//! real curl clients and test-peer backends. Needs root; without it every test fails, saying so.
//!
//! Each test builds its own topology under a unique prefix, so the tests run in parallel threads
//! without sharing state; guards remove namespaces and processes even when an assertion fails.
//! The data-path checks live in `oxlb_tests::checks`, where `nft_reference.rs` validates them.

use oxlb_tests::checks::{self, get_via_vip, vip_url};
use oxlb_tests::{
    parse_answer, unique_prefix, vip_request_body, Node, OxlbGuard, Topology, TopologyOptions,
    BACKEND_IPS, BACKEND_NAMES, BACKEND_PORT, CLIENT_IP, LB_BACKEND_SIDE_IP, LB_CLIENT_SIDE_IP,
    VIP, VIP_PORT,
};
use std::process::ExitStatus;

fn topology() -> Topology {
    Topology::build(&unique_prefix(), TopologyOptions::default())
}

fn oxlb_log(oxlb: &OxlbGuard) -> impl Fn() -> String + '_ {
    move || format!("oxlb output:\n{}", oxlb.log())
}

#[test]
fn the_topology_reaches_every_backend_from_the_lb_namespace() {
    let topo = topology();
    let _backends = topo.start_backends();

    for (ip, name) in BACKEND_IPS.iter().zip(BACKEND_NAMES) {
        let body = topo
            .http_get(Node::Lb, &format!("http://{ip}:{BACKEND_PORT}/"), 5)
            .unwrap_or_else(|e| panic!("{e}"));
        let a = parse_answer(&body);
        assert_eq!(a.backend, name, "{ip} answered {body:?}");
        assert_eq!(
            a.peer_ip, LB_BACKEND_SIDE_IP,
            "{ip} saw the wrong peer: {body:?}"
        );

        let target = format!("{ip}:{BACKEND_PORT}");
        let out = topo.testpeer(
            Node::Lb,
            &["udp-request", &target, "ping", "--timeout-ms", "2000"],
        );
        assert!(out.status.success(), "UDP to {target} from the lb: {out:?}");
        let a = parse_answer(&String::from_utf8_lossy(&out.stdout));
        assert_eq!((a.backend.as_str(), a.rest.as_str()), (name, "ping"));
    }

    let ping = topo.exec(
        Node::Client,
        &["ping", "-c", "1", "-W", "2", LB_CLIENT_SIDE_IP],
    );
    assert!(ping.status.success(), "client cannot ping lb0: {ping:?}");

    // Forwarding is off in the LB namespace: without oxlb, the client must not reach a backend.
    let direct = topo.http_get(
        Node::Client,
        &format!("http://{}:{BACKEND_PORT}/", BACKEND_IPS[0]),
        2,
    );
    assert!(
        direct.is_err(),
        "the LB namespace forwards without oxlb: {direct:?}"
    );
}

#[test]
fn twelve_http_requests_through_the_vip_rotate_over_the_three_backends() {
    let topo = topology();
    let _backends = topo.start_backends();
    let oxlb = topo.start_oxlb(&[]);
    topo.add_vip("tcp");
    checks::twelve_requests_rotate(&topo, &oxlb_log(&oxlb));
}

#[test]
fn each_backend_sees_the_client_address() {
    let topo = topology();
    let _backends = topo.start_backends();
    let oxlb = topo.start_oxlb(&[]);
    topo.add_vip("tcp");
    checks::backends_see_the_client_address(&topo, &oxlb_log(&oxlb));
}

#[test]
fn a_udp_request_through_the_vip_gets_its_answer() {
    let topo = topology();
    let _backends = topo.start_backends();
    let oxlb = topo.start_oxlb(&[]);
    topo.add_vip("udp");
    checks::udp_request_is_answered(&topo, &oxlb_log(&oxlb));
}

#[test]
fn a_ten_megabyte_download_through_the_vip_is_byte_identical() {
    let topo = topology();
    let _backends = topo.start_backends();
    let oxlb = topo.start_oxlb(&[]);
    topo.add_vip("tcp");
    checks::ten_megabyte_download_is_identical(&topo, &oxlb_log(&oxlb));
}

#[test]
fn a_thousand_sequential_connections_all_succeed() {
    let topo = topology();
    let _backends = topo.start_backends();
    let oxlb = topo.start_oxlb(&[]);
    topo.add_vip("tcp");
    checks::thousand_sequential_connections_succeed(&topo, &oxlb_log(&oxlb));
}

#[test]
fn after_delete_the_vip_no_longer_answers_but_the_host_still_does() {
    let topo = topology();
    let _backends = topo.start_backends();
    let oxlb = topo.start_oxlb(&[]);
    topo.add_vip("tcp");
    get_via_vip(&topo, &oxlb_log(&oxlb));

    let (status, body) = topo.delete_vip("tcp");
    assert!(
        (200..300).contains(&status),
        "DELETE answered {status}: {body}"
    );
    let (_, listing) = topo.api("GET", "/netlox/v1/config/loadbalancer/all", None);
    assert!(
        !listing.contains(VIP),
        "the VIP is still listed after DELETE: {listing}"
    );

    let after = topo.http_get(Node::Client, &vip_url("/"), 2);
    assert!(
        after.is_err(),
        "the VIP still answers after DELETE: {after:?}"
    );

    let ping = topo.exec(
        Node::Client,
        &["ping", "-c", "1", "-W", "2", LB_CLIENT_SIDE_IP],
    );
    assert!(
        ping.status.success(),
        "the LB host no longer answers ping: {ping:?}\n{}",
        oxlb.log()
    );

    let _host = topo.start_testpeer(Node::Lb, "lbhost", 9090, Node::Lb, "127.0.0.1");
    let body = topo
        .http_get(
            Node::Client,
            &format!("http://{LB_CLIENT_SIDE_IP}:9090/"),
            5,
        )
        .unwrap_or_else(|e| panic!("TCP to the LB host's own address: {e}\n{}", oxlb.log()));
    let a = parse_answer(&body);
    assert_eq!(
        (a.backend.as_str(), a.peer_ip.as_str()),
        ("lbhost", CLIENT_IP)
    );
}

/// True if `ip -j link show dev IF` in the LB namespace reports an XDP program.
fn xdp_attached(topo: &Topology, dev: &str) -> bool {
    let out = topo.exec_ok(Node::Lb, &["ip", "-j", "link", "show", "dev", dev]);
    let links: serde_json::Value = serde_json::from_str(&out).expect("ip -j output");
    links
        .as_array()
        .is_some_and(|l| l.iter().any(|link| link.get("xdp").is_some()))
}

/// Runs a VIP, ends oxlb with `end` (returning how it exited), checks that no XDP program is
/// left on the LB's interfaces, and that a new oxlb with the same state directory lists and
/// serves the VIP again without it being re-added.
fn ends_without_leaving_xdp_and_restarts(how: &str, end: impl FnOnce(OxlbGuard) -> ExitStatus) {
    let topo = topology();
    let _backends = topo.start_backends();
    let oxlb = topo.start_oxlb(&[]);
    topo.add_vip("tcp");
    get_via_vip(&topo, &oxlb_log(&oxlb));
    assert!(
        xdp_attached(&topo, "lb0"),
        "no XDP program on lb0 while oxlb runs"
    );

    let log = oxlb.log();
    let status = end(oxlb);
    for dev in ["lb0", "lb1"] {
        assert!(
            !xdp_attached(&topo, dev),
            "an XDP program is still attached to {dev} after oxlb was {how} ({status}); output:\n{log}"
        );
    }

    let oxlb = topo.start_oxlb(&[]);
    let (status, listing) = topo.api("GET", "/netlox/v1/config/loadbalancer/all", None);
    assert_eq!(status, 200, "listing after the restart: {listing}");
    let listing: serde_json::Value = serde_json::from_str(&listing).expect("listing is JSON");
    let restored = &listing["lbAttr"];
    assert_eq!(
        restored.as_array().map(Vec::len),
        Some(1),
        "after being {how}, the restarted oxlb does not list exactly the one VIP: {listing}"
    );
    let args = &restored[0]["serviceArguments"];
    assert_eq!(
        (&args["externalIP"], &args["port"], &args["protocol"]),
        (&VIP.into(), &VIP_PORT.into(), &"tcp".into()),
        "{listing}"
    );
    let endpoints: Vec<&str> = restored[0]["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .map(|e| e["endpointIP"].as_str().expect("endpointIP"))
        .collect();
    assert_eq!(endpoints, BACKEND_IPS, "{listing}");
    let a = get_via_vip(&topo, &oxlb_log(&oxlb));
    assert!(
        BACKEND_NAMES.contains(&a.backend.as_str()),
        "unexpected answer {a:?}"
    );
}

#[test]
fn stopping_oxlb_leaves_no_xdp_program_attached_and_it_starts_again() {
    ends_without_leaving_xdp_and_restarts("stopped with SIGTERM", OxlbGuard::stop);
}

#[test]
fn a_killed_oxlb_leaves_no_xdp_program_attached_and_it_starts_again() {
    // SIGKILL runs none of oxlb's cleanup: only the kernel closing its bpf_link fds detaches.
    ends_without_leaving_xdp_and_restarts("killed with SIGKILL", OxlbGuard::kill);
}

#[test]
fn bad_input_is_refused_with_a_json_error_and_nothing_applied() {
    let topo = topology();
    let _oxlb = topo.start_oxlb(&[]);
    let listing = || {
        let (status, body) = topo.api("GET", "/netlox/v1/config/loadbalancer/all", None);
        assert_eq!(status, 200, "listing: {body}");
        serde_json::from_str::<serde_json::Value>(&body)
            .unwrap_or_else(|e| panic!("listing is not JSON ({e}): {body}"))
    };
    let before = listing();

    let port_zero = vip_request_body("tcp").replace("\"port\":2020", "\"port\":0");
    assert!(port_zero.contains("\"port\":0"), "test bug: {port_zero}");
    let cases = [
        ("malformed JSON", "{\"serviceArguments\": {".to_string()),
        ("port 0", port_zero),
        (
            "an address that is not one",
            vip_request_body("tcp").replace(VIP, "198.18.100.300"),
        ),
    ];
    for (what, body) in cases {
        let (status, reply) = topo.api("POST", "/netlox/v1/config/loadbalancer", Some(&body));
        assert!(
            (400..500).contains(&status),
            "{what}: expected 4xx, got {status}: {reply}"
        );
        assert!(
            serde_json::from_str::<serde_json::Value>(&reply).is_ok(),
            "{what}: the error body is not JSON: {reply:?}"
        );
    }
    assert_eq!(listing(), before, "a refused request changed the listing");
}

#[test]
fn the_first_datagram_to_backends_whose_macs_are_unknown_is_delivered_not_dropped() {
    let topo = topology();
    let _backends = topo.start_backends();
    let oxlb = topo.start_oxlb(&[]);
    // Starting the backends probed them from the LB namespace; forget their MACs so the
    // service starts with unresolved next hops, as after a reboot.
    topo.exec_ok(Node::Lb, &["ip", "neigh", "flush", "dev", "lb1"]);
    topo.add_vip("udp");

    // One datagram, no retry: while the MAC is unknown oxlb hands it to the kernel, which
    // resolves the neighbour and sends it, instead of dropping it.
    let target = format!("{VIP}:{VIP_PORT}");
    let out = topo.testpeer(
        Node::Client,
        &["udp-request", &target, "first", "--timeout-ms", "3000"],
    );
    assert!(
        out.status.success(),
        "the first datagram got no answer: {out:?}\n{}",
        oxlb_log(&oxlb)()
    );
    let a = parse_answer(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(
        (a.peer_ip.as_str(), a.rest.as_str()),
        (CLIENT_IP, "first"),
        "{a:?}"
    );
}
