//! IPv4 and IPv6 fragments through a real oxlb: a UDP datagram bigger than the links' MTU (the
//! client's kernel cuts it in three) reaches a backend whole, and the backend's answer, cut by
//! its own kernel, reaches the client whole: over IPv4 in DNAT and in full NAT, over IPv6
//! through a NAT66 DNAT VIP (with one worker, and with two, where a datagram's fragments may
//! belong to the other worker's flow). Only the first fragment carries the ports; the later
//! ones follow it. Needs root; without it the tests fail, saying so.

use oxlb_tests::{
    metric_sample, unique_prefix, Topology, TopologyOptions, BACKEND_IP6S, BACKEND_NAMES,
    BACKEND_PORT, CLIENT_IP, CLIENT_IP6, VIP, VIP6, VIP_PORT,
};

/// Bigger than two 1500-byte fragments: the datagram travels as three.
const PAYLOAD_LEN: usize = 3000;

/// Later fragments followed, over all workers.
fn followed(topo: &Topology) -> u64 {
    let (status, page) = topo.api("GET", "/metrics", None);
    assert_eq!(status, 200, "{page}");
    let workers = page
        .lines()
        .filter(|l| l.starts_with("oxlb_fragments_followed_total{"))
        .count();
    assert!(
        workers > 0,
        "no oxlb_fragments_followed_total samples:\n{page}"
    );
    (0..workers)
        .map(|w| {
            metric_sample(
                &page,
                &format!("oxlb_fragments_followed_total{{worker=\"{w}\"}}"),
            )
        })
        .sum()
}

#[test]
fn a_fragmented_datagram_and_its_fragmented_answer_pass_in_dnat_and_full_nat() {
    let topo = Topology::build(&unique_prefix(), TopologyOptions::default());
    let _backends = topo.start_backends();
    let oxlb = topo.start_oxlb(&[]);
    let diag = || format!("oxlb output:\n{}", oxlb.log());
    let payload: String = (0..PAYLOAD_LEN)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let target = format!("{VIP}:{VIP_PORT}");
    for (mode, name) in [(0u8, "dnat"), (2, "full nat")] {
        topo.add_service("udp", mode, 0, 8080);
        let before = followed(&topo);
        let answer = topo.udp_answer(&target, &payload);
        let a = answer.unwrap_or_else(|| panic!("{name}: no answer in three tries\n{}", diag()));
        assert!(BACKEND_NAMES.contains(&a.backend.as_str()), "{name}: {a:?}");
        assert_eq!(a.rest, payload, "{name}: the payload changed on the way");
        if mode == 0 {
            assert_eq!(a.peer_ip, CLIENT_IP, "{name}: the backend saw {a:?}");
        } else {
            assert_eq!(a.peer_ip, VIP, "{name}: the backend saw {a:?}");
        }
        // Two later fragments each way at least.
        let n = followed(&topo) - before;
        assert!(n >= 4, "{name}: {n} later fragments followed\n{}", diag());
        let (status, body) = topo.delete_vip("udp");
        assert_eq!(status, 200, "{name}: {body}");
    }
}

/// Bigger than two 1500-byte IPv6 fragments (1448 bytes of data each, behind the fixed and
/// Fragment headers): the datagram and its echo travel as three each.
const PAYLOAD_LEN6: usize = 4000;

/// Creates UDP service VIP6:VIP_PORT in NAT66 DNAT (loxilb's mode 0), round robin over the
/// IPv6 backends; panics unless the API answers 200.
fn add_udp_service6(topo: &Topology) {
    let eps: Vec<serde_json::Value> = BACKEND_IP6S
        .iter()
        .map(|ip| serde_json::json!({"endpointIP": ip, "targetPort": BACKEND_PORT, "weight": 1}))
        .collect();
    let body = serde_json::json!({
        "serviceArguments": {"externalIP": VIP6, "port": VIP_PORT, "protocol": "udp",
                             "sel": 0, "mode": 0, "name": "frag6"},
        "endpoints": eps,
    })
    .to_string();
    let (status, answer) = topo.api("POST", "/netlox/v1/config/loadbalancer", Some(&body));
    assert_eq!(status, 200, "creating the IPv6 service failed: {answer}");
}

/// A 4000-byte datagram from the client's real UDP socket to the NAT66 VIP arrives whole at a
/// backend, which sees the client's own address, and its echo comes back whole; `rounds`
/// datagrams, each from a new client port.
fn fragmented_ipv6_datagrams_pass_nat66_dnat(queues: u32, rounds: usize) {
    let topo = Topology::build_dual_stack(
        &unique_prefix(),
        TopologyOptions {
            queues,
            ..Default::default()
        },
    );
    let _backends = topo.start_backends();
    let oxlb = topo.start_oxlb(&[]);
    let diag = || format!("oxlb output:\n{}", oxlb.log());
    add_udp_service6(&topo);
    let payload: String = (0..PAYLOAD_LEN6)
        .map(|i| char::from(b'A' + (i % 26) as u8))
        .collect();
    let target = format!("[{VIP6}]:{VIP_PORT}");
    let before = followed(&topo);
    for round in 0..rounds {
        let answer = topo.udp_answer(&target, &payload);
        let a =
            answer.unwrap_or_else(|| panic!("round {round}: no answer in three tries\n{}", diag()));
        assert!(BACKEND_NAMES.contains(&a.backend.as_str()), "{a:?}");
        assert_eq!(a.peer_ip, CLIENT_IP6, "the backend saw {a:?}");
        assert!(
            a.rest == payload,
            "round {round}: the payload changed on the way ({} bytes came back)",
            a.rest.len()
        );
    }
    // Two later fragments each way per datagram at least.
    let n = followed(&topo) - before;
    let want = 4 * rounds as u64;
    if queues > 1 {
        let (status, page) = topo.api("GET", "/metrics", None);
        assert_eq!(status, 200, "{page}");
        let sum = |series: &dyn Fn(u32) -> String| -> u64 {
            (0..queues).map(|w| metric_sample(&page, &series(w))).sum()
        };
        let handed = sum(&|w| format!("oxlb_handed_off_total{{worker=\"{w}\"}}"));
        assert!(handed > 0, "no frame was passed between workers:\n{page}");
        let lost = sum(&|w| format!("oxlb_drops_total{{worker=\"{w}\",reason=\"fragment\"}}"));
        assert_eq!(lost, 0, "fragments were dropped:\n{page}");
    }
    assert!(
        n >= want,
        "{n} later fragments followed, {want} expected\n{}",
        diag()
    );
}

#[test]
fn a_fragmented_ipv6_datagram_and_its_fragmented_answer_pass_a_nat66_dnat_vip() {
    fragmented_ipv6_datagrams_pass_nat66_dnat(1, 1);
}

#[test]
fn with_two_workers_fragmented_ipv6_datagrams_follow_their_first_fragment_to_its_owner() {
    // Eight client ports: some flows belong to the worker that did not receive them, whose
    // later fragments must be passed behind their first.
    fragmented_ipv6_datagrams_pass_nat66_dnat(2, 8);
}
