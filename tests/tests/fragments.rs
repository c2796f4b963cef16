//! IPv4 fragments through a real oxlb: a UDP datagram bigger than the links' MTU (the
//! client's kernel cuts it in three) reaches a backend whole, and the backend's answer, cut by
//! its own kernel, reaches the client whole, in DNAT and in full NAT. Only the first fragment
//! carries the ports; the later ones follow it. Needs root; without it the test fails, saying
//! so.

use oxlb_tests::{
    metric_sample, parse_answer, unique_prefix, Node, Topology, TopologyOptions, BACKEND_NAMES,
    CLIENT_IP, VIP, VIP_PORT,
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
        // The first datagram may be held while the LB resolves the backend's MAC.
        let answer = (0..3).find_map(|_| {
            let out = topo.testpeer(
                Node::Client,
                &["udp-request", &target, &payload, "--timeout-ms", "2000"],
            );
            out.status
                .success()
                .then(|| parse_answer(&String::from_utf8_lossy(&out.stdout)))
        });
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
