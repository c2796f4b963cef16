//! End-to-end checks of every load-balancer mode and of the selection algorithms that a client
//! can observe (issue #4), through a real oxlb in the namespace topology.
//!
//! What the backend sees as its peer is the point of each mode: the client (DNAT, DSR), the
//! LB's own address toward the backends (one-arm) or the VIP (full NAT).

use oxlb_tests::checks::{self, vip_url};
use oxlb_tests::{
    metric_sample, parse_answer, unique_prefix, Answer, Node, OxlbGuard, Topology, TopologyOptions,
    BACKEND_IPS, BACKEND_NAMES, BACKEND_PORT, CLIENT_IP, LB_BACKEND_SIDE_IP, VIP, VIP_PORT,
};

fn topology(ip_forward: bool) -> Topology {
    Topology::build(
        &unique_prefix(),
        TopologyOptions {
            ip_forward,
            ..Default::default()
        },
    )
}

fn log_of(oxlb: &OxlbGuard) -> impl Fn() -> String + '_ {
    move || format!("oxlb output:\n{}", oxlb.log())
}

/// `n` HTTP requests through the VIP from the client, with `curl_args` added.
fn requests(
    topo: &Topology,
    n: usize,
    curl_args: &[&str],
    diag: &dyn Fn() -> String,
) -> Vec<Answer> {
    (0..n)
        .map(|i| {
            let mut args = vec!["curl", "-sS", "--fail", "--max-time", "5"];
            args.extend_from_slice(curl_args);
            let url = vip_url("/");
            args.push(&url);
            let out = topo.exec(Node::Client, &args);
            assert!(
                out.status.success(),
                "request {i} through the VIP failed: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                diag()
            );
            parse_answer(&String::from_utf8_lossy(&out.stdout))
        })
        .collect()
}

