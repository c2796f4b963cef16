//! IPv6 through a real oxlb: an IPv6 client reaches an IPv6 VIP whose endpoints are IPv6
//! (NAT66) or IPv4 (NAT64), in the topology with IPv6 on the same links
//! (`Topology::build_dual_stack`): client fd00::2 via fd00::1, backends fd00:31::1..3 (and
//! 198.18.31.1..3) via the LB, IPv6 forwarding off in the LB namespace so only oxlb forwards.
//! Needs root; without it every test fails, saying so.

use oxlb_tests::blob::blob_bytes;
use oxlb_tests::{
    assert_strict_rotation_or, binary, nonzero_counters, parse_answer, unique_prefix, Answer, Node,
    OxlbGuard, Topology, TopologyOptions, BACKEND_IP6S, BACKEND_IPS, BACKEND_NAMES, BACKEND_PORT,
    CLIENT_IP6, LB_BACKEND_SIDE_IP, LB_BACKEND_SIDE_IP6, VIP6, VIP_PORT,
};

fn topology() -> Topology {
    Topology::build_dual_stack(&unique_prefix(), TopologyOptions::default())
}

fn log_of(oxlb: &OxlbGuard) -> impl Fn() -> String + '_ {
    move || format!("oxlb output:\n{}", oxlb.log())
}

/// `http://[fd00:100::1]:PORT{path}`.
fn url6(port: u16, path: &str) -> String {
    format!("http://[{VIP6}]:{port}{path}")
}

/// Creates `protocol` service VIP6:`port` in loxilb's `mode`, round robin, over `endpoints`
/// on the backends' port; panics unless the API answers 200.
fn add_service6(topo: &Topology, protocol: &str, port: u16, mode: u8, endpoints: &[&str]) {
    let eps: Vec<serde_json::Value> = endpoints
        .iter()
        .map(|ip| serde_json::json!({"endpointIP": ip, "targetPort": BACKEND_PORT, "weight": 1}))
        .collect();
    let body = serde_json::json!({
        "serviceArguments": {"externalIP": VIP6, "port": port, "protocol": protocol,
                             "sel": 0, "mode": mode, "name": "v6"},
        "endpoints": eps,
    })
    .to_string();
    let (status, answer) = topo.api("POST", "/netlox/v1/config/loadbalancer", Some(&body));
    assert_eq!(status, 200, "creating the IPv6 service failed: {answer}");
}

