//! End-to-end `ping` and `https` health probes: oxlb probes the backends from the LB namespace
//! and new flows through the VIP avoid every backend whose probe fails.

use oxlb_tests::health::{
    add_monitored_service, backends_of, eventually, PROBE_RETRIES, PROBE_TIMEOUT_SECS,
};
use oxlb_tests::{
    unique_prefix, ChildGuard, Node, Topology, TopologyOptions, BACKEND_IPS, BACKEND_NAMES,
};
use std::thread;
use std::time::{Duration, Instant};

/// How long a verdict may take to show in the traffic: `retries` failed probes of `timeout`
/// each, one probe interval in which the failure may have begun just after a success, and
/// slack for republishing the snapshot and for the 12 requests of a round.
const VERDICT_WITHIN: Duration = Duration::from_secs(PROBE_TIMEOUT_SECS * PROBE_RETRIES + 4);
/// Where the HTTPS health endpoints listen.
const HTTPS_PORT: u16 = 8443;
/// The nftables table that makes a backend ignore pings.
const NO_PING_TABLE: &str = "oxlb_probe_test";

fn all_three(names: &[String]) -> bool {
    BACKEND_NAMES.iter().all(|b| names.iter().any(|n| n == b))
}

#[test]
fn a_backend_ignoring_pings_gets_no_new_flows_until_it_answers_again() {
    let topo = Topology::build(&unique_prefix(), TopologyOptions::default());
    let _backends = topo.start_backends();
    let oxlb = topo.start_oxlb(&[]);
    // Nothing listens on port 9: were the port used, every backend would fail its probe.
    add_monitored_service(
        &topo,
        serde_json::json!({"probetype": "ping", "probeport": 9}),
    );
    let log = || oxlb.log();

    // Long enough for several probe rounds: pings are answered, so all three stay up.
    thread::sleep(VERDICT_WITHIN);
    eventually(
        &topo,
        VERDICT_WITHIN,
        "answered pings: not all three backends took flows",
        &log,
        all_three,
    );

    let b2 = Node::Backend(2);
    topo.exec_ok(b2, &["nft", "add", "table", "ip", NO_PING_TABLE]);
    topo.exec_ok(
        b2,
        &[
            "nft",
            "add",
            "chain",
            "ip",
            NO_PING_TABLE,
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
            "ip",
            NO_PING_TABLE,
            "input",
            "icmp",
            "type",
            "echo-request",
            "drop",
        ],
    );
    // b2 still serves TCP: only its ping probe fails, and that alone must keep flows away.
    eventually(
        &topo,
        VERDICT_WITHIN,
        "b2 drops pings: requests did not all avoid it",
        &log,
        |names| names.iter().all(|n| n != BACKEND_NAMES[1]),
    );

    topo.exec_ok(b2, &["nft", "delete", "table", "ip", NO_PING_TABLE]);
    eventually(
        &topo,
        VERDICT_WITHIN,
        "b2 answers pings again: it took no flows",
        &log,
        all_three,
    );
}

/// A Python HTTPS server answering `GET /healthz` with 200 and `healthy NAME`, anything else
/// with 404. Single-threaded: one probe at a time is all it serves.
const HTTPS_SERVER: &str = r#"
import http.server, ssl, sys
name, port, cert, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.path == "/healthz"
        body = (("healthy " if ok else "no such page ") + name + "\n").encode()
        self.send_response(200 if ok else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("0.0.0.0", port), Health)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"#;

/// Starts [`HTTPS_SERVER`] as backend `n` on [`HTTPS_PORT`] and waits (bounded) until it
/// answers from the LB namespace.
fn start_https_backend(topo: &Topology, n: u8, cert: &str, key: &str) -> ChildGuard {
    let i = usize::from(n) - 1;
    let port = HTTPS_PORT.to_string();
    let mut guard = topo.spawn(
        Node::Backend(n),
        &[
            "python3",
            "-c",
            HTTPS_SERVER,
            BACKEND_NAMES[i],
            &port,
            cert,
            key,
        ],
        &format!("https-{}", BACKEND_NAMES[i]),
    );
    let url = format!("https://{}:{HTTPS_PORT}/healthz", BACKEND_IPS[i]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = guard.try_wait() {
            panic!(
                "the HTTPS server of {} exited ({status}): {}",
                BACKEND_NAMES[i],
                guard.log()
            );
        }
        // -k: the certificate is self-signed, as the probe expects backends' to be.
        let out = topo.exec(
            Node::Lb,
            &["curl", "-sS", "-k", "--fail", "--max-time", "1", &url],
        );
        if out.status.success() {
            return guard;
        }
        assert!(
            Instant::now() < deadline,
            "the HTTPS server of {} did not answer {url} within 10 s: {}",
            BACKEND_NAMES[i],
            String::from_utf8_lossy(&out.stderr)
        );
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn only_backends_answering_the_https_probe_get_flows() {
    let topo = Topology::build(&unique_prefix(), TopologyOptions::default());
    let _backends = topo.start_backends();

    // Issued for a name no probe uses: the probe must not care (as loxilb's does not).
    let cert = rcgen::generate_simple_self_signed(vec!["backend.invalid".to_owned()])
        .expect("a self-signed certificate");
    let cert_path = topo.scratch_dir().join("backend-cert.pem");
    let key_path = topo.scratch_dir().join("backend-key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).expect("write the certificate");
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).expect("write the key");
    let (cert_path, key_path) = (
        cert_path.to_str().expect("utf-8 path"),
        key_path.to_str().expect("utf-8 path"),
    );
    let _b1 = start_https_backend(&topo, 1, cert_path, key_path);
    let _b2 = start_https_backend(&topo, 2, cert_path, key_path);

    let oxlb = topo.start_oxlb(&[]);
    add_monitored_service(
        &topo,
        serde_json::json!({"probetype": "https", "probeport": HTTPS_PORT,
                           "probereq": "/healthz", "proberesp": "healthy"}),
    );
    let log = || oxlb.log();

    eventually(
        &topo,
        VERDICT_WITHIN,
        "b3 has no HTTPS server: requests did not all avoid it, or b1 and b2 did not both \
         take flows",
        &log,
        |names| {
            names.iter().all(|n| n != BACKEND_NAMES[2])
                && names.iter().any(|n| n == BACKEND_NAMES[0])
                && names.iter().any(|n| n == BACKEND_NAMES[1])
        },
    );
    // Still so a few probe rounds later: b1 and b2 keep passing, b3 keeps failing.
    thread::sleep(Duration::from_secs(PROBE_TIMEOUT_SECS * PROBE_RETRIES + 1));
    let later = backends_of(&topo, 12).expect("every request succeeds");
    assert!(
        later.iter().all(|n| n != BACKEND_NAMES[2]),
        "b3 took flows again without an HTTPS server: {later:?}\n{}",
        log()
    );

    let _b3 = start_https_backend(&topo, 3, cert_path, key_path);
    eventually(
        &topo,
        VERDICT_WITHIN,
        "b3 serves HTTPS now: it took no flows",
        &log,
        all_three,
    );
}
