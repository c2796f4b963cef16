//! End-to-end health probes: a monitored service stops sending new flows to a backend that
//! stopped answering its TCP probe, and sends them again once it is back.

use oxlb_tests::checks::vip_url;
use oxlb_tests::{
    parse_answer, unique_prefix, Node, Topology, TopologyOptions, BACKEND_IPS, BACKEND_NAMES,
    BACKEND_PORT, VIP, VIP_PORT,
};
use std::thread;
use std::time::{Duration, Instant};

/// Backend names of `n` requests through the VIP; `None` if one failed.
fn backends_of(topo: &Topology, n: usize) -> Option<Vec<String>> {
    let url = vip_url("/");
    (0..n)
        .map(|_| {
            let out = topo.exec(
                Node::Client,
                &["curl", "-sS", "--fail", "--max-time", "2", &url],
            );
            out.status
                .success()
                .then(|| parse_answer(&String::from_utf8_lossy(&out.stdout)).backend)
        })
        .collect()
}

/// Polls (bounded by `limit`) until 12 consecutive requests all succeed and satisfy `ok`.
fn eventually(topo: &Topology, limit: Duration, what: &str, ok: impl Fn(&[String]) -> bool) {
    let deadline = Instant::now() + limit;
    let mut last = None;
    while Instant::now() < deadline {
        last = backends_of(topo, 12);
        if last.as_deref().is_some_and(&ok) {
            return;
        }
        thread::sleep(Duration::from_millis(200));
    }
    panic!("{what} within {limit:?}; last round: {last:?}");
}

#[test]
fn a_backend_failing_its_tcp_probe_gets_no_new_flows_until_it_answers_again() {
    let topo = Topology::build(&unique_prefix(), TopologyOptions::default());
    let mut backends = topo.start_backends();
    let oxlb = topo.start_oxlb(&[]);
    let endpoints: Vec<serde_json::Value> = BACKEND_IPS
        .iter()
        .map(|ip| serde_json::json!({"endpointIP": ip, "targetPort": BACKEND_PORT, "weight": 1}))
        .collect();
    let body = serde_json::json!({
        "serviceArguments": {"externalIP": VIP, "port": VIP_PORT, "protocol": "tcp",
                             "name": "health", "monitor": true, "probetype": "tcp",
                             "probeTimeout": 1, "probeRetries": 2},
        "endpoints": endpoints,
    })
    .to_string();
    let (status, answer) = topo.api("POST", "/netlox/v1/config/loadbalancer", Some(&body));
    assert_eq!(status, 200, "creating the service failed: {answer}");
    let (_, listing) = topo.api("GET", "/netlox/v1/config/loadbalancer/all", None);
    assert!(listing.contains(r#""probetype":"tcp""#), "{listing}");

    // Endpoints start up: all three take flows before any probe has run.
    let first = backends_of(&topo, 3).expect("every request succeeds");
    assert_eq!(first.len(), 3);

    backends[1].stop();
    eventually(
        &topo,
        Duration::from_secs(10),
        &format!(
            "b2 stopped: requests did not all succeed and avoid it\n{}",
            oxlb.log()
        ),
        |names| names.iter().all(|n| n != BACKEND_NAMES[1]),
    );

    let _b2 = topo.start_testpeer(
        Node::Backend(2),
        "b2",
        BACKEND_PORT,
        Node::Lb,
        BACKEND_IPS[1],
    );
    eventually(
        &topo,
        Duration::from_secs(10),
        &format!(
            "b2 restarted: requests did not reach it again\n{}",
            oxlb.log()
        ),
        |names| names.iter().any(|n| n == BACKEND_NAMES[1]),
    );
}