/// `curl -6 -g` from the client; Ok(body) on a 2xx.
fn curl6(topo: &Topology, url: &str, max_secs: u32) -> Result<String, String> {
    let t = max_secs.to_string();
    let out = topo.exec(
        Node::Client,
        &["curl", "-6", "-g", "-sS", "--fail", "--max-time", &t, url],
    );
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "curl -6 {url}: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `n` requests to VIP6:`port` from the client, each answered by a backend.
fn requests(topo: &Topology, port: u16, n: usize, diag: &dyn Fn() -> String) -> Vec<Answer> {
    (0..n)
        .map(|_| {
            let body =
                curl6(topo, &url6(port, "/"), 5).unwrap_or_else(|e| panic!("{e}\n{}", diag()));
            parse_answer(&body)
        })
        .collect()
}

/// Six requests rotate strictly over b1..b3, every backend seeing `peer` as the client.
fn rotation_seen_from(topo: &Topology, port: u16, peer: &str, diag: &dyn Fn() -> String) {
    let answers = requests(topo, port, 6, diag);
    for a in &answers {
        assert_eq!(a.peer_ip, peer, "{} saw {a:?}\n{}", a.backend, diag());
    }
    let names: Vec<String> = answers.into_iter().map(|a| a.backend).collect();
    let context = || format!("{}\n{}", nonzero_counters(topo), diag());
    assert_strict_rotation_or(&names, &BACKEND_NAMES, &context);
}

/// A 10 MiB download from VIP6:`port` arrives complete and byte-identical.
fn ten_megabytes_arrive_identical(topo: &Topology, port: u16, diag: &dyn Fn() -> String) {
    const SIZE: usize = 10 * 1024 * 1024;
    let file = topo.scratch_dir().join(format!("blob6-{port}.bin"));
    let file_s = file.to_str().expect("utf-8 scratch path").to_owned();
    let url = url6(port, &format!("/blob?size={SIZE}"));
    let out = topo.exec(
        Node::Client,
        &[
            "curl",
            "-6",
            "-g",
            "-sS",
            "--fail",
            "--max-time",
            "60",
            "-o",
            &file_s,
            &url,
        ],
    );
    assert!(out.status.success(), "download failed: {out:?}\n{}", diag());
    let got = std::fs::read(&file).expect("read the downloaded file");
    let _ = std::fs::remove_file(&file);
    assert_eq!(
        got.len(),
        SIZE,
        "downloaded {} bytes\n{}",
        got.len(),
        diag()
    );
    if let Some(at) = got.iter().zip(&blob_bytes(SIZE)).position(|(a, b)| a != b) {
        panic!("downloaded content differs from byte {at} on\n{}", diag());
    }
}

/// A UDP datagram to VIP6:2020 from the client is answered; the first may wait for the
/// backend's neighbour entry, so up to three are sent.
fn udp_answer(topo: &Topology, diag: &dyn Fn() -> String) -> Answer {
    let target = format!("[{VIP6}]:{VIP_PORT}");
    let answered = (0..3).find_map(|_| {
        let out = topo.testpeer(
            Node::Client,
            &["udp-request", &target, "hello-v6", "--timeout-ms", "2000"],
        );
        out.status
            .success()
            .then(|| parse_answer(&String::from_utf8_lossy(&out.stdout)))
    });
    answered.unwrap_or_else(|| panic!("no UDP answer from {target}\n{}", diag()))
}

#[test]
fn nat66_dnat_rotates_over_ipv6_backends_that_see_the_clients_ipv6_address() {
    let topo = topology();
    let _backends = topo.start_backends();
    let oxlb = topo.start_oxlb(&[]);
    let diag = log_of(&oxlb);
    add_service6(&topo, "tcp", VIP_PORT, 0, &BACKEND_IP6S);
    add_service6(&topo, "udp", VIP_PORT, 0, &BACKEND_IP6S);

    rotation_seen_from(&topo, VIP_PORT, CLIENT_IP6, &diag);

    let a = udp_answer(&topo, &diag);
    assert_eq!(
        (a.peer_ip.as_str(), a.rest.as_str()),
        (CLIENT_IP6, "hello-v6")
    );

    // The connections are listed with their IPv6 addresses as written.
    let (status, body) = topo.api("GET", "/netlox/v1/config/conntrack/all", None);
    assert_eq!(status, 200, "{body}");
    let ct: serde_json::Value = serde_json::from_str(&body).expect("conntrack JSON");
    let entries = ct["ctAttr"].as_array().expect("ctAttr");
    assert!(
        entries
            .iter()
            .any(|e| e["sourceIP"] == CLIENT_IP6 && e["destinationIP"] == VIP6),
        "no client-to-VIP entry in {body}"
    );
}

#[test]
fn nat66_full_nat_backends_see_the_vip_and_a_10_mb_download_is_identical() {
    let topo = topology();
    let _backends = topo.start_backends();
    let oxlb = topo.start_oxlb(&[]);
    let diag = log_of(&oxlb);
    add_service6(&topo, "tcp", VIP_PORT, 2, &BACKEND_IP6S);

    rotation_seen_from(&topo, VIP_PORT, VIP6, &diag);
    ten_megabytes_arrive_identical(&topo, VIP_PORT, &diag);
}

#[test]
fn nat64_full_nat_takes_ipv6_clients_over_tcp_and_udp_to_ipv4_backends_that_see_our_ipv4_address() {
    let topo = topology();
    let _backends = topo.start_backends();
    let oxlb = topo.start_oxlb(&[]);
    let diag = log_of(&oxlb);
    add_service6(&topo, "tcp", VIP_PORT, 2, &BACKEND_IPS);
    add_service6(&topo, "udp", VIP_PORT, 2, &BACKEND_IPS);

    rotation_seen_from(&topo, VIP_PORT, LB_BACKEND_SIDE_IP, &diag);
    ten_megabytes_arrive_identical(&topo, VIP_PORT, &diag);
    let a = udp_answer(&topo, &diag);
    assert_eq!(
        (a.peer_ip.as_str(), a.rest.as_str()),
        (LB_BACKEND_SIDE_IP, "hello-v6")
    );
}

#[test]
fn one_arm_backends_see_our_own_address_of_their_family_in_nat64_and_nat66() {
    let topo = topology();
    let _backends = topo.start_backends();
    let oxlb = topo.start_oxlb(&[]);
    let diag = log_of(&oxlb);
    add_service6(&topo, "tcp", VIP_PORT, 1, &BACKEND_IPS);
    add_service6(&topo, "tcp", VIP_PORT + 1, 1, &BACKEND_IP6S);

    rotation_seen_from(&topo, VIP_PORT, LB_BACKEND_SIDE_IP, &diag);
    rotation_seen_from(&topo, VIP_PORT + 1, LB_BACKEND_SIDE_IP6, &diag);
}

#[test]
fn a_ping6_to_the_vip_is_answered_by_oxlb() {
    let topo = topology();
    let _backends = topo.start_backends();
    let oxlb = topo.start_oxlb(&[]);
    let ping = |count: &str| {
        topo.exec(
            Node::Client,
            &["ping", "-6", "-c", count, "-i", "0.2", "-W", "2", VIP6],
        )
    };
    let before = ping("1");
    assert!(
        !before.status.success(),
        "something answered for the VIP before it existed"
    );
    add_service6(&topo, "tcp", VIP_PORT, 2, &BACKEND_IPS);
    let out = ping("3");
    assert!(
        out.status.success(),
        "no echo reply from {VIP6}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        log_of(&oxlb)()
    );
}

/// Python in the client namespace: one datagram on a connected UDP socket to [argv1]:argv2,
/// then what the socket says within 3 s: "refused FROM TYPE CODE" (the ICMPv6 error's sender,
/// type and code, read from the socket's error queue), "timeout" or "answer". The kernel
/// reports the refusal to this socket only when the error quotes the datagram exactly as the
/// socket sent it: to the VIP and its port, from the client's own port.
const UDP6_REFUSED: &str = r#"
import socket, struct, sys
IPV6_RECVERR = 25
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
s.settimeout(3)
s.connect((sys.argv[1], int(sys.argv[2])))
# Several tries: the first may wait for the backend's neighbour entry.
for _ in range(3):
    try:
        s.send(b"anyone?")
        s.recv(100)
        print("answer"); break
    except ConnectionRefusedError:
        _, anc, _, _ = s.recvmsg(100, 512, socket.MSG_ERRQUEUE)
        for level, kind, data in anc:
            if level == socket.IPPROTO_IPV6 and kind == IPV6_RECVERR:
                # struct sock_extended_err, then the offender's sockaddr_in6.
                _, _, icmp_type, code = struct.unpack("=IBBB", data[:7])
                sender = socket.inet_ntop(socket.AF_INET6, data[16 + 8:16 + 24])
                print("refused", sender, icmp_type, code)
        break
    except socket.timeout:
        continue
else:
    print("timeout")
"#;

/// Creates UDP service VIP6:`port` in loxilb's `mode` over `endpoints` on their UDP port 9,
/// where nothing listens: the backends' kernels answer every datagram "port unreachable".
fn add_refusing_service6(topo: &Topology, port: u16, mode: u8, endpoints: &[&str]) {
    let eps: Vec<serde_json::Value> = endpoints
        .iter()
        .map(|ip| serde_json::json!({"endpointIP": ip, "targetPort": 9, "weight": 1}))
        .collect();
    let body = serde_json::json!({
        "serviceArguments": {"externalIP": VIP6, "port": port, "protocol": "udp",
                             "sel": 0, "mode": mode, "name": "refusing"},
        "endpoints": eps,
    })
    .to_string();
    let (status, answer) = topo.api("POST", "/netlox/v1/config/loadbalancer", Some(&body));
    assert_eq!(status, 200, "creating a refusing service: {answer}");
}

#[test]
fn a_backends_icmpv6_port_unreachable_reaches_the_client_from_the_vip_in_every_nat66_mode() {
    let topo = topology();
    let _backends = topo.start_backends();
    let oxlb = topo.start_oxlb(&[]);
    let diag = log_of(&oxlb);
    for mode in [0u8, 1, 2] {
        let port = VIP_PORT + 10 + u16::from(mode);
        add_refusing_service6(&topo, port, mode, &BACKEND_IP6S);
        let port = port.to_string();
        let out = topo.exec_ok(Node::Client, &["python3", "-c", UDP6_REFUSED, VIP6, &port]);
        assert_eq!(
            out.trim(),
            format!("refused {VIP6} 1 4"),
            "mode {mode}: the client did not learn of the refusal from the VIP\n{}\n{}",
            nonzero_counters(&topo),
            diag()
        );
    }
    let (status, page) = topo.api("GET", "/metrics", None);
    assert_eq!(status, 200, "{page}");
    let translated =
        oxlb_tests::metric_sample(&page, "oxlb_icmp_errors_translated_total{worker=\"0\"}");
    assert!(translated >= 3, "{translated} errors translated\n{page}");
}

#[test]
fn an_ipv4_backends_port_unreachable_reaches_the_ipv6_client_as_icmpv6_from_the_vip_in_nat64() {
    let topo = topology();
    let _backends = topo.start_backends();
    let oxlb = topo.start_oxlb(&[]);
    let diag = log_of(&oxlb);
    // NAT64 in one-arm and full NAT: the backends' ICMPv4 refusal reaches the client as
    // ICMPv6 destination unreachable (1), port unreachable (4), RFC 7915's mapping.
    for mode in [1u8, 2] {
        let port = VIP_PORT + 20 + u16::from(mode);
        add_refusing_service6(&topo, port, mode, &BACKEND_IPS);
        let port = port.to_string();
        let out = topo.exec_ok(Node::Client, &["python3", "-c", UDP6_REFUSED, VIP6, &port]);
        assert_eq!(
            out.trim(),
            format!("refused {VIP6} 1 4"),
            "mode {mode}: the client did not learn of the refusal from the VIP\n{}\n{}",
            nonzero_counters(&topo),
            diag()
        );
    }
}

/// Python on a backend: waits up to 10 s for one datagram on UDP port 9, answers it on a
/// socket connected to its sender, then prints what that socket says within 3 s: "refused
/// FROM TYPE CODE" (the ICMP error's sender, type and code, from the socket's error queue),
/// "timeout" or "answer". As for the client, the kernel reports the refusal to this socket
/// only when the error quotes the answer exactly as the socket sent it.
const UDP_ANSWER_REFUSED: &str = r#"
import socket, struct
IP_RECVERR = 11
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 9))
s.settimeout(10)
_, peer = s.recvfrom(100)
s.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
s.connect(peer)
s.settimeout(3)
s.send(b"answer")
try:
    s.recv(100)
    print("answer")