/// Requests rotate over all backends, each sees `peer`, UDP works, and 10 MB arrive intact.
fn mode_works(mode: u8, peer: &str) {
    let topo = topology(false);
    let _backends = topo.start_backends();
    let oxlb = topo.start_oxlb(&[]);
    topo.add_service("tcp", mode, 0, BACKEND_PORT);
    topo.add_service("udp", mode, 0, BACKEND_PORT);
    let diag = log_of(&oxlb);

    let answers = requests(&topo, 6, &[], &diag);
    let names: Vec<String> = answers.iter().map(|a| a.backend.clone()).collect();
    let context = || format!("{}\n{}", oxlb_tests::nonzero_counters(&topo), diag());
    oxlb_tests::assert_strict_rotation_or(&names, &BACKEND_NAMES, &context);
    for a in &answers {
        assert_eq!(a.peer_ip, peer, "mode {mode}: the backend saw {a:?}");
    }

    let out = topo.testpeer(
        Node::Client,
        &[
            "udp-request",
            &format!("{VIP}:{VIP_PORT}"),
            "udp-through",
            "--timeout-ms",
            "3000",
        ],
    );
    assert!(
        out.status.success(),
        "mode {mode}: no UDP answer {out:?}\n{}",
        diag()
    );
    let a = parse_answer(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(
        (a.peer_ip.as_str(), a.rest.as_str()),
        (peer, "udp-through"),
        "{a:?}"
    );

    checks::ten_megabyte_download_is_identical(&topo, &diag);
}

#[test]
fn in_one_arm_mode_backends_see_the_lbs_own_address_and_everything_passes() {
    mode_works(1, LB_BACKEND_SIDE_IP);
}

#[test]
fn in_full_nat_mode_backends_see_the_vip_and_everything_passes() {
    mode_works(2, VIP);
}

#[test]
fn in_dsr_mode_backends_answer_the_client_themselves_see_its_address_and_hashing_sticks() {
    // The backends hold the VIP on their loopback and must not answer ARP for it; they answer
    // from the VIP straight back. This topology's only path to the client crosses the LB's
    // namespace, so its kernel forwards those answers (ip_forward on); oxlb sees only requests.
    let topo = topology(true);
    let mut guards = Vec::new();
    for (i, name) in BACKEND_NAMES.iter().enumerate() {
        let node = Node::Backend(i as u8 + 1);
        for args in [
            vec!["ip", "addr", "add", &format!("{VIP}/32"), "dev", "lo"],
            vec!["sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=1"],
            vec!["sysctl", "-qw", "net.ipv4.conf.all.arp_announce=2"],
        ] {
            topo.exec_ok(
                node,
                &args.iter().map(|s| s.as_ref()).collect::<Vec<&str>>(),
            );
        }
        guards.push(topo.start_testpeer(node, name, VIP_PORT, node, VIP));
    }
    let oxlb = topo.start_oxlb(&[]);
    topo.add_service("tcp", 3, 0, VIP_PORT);
    let diag = log_of(&oxlb);

    let answers = requests(&topo, 6, &[], &diag);
    let names: Vec<String> = answers.iter().map(|a| a.backend.clone()).collect();
    let context = || format!("{}\n{}", oxlb_tests::nonzero_counters(&topo), diag());
    oxlb_tests::assert_strict_rotation_or(&names, &BACKEND_NAMES, &context);
    for a in &answers {
        assert_eq!(a.peer_ip, CLIENT_IP, "the backend saw {a:?}");
    }
    checks::ten_megabyte_download_is_identical(&topo, &diag);
    hashing_is_sticky(&topo, 3, &diag);
}

/// With hashing (`sel` 1) in `mode`, twelve connections from one client port all reach one
/// backend (which, where it sees the client's port, sees that port), and twelve from other
/// ports spread over more than one.
fn hashing_is_sticky(topo: &Topology, mode: u8, diag: &dyn Fn() -> String) {
    // Replaces whatever TCP service the test had on the VIP.
    let _ = topo.delete_vip("tcp");
    let target_port = if mode == 3 { VIP_PORT } else { BACKEND_PORT };
    topo.add_service("tcp", mode, 1, target_port);
    // The same source port twelve times: the client must not keep the previous connection in
    // TIME_WAIT, or binding the port again fails (the LB side handles the reuse itself).
    topo.exec_ok(
        Node::Client,
        &["sysctl", "-qw", "net.ipv4.tcp_max_tw_buckets=0"],
    );
    let answers = requests(topo, 12, &["--local-port", "45678"], diag);
    let first = &answers[0].backend;
    // DNAT and DSR leave the client's port in place; one-arm and full NAT replace it.
    let keeps_port = matches!(mode, 0 | 3);
    assert!(
        answers
            .iter()
            .all(|a| &a.backend == first && (!keeps_port || a.peer_port == 45678)),
        "mode {mode}: answers moved between backends: {answers:?}"
    );
    let spread = requests(topo, 12, &[], diag);
    let mut names: Vec<&str> = spread.iter().map(|a| a.backend.as_str()).collect();
    names.sort();
    names.dedup();
    assert!(
        names.len() > 1,
        "mode {mode}: twelve ports all hashed to {names:?}"
    );
}

#[test]
fn hashing_keeps_one_client_port_on_one_backend_for_twelve_requests_in_dnat_one_arm_and_full_nat() {
    let topo = topology(false);
    let _backends = topo.start_backends();
    let oxlb = topo.start_oxlb(&[]);
    let diag = log_of(&oxlb);
    for mode in [0, 1, 2] {
        hashing_is_sticky(&topo, mode, &diag);
    }
}

#[test]
fn persist_keeps_a_client_on_one_backend_whatever_its_ports() {
    let topo = topology(false);
    let _backends = topo.start_backends();
    let oxlb = topo.start_oxlb(&[]);
    topo.add_service("tcp", 0, 3, BACKEND_PORT);
    let diag = log_of(&oxlb);
    let answers = requests(&topo, 8, &[], &diag);
    assert!(
        answers.iter().all(|a| a.backend == answers[0].backend),
        "the client moved: {answers:?}"
    );
}

#[test]
fn a_ping_to_the_vip_is_answered_by_oxlb() {
    let topo = topology(false);
    let _backends = topo.start_backends();
    let oxlb = topo.start_oxlb(&[]);
    // Before the VIP exists nobody answers for it.
    let before = topo.exec(Node::Client, &["ping", "-c", "1", "-W", "1", VIP]);
    assert!(
        !before.status.success(),
        "something answered for the VIP before it existed"
    );
    topo.add_service("tcp", 0, 0, BACKEND_PORT);
    let out = topo.exec(
        Node::Client,
        &["ping", "-c", "3", "-i", "0.2", "-W", "2", VIP],
    );
    assert!(
        out.status.success(),
        "no echo reply from the VIP: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        log_of(&oxlb)()
    );
}

#[test]
fn only_allowed_sources_reach_the_vip() {
    let topo = topology(false);
    let _backends = topo.start_backends();
    let oxlb = topo.start_oxlb(&[]);
    let body = |prefix: &str| {
        serde_json::json!({
            "serviceArguments": {"externalIP": VIP, "port": VIP_PORT, "protocol": "tcp"},
            "endpoints": [{"endpointIP": BACKEND_IPS[0], "targetPort": BACKEND_PORT, "weight": 1}],
            "allowedSources": [{"prefix": prefix}],
        })
        .to_string()
    };
    let (status, answer) = topo.api(
        "POST",
        "/netlox/v1/config/loadbalancer",
        Some(&body("198.19.0.0/16")),
    );
    assert_eq!(status, 200, "{answer}");
    let refused = topo.exec(
        Node::Client,
        &["curl", "-sS", "--max-time", "2", &vip_url("/")],
    );
    assert!(
        !refused.status.success(),
        "a source outside 198.19.0.0/16 got through"
    );

    let (status, answer) = topo.api(
        "POST",
        "/netlox/v1/config/loadbalancer",
        Some(&body("198.18.0.0/24")),
    );
    assert_eq!(status, 200, "{answer}");
    let answers = requests(&topo, 2, &[], &log_of(&oxlb));
    assert_eq!(answers[0].peer_ip, CLIENT_IP);
}

#[test]
fn metrics_count_the_flows_and_packets_that_went_through() {
    let topo = topology(false);
    let _backends = topo.start_backends();
    let oxlb = topo.start_oxlb(&[]);
    topo.add_service("tcp", 0, 0, BACKEND_PORT);
    requests(&topo, 3, &[], &log_of(&oxlb));

    let (status, page) = topo.api("GET", "/metrics", None);
    assert_eq!(status, 200, "{page}");
    assert!(
        metric_sample(&page, "oxlb_flows_created_total{worker=\"0\"}") >= 3,
        "{page}"
    );
    // Each HTTP exchange is several segments each way, all through the worker.
    assert!(
        metric_sample(&page, "oxlb_rx_packets_total{worker=\"0\"}") >= 3 * 6,
        "{page}"
    );
    assert!(metric_sample(&page, "oxlb_xdp_packets_total{action=\"redirected\"}") >= 3 * 6);
    assert_eq!(
        metric_sample(
            &page,
            "oxlb_drops_total{worker=\"0\",reason=\"conntrack_full\"}"
        ),
        0
    );
    assert_eq!(metric_sample(&page, "oxlb_services"), 1);

    // Per endpoint: round robin gave each backend one of the three flows. Workers publish
    // these about once a second.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let series = |ip: &str, name: &str, extra: &str| {
        format!(
            "{name}{{service=\"{VIP}:{VIP_PORT}/tcp\",endpoint=\"{ip}:{BACKEND_PORT}\"{extra}}}"
        )
    };
    loop {
        let (_, page) = topo.api("GET", "/metrics", None);
        let created: Vec<u64> = BACKEND_IPS
            .iter()
            .map(|ip| {
                page.lines()
                    .find_map(|l| {
                        l.strip_prefix(&series(ip, "oxlb_endpoint_flows_created_total", ""))?
                            .trim()
                            .parse()
                            .ok()
                    })
                    .unwrap_or(0)
            })
            .collect();
        if created == [1, 1, 1] {
            for ip in BACKEND_IPS {
                let to_client = series(ip, "oxlb_endpoint_bytes_total", ",direction=\"to_client\"");
                assert!(metric_sample(&page, &to_client) > 0, "{page}");
            }
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "per-endpoint flows {created:?}, expected one each:\n{page}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
