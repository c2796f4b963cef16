//! End-to-end health probes: a monitored service stops sending new flows to a backend that
//! stopped answering its TCP probe, and sends them again once it is back.

use oxlb_tests::health::{add_monitored_service, backends_of, eventually};
use oxlb_tests::{
    unique_prefix, Node, Topology, TopologyOptions, BACKEND_IPS, BACKEND_NAMES, BACKEND_PORT,
};
use std::time::Duration;

#[test]
fn a_backend_failing_its_tcp_probe_gets_no_new_flows_until_it_answers_again() {
    let topo = Topology::build(&unique_prefix(), TopologyOptions::default());
    let mut backends = topo.start_backends();
    let oxlb = topo.start_oxlb(&[]);
    add_monitored_service(&topo, serde_json::json!({"probetype": "tcp"}));
    let log = || oxlb.log();

    // Endpoints start up: all three take flows before any probe has run.
    let first = backends_of(&topo, 3).expect("every request succeeds");
    assert_eq!(first.len(), 3);

    backends[1].stop();
    eventually(
        &topo,
        Duration::from_secs(10),
        "b2 stopped: requests did not all succeed and avoid it",
        &log,
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
        "b2 restarted: requests did not reach it again",
        &log,
        |names| names.iter().any(|n| n == BACKEND_NAMES[1]),
    );
}