except ConnectionRefusedError:
    _, anc, _, _ = s.recvmsg(100, 512, socket.MSG_ERRQUEUE)
    for level, kind, data in anc:
        if level == socket.IPPROTO_IP and kind == IP_RECVERR:
            # struct sock_extended_err, then the offender's sockaddr_in.
            _, _, icmp_type, code = struct.unpack("=IBBB", data[:7])
            sender = socket.inet_ntop(socket.AF_INET, data[16 + 4:16 + 8])
            print("refused", sender, icmp_type, code)
except socket.timeout:
    print("timeout")
"#;

/// Python in the client namespace: one datagram to [argv1]:argv2 from a socket closed at
/// once, so that the answer finds no socket and the client's kernel refuses it.
const UDP6_SEND_AND_CLOSE: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.sendto(b"anyone?", (sys.argv[1], int(sys.argv[2])))
s.close()
"#;

#[test]
fn an_ipv6_clients_port_unreachable_reaches_the_ipv4_backend_as_icmpv4_from_us_in_nat64() {
    let topo = topology();
    let _backends = topo.start_backends();
    let oxlb = topo.start_oxlb(&[]);
    let diag = log_of(&oxlb);
    // NAT64 in one-arm and full NAT: the client's ICMPv6 refusal of the backend's answer
    // reaches the backend as ICMPv4 destination unreachable (3), port unreachable (3), RFC
    // 7915's mapping, from our address the backend answered.
    for mode in [1u8, 2] {
        let port = VIP_PORT + 30 + u16::from(mode);
        add_refusing_service6(&topo, port, mode, &BACKEND_IPS[..1]);
        let mut backend = topo.spawn(
            Node::Backend(1),
            &["python3", "-c", UDP_ANSWER_REFUSED],
            &format!("answer-refused-{mode}"),
        );
        // The backend's socket is bound before the datagram leaves.
        std::thread::sleep(std::time::Duration::from_millis(500));
        let port = port.to_string();
        topo.exec_ok(
            Node::Client,
            &["python3", "-c", UDP6_SEND_AND_CLOSE, VIP6, &port],
        );
        for _ in 0..100 {
            if backend.try_wait().is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert_eq!(
            backend.log().trim(),
            format!("refused {LB_BACKEND_SIDE_IP} 3 3"),
            "mode {mode}: the backend did not learn of the refusal from us\n{}\n{}",
            nonzero_counters(&topo),
            diag()
        );
    }
}

/// Runs `oxlbctl ARGS` in the LB namespace; returns (exit code, stdout, stderr).
fn oxlbctl(topo: &Topology, args: &[&str]) -> (Option<i32>, String, String) {
    let bin = binary("oxlbctl");
    let mut all = vec![bin.to_str().expect("utf-8 path")];
    all.extend_from_slice(args);
    let out = topo.exec(Node::Lb, &all);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn oxlbctl_creates_an_ipv6_vip_over_ipv4_endpoints_that_serves_and_deletes_it() {
    let topo = topology();
    let _backends = topo.start_backends();
    let oxlb = topo.start_oxlb(&[]);
    let diag = log_of(&oxlb);
    let endpoints = "--endpoints=198.18.31.1:1,198.18.31.2:1,198.18.31.3:1";
    let tcp = format!("--tcp={VIP_PORT}:{BACKEND_PORT}");

    // NAT64 without source translation is refused by the appliance, which says why.
    let refused = oxlbctl(&topo, &["create", "lb", VIP6, &tcp, endpoints]);
    assert_eq!(refused.0, Some(1), "{refused:?}");
    assert!(
        refused.2.contains("NAT64 needs source translation"),
        "{refused:?}"
    );

    let created = oxlbctl(
        &topo,
        &["create", "lb", VIP6, &tcp, endpoints, "--mode", "fullnat"],
    );
    assert_eq!(created.0, Some(0), "{created:?}\n{}", diag());
    assert_eq!(
        created.1.trim(),
        format!("create lb [{VIP6}]:{VIP_PORT}/tcp: Success")
    );
    let listed = oxlbctl(&topo, &["get", "lb"]);
    assert!(listed.1.contains(VIP6), "{listed:?}");
    assert!(listed.1.contains("fullnat"), "{listed:?}");

    rotation_seen_from(&topo, VIP_PORT, LB_BACKEND_SIDE_IP, &diag);

    let bracketed = format!("[{VIP6}]");
    let deleted = oxlbctl(
        &topo,
        &["delete", "lb", &bracketed, &format!("--tcp={VIP_PORT}")],
    );
    assert_eq!(deleted.0, Some(0), "{deleted:?}");
    assert!(
        curl6(&topo, &url6(VIP_PORT, "/"), 2).is_err(),
        "the deleted VIP still answers"
    );
}

/// Backend names answering 12 requests to VIP6:`port`; `None` if one failed.
fn twelve_backends(topo: &Topology, port: u16) -> Option<Vec<String>> {
    (0..12)
        .map(|_| {
            curl6(topo, &url6(port, "/"), 2)
                .ok()
                .map(|b| parse_answer(&b).backend)
        })
        .collect()
}

/// Polls (at most `limit`) until 12 requests all succeed and satisfy `ok`; panics saying
/// `what` otherwise.
fn eventually6(
    topo: &Topology,
    limit: std::time::Duration,
    what: &str,
    diag: &dyn Fn() -> String,
    ok: impl Fn(&[String]) -> bool,
) {
    let started = std::time::Instant::now();
    let mut last = None;
    while started.elapsed() < limit {
        last = twelve_backends(topo, VIP_PORT);
        if last.as_deref().is_some_and(&ok) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    panic!("{what} within {limit:?}; last round: {last:?}\n{}", diag());
}

#[test]
fn an_ipv6_backend_ignoring_icmpv6_pings_gets_no_new_flows_until_it_answers_again() {
    let topo = topology();
    let _backends = topo.start_backends();
    let oxlb = topo.start_oxlb(&[]);
    let diag = log_of(&oxlb);
    let eps: Vec<serde_json::Value> = BACKEND_IP6S
        .iter()
        .map(|ip| serde_json::json!({"endpointIP": ip, "targetPort": BACKEND_PORT, "weight": 1}))
        .collect();
    let body = serde_json::json!({
        "serviceArguments": {"externalIP": VIP6, "port": VIP_PORT, "protocol": "tcp",
                             "mode": 2, "monitor": true, "probetype": "ping",
                             "probeTimeout": 1, "probeRetries": 2},
        "endpoints": eps,
    })
    .to_string();
    let (status, answer) = topo.api("POST", "/netlox/v1/config/loadbalancer", Some(&body));
    assert_eq!(status, 200, "{answer}");
    let within = std::time::Duration::from_secs(6);
    let all_three = |n: &[String]| BACKEND_NAMES.iter().all(|b| n.iter().any(|x| x == b));

    std::thread::sleep(within);
    eventually6(&topo, within, "not all three took flows", &diag, all_three);

    let b2 = Node::Backend(2);
    let table = "oxlb_probe_test6";
    topo.exec_ok(b2, &["nft", "add", "table", "ip6", table]);
    topo.exec_ok(
        b2,
        &[
            "nft",
            "add",
            "chain",
            "ip6",
            table,
            "input",
            "{ type filter hook input priority 0 ; policy accept ; }",
        ],
    );
    topo.exec_ok(
        b2,
        &[
            "nft",
            "add",
            "rule",
            "ip6",
            table,
            "input",
            "icmpv6",
            "type",
            "echo-request",
            "drop",
        ],
    );
    eventually6(&topo, within, "b2 still took flows", &diag, |n| {
        n.iter().all(|b| b != "b2")
    });
    let (_, listing) = topo.api("GET", "/netlox/v1/config/endpoint/all", None);
    let listing: serde_json::Value = serde_json::from_str(&listing).expect("endpoint JSON");
    let states: Vec<(String, String)> = listing["Attr"]
        .as_array()
        .expect("Attr")
        .iter()
        .map(|e| {
            (
                e["hostName"].as_str().unwrap_or_default().to_owned(),
                e["currState"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert!(
        states.contains(&(BACKEND_IP6S[1].to_owned(), "nok".to_owned())),
        "{states:?}"
    );

    topo.exec_ok(b2, &["nft", "delete", "table", "ip6", table]);
    eventually6(&topo, within, "b2 did not come back", &diag, all_three);
}

#[test]
fn only_allowed_ipv6_sources_reach_an_ipv6_vip() {
    let topo = topology();
    let _backends = topo.start_backends();
    let oxlb = topo.start_oxlb(&[]);
    let post = |prefixes: &[&str]| {
        let sources: Vec<serde_json::Value> = prefixes
            .iter()
            .map(|p| serde_json::json!({"prefix": p}))
            .collect();
        let body = serde_json::json!({
            "serviceArguments": {"externalIP": VIP6, "port": VIP_PORT, "protocol": "tcp",
                                 "mode": 2},
            "endpoints": [{"endpointIP": BACKEND_IPS[0], "targetPort": BACKEND_PORT, "weight": 1}],
            "allowedSources": sources,
        })
        .to_string();
        let (status, answer) = topo.api("POST", "/netlox/v1/config/loadbalancer", Some(&body));
        assert_eq!(status, 200, "{answer}");
    };
    // The client's IPv4 network does not admit its IPv6 address, nor does another IPv6 one.
    post(&["fd00:1::/64", "198.18.0.0/24"]);
    assert!(
        curl6(&topo, &url6(VIP_PORT, "/"), 2).is_err(),
        "a source outside fd00:1::/64 got through"
    );

    post(&["fd00::/64"]);
    let answers = requests(&topo, VIP_PORT, 2, &log_of(&oxlb));
    assert_eq!(answers[0].peer_ip, LB_BACKEND_SIDE_IP);
}

#[test]
fn metrics_name_ipv6_services_and_endpoints_in_brackets() {
    let topo = topology();
    let _backends = topo.start_backends();
    let oxlb = topo.start_oxlb(&[]);
    add_service6(&topo, "tcp", VIP_PORT, 2, &BACKEND_IP6S);
    requests(&topo, VIP_PORT, 3, &log_of(&oxlb));
    let series = format!(
        "oxlb_endpoint_flows_created_total{{service=\"[{VIP6}]:{VIP_PORT}/tcp\",endpoint=\"[{}]:{BACKEND_PORT}\"}}",
        BACKEND_IP6S[0]
    );
    // Endpoint counters are refreshed about once a second.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (status, page) = topo.api("GET", "/metrics", None);
        assert_eq!(status, 200, "{page}");
        let flows = page
            .lines()
            .find_map(|l| l.strip_prefix(&series)?.trim().parse::<u64>().ok());
        if flows == Some(1) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {series} 1 in:\n{page}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn nat66_dsr_backends_answer_the_client_themselves_and_see_its_ipv6_address() {
    // The backends hold the VIP on their loopback (the kernel answers neighbour solicitations
    // only for addresses of the interface asked on, so not for it) and answer from it
    // straight back. The only path to the client crosses the LB's namespace, so its kernel
    // forwards those answers (IPv6 forwarding on here); oxlb sees only requests.
    let topo = topology();
    topo.exec_ok(
        Node::Lb,
        &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"],
    );
    let mut guards = Vec::new();
    for (i, name) in BACKEND_NAMES.iter().enumerate() {
        let node = Node::Backend(i as u8 + 1);
        topo.exec_ok(
            node,
            &[
                "ip",
                "-6",
                "addr",
                "add",
                &format!("{VIP6}/128"),
                "dev",
                "lo",
            ],
        );
        guards.push(topo.start_testpeer(node, name, VIP_PORT, node, BACKEND_IPS[i]));
        // The LB knows the backends' MACs before the first request: a DSR request sent while
        // the neighbour is unresolved goes to the LB's kernel, which has no route to the VIP,
        // and only the client's retransmission (1 s later) would get through.
        topo.exec_ok(
            Node::Lb,
            &["ping", "-6", "-c", "1", "-W", "3", BACKEND_IP6S[i]],
        );
    }
    let oxlb = topo.start_oxlb(&[]);
    let eps: Vec<serde_json::Value> = BACKEND_IP6S
        .iter()
        .map(|ip| serde_json::json!({"endpointIP": ip, "targetPort": VIP_PORT, "weight": 1}))
        .collect();
    let body = serde_json::json!({
        "serviceArguments": {"externalIP": VIP6, "port": VIP_PORT, "protocol": "tcp", "mode": 3},
        "endpoints": eps,
    })
    .to_string();
    let (status, answer) = topo.api("POST", "/netlox/v1/config/loadbalancer", Some(&body));
    assert_eq!(status, 200, "{answer}");
    let diag = log_of(&oxlb);
    rotation_seen_from(&topo, VIP_PORT, CLIENT_IP6, &diag);
    ten_megabytes_arrive_identical(&topo, VIP_PORT, &diag);
}

#[test]
fn with_two_queues_nat66_and_nat64_flows_find_their_owning_worker() {
    // Two RX queues per interface, so two workers; a flow's request and reply land on queues
    // chosen independently, and a packet at the wrong worker must be passed to its owner.
    let topo = Topology::build_dual_stack(
        &unique_prefix(),
        TopologyOptions {
            queues: 2,
            ..Default::default()
        },
    );
    let _backends = topo.start_backends();
    let oxlb = topo.start_oxlb(&[]);
    let diag = log_of(&oxlb);
    add_service6(&topo, "tcp", VIP_PORT, 2, &BACKEND_IPS);
    add_service6(&topo, "tcp", VIP_PORT + 1, 0, &BACKEND_IP6S);

    for _ in 0..2 {
        rotation_seen_from(&topo, VIP_PORT, LB_BACKEND_SIDE_IP, &diag);
        rotation_seen_from(&topo, VIP_PORT + 1, CLIENT_IP6, &diag);
    }
    ten_megabytes_arrive_identical(&topo, VIP_PORT, &diag);
    ten_megabytes_arrive_identical(&topo, VIP_PORT + 1, &diag);

    let (status, page) = topo.api("GET", "/metrics", None);
    assert_eq!(status, 200, "{page}");
    let sample = |series: String| oxlb_tests::metric_sample(&page, &series);
    let rx: Vec<u64> = (0..2)
        .map(|w| sample(format!("oxlb_rx_packets_total{{worker=\"{w}\"}}")))
        .collect();
    assert!(
        rx.iter().all(|&n| n > 0),
        "a worker processed nothing: {rx:?}"
    );
    let lost: u64 = (0..2)
        .map(|w| {
            sample(format!(
                "oxlb_drops_total{{worker=\"{w}\",reason=\"no_flow_no_service\"}}"
            ))
        })
        .sum();
    assert_eq!(lost, 0, "packets missed their flow:\n{page}");
    let handed: u64 = (0..2)
        .map(|w| sample(format!("oxlb_handed_off_total{{worker=\"{w}\"}}")))
        .sum();
    assert!(handed > 0, "no frame was passed between workers:\n{page}");
}

#[test]
fn a_nat64_download_through_our_smaller_link_to_the_client_teaches_the_ipv4_backend_its_path_mtu() {
    let topo = topology();
    // The client's own link stays at 1500 bytes, so its MSS asks for segments that, once
    // translated to IPv6 (20 bytes more), do not fit our link toward it: the backend must
    // learn a 1380-byte IPv4 path MTU from our "fragmentation needed".
    topo.exec_ok(Node::Lb, &["ip", "link", "set", "lb0", "mtu", "1400"]);
    let _backends = topo.start_backends();
    let oxlb = topo.start_oxlb(&[]);
    let diag = log_of(&oxlb);
    add_service6(&topo, "tcp", VIP_PORT, 2, &BACKEND_IPS);
    ten_megabytes_arrive_identical(&topo, VIP_PORT, &diag);
    let (status, page) = topo.api("GET", "/metrics", None);
    assert_eq!(status, 200, "{page}");
    let sent = oxlb_tests::metric_sample(&page, "oxlb_frag_needed_sent_total{worker=\"0\"}");
    assert!(sent > 0, "no fragmentation needed was sent\n{}", diag());
}

/// Sends a UDP datagram "with-options" to `[argv[1]]:argv[2]` carrying a destination options
/// header (a PadN option only, which every receiver skips) and prints the first answer, or
/// "timeout" after three tries.
const UDP6_WITH_DSTOPTS: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
# Next header (the kernel fills it), length 0 (8 bytes), PadN of 4 bytes.
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_DSTOPTS, bytes([0, 0, 1, 4, 0, 0, 0, 0]))
s.settimeout(2)
for _ in range(3):
    s.sendto(b"with-options", (sys.argv[1], int(sys.argv[2])))
    try:
        print(s.recv(2048).decode())
        break
    except socket.timeout:
        continue
else:
    print("timeout")
"#;

#[test]
fn a_udp_datagram_with_a_destination_options_header_reaches_an_ipv6_backend_and_is_answered() {
    let topo = topology();
    let _backends = topo.start_backends();
    let oxlb = topo.start_oxlb(&[]);
    let diag = log_of(&oxlb);
    add_service6(&topo, "udp", VIP_PORT, 0, &BACKEND_IP6S);
    let port = VIP_PORT.to_string();
    let out = topo.exec_ok(
        Node::Client,
        &["python3", "-c", UDP6_WITH_DSTOPTS, VIP6, &port],
    );
    assert_ne!(
        out.trim(),
        "timeout",
        "no answer to a datagram with extension headers\n{}\n{}",
        nonzero_counters(&topo),
        diag()
    );
    let a = parse_answer(&out);
    assert_eq!(
        (a.peer_ip.as_str(), a.rest.as_str()),
        (CLIENT_IP6, "with-options")
    );
}
