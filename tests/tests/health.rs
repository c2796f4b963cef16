//! End-to-end health probes: a monitored service stops sending new flows to a backend that
//! stopped answering its TCP probe, and sends them again once it is back.

use oxlb_tests::health::{add_monitored_service, backends_of, eventually};
use oxlb_tests::{
    unique_prefix, Node, Topology, TopologyOptions, BACKEND_IPS, BACKEND_NAMES, BACKEND_PORT, VIP,
    VIP_PORT,
};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdout, Stdio};
use std::thread;
use std::time::{Duration, Instant};

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

/// A client in the client namespace holding one download through the VIP: it reads 1 MB,
/// says `started`, waits for a line on stdin, then reads on (slowly with `slow`, 64 KB per
/// 10 ms, so that the download is still running when oxlb notices the endpoint is down) and
/// says how the connection ended: `reset N`, `closed N` (N bytes read in all) or `timeout N`.
const HOLDING_CLIENT: &str = r#"
import socket, sys, time
host, port, pace = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.create_connection((host, port), timeout=10)
s.sendall(b"GET /blob?size=50000000 HTTP/1.1\r\nHost: vip\r\n\r\n")
got = 0
while got < 1000000:
    d = s.recv(65536)
    if not d:
        break
    got += len(d)
print("started", got, flush=True)
sys.stdin.readline()
try:
    while True:
        d = s.recv(65536)
        if not d:
            print("closed", got, flush=True)
            break
        got += len(d)
        if pace == "slow":
            time.sleep(0.01)
except ConnectionResetError:
    print("reset", got, flush=True)
except socket.timeout:
    print("timeout", got, flush=True)
"#;

/// The port b1's health probe is sent to, served by a listener of its own so that the probe
/// can fail while b1 keeps serving its connections.
const PROBE_PORT: u16 = 9090;

/// Creates (or replaces) the VIP's rule over b1 alone, monitored by a TCP probe of
/// PROBE_PORT, with `onEndpointDown` = `policy`.
fn add_probed_rule(topo: &Topology, policy: &str) {
    let body = serde_json::json!({
        "serviceArguments": {
            "externalIP": VIP, "port": VIP_PORT, "protocol": "tcp", "name": "ends",
            "monitor": true, "probetype": "tcp", "probeport": PROBE_PORT,
            "probeTimeout": 1, "probeRetries": 2, "onEndpointDown": policy,
        },
        "endpoints": [{"endpointIP": BACKEND_IPS[0], "targetPort": BACKEND_PORT, "weight": 1}],
    })
    .to_string();
    let (status, answer) = topo.api("POST", "/netlox/v1/config/loadbalancer", Some(&body));
    assert_eq!(status, 200, "creating the rule failed: {answer}");
}

/// Waits (at most 15 s) until the endpoint listing reports b1 in state `state`.
fn wait_for_b1(topo: &Topology, state: &str, log: &dyn Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let want = format!(r#""currState":"{state}""#);
    loop {
        let (_, body) = topo.api("GET", "/netlox/v1/config/endpoint/all", None);
        if body.contains(&want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "b1 never became {state}: {body}\n{}",
            log()
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// The holding client, killed (by PID) if the test ends before it does.
struct HoldingClient {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl HoldingClient {
    fn start(topo: &Topology, pace: &str) -> HoldingClient {
        let port = VIP_PORT.to_string();
        let mut child = topo
            .ns(Node::Client)
            .command(&["python3", "-c", HOLDING_CLIENT, VIP, &port, pace])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the holding client");
        let out = BufReader::new(child.stdout.take().expect("piped stdout"));
        HoldingClient { child, out }
    }

    /// The client's next line; its socket timeouts bound the wait.
    fn line(&mut self) -> String {
        let mut line = String::new();
        self.out
            .read_line(&mut line)
            .expect("read the client's output");
        line.trim().to_owned()
    }

    fn go_on(&mut self) {
        let stdin = self.child.stdin.as_mut().expect("piped stdin");
        stdin.write_all(b"go\n").expect("tell the client to go on");
    }
}

impl Drop for HoldingClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn established_flows_to_a_backend_failing_its_probe_end_with_reset_and_continue_with_keep() {
    let topo = Topology::build(&unique_prefix(), TopologyOptions::default());
    let _backends = topo.start_backends();
    let oxlb = topo.start_oxlb(&[]);
    let log = || oxlb.log();
    let start_probe_listener = || {
        topo.start_testpeer(
            Node::Backend(1),
            "b1-probe",
            PROBE_PORT,
            Node::Lb,
            BACKEND_IPS[0],
        )
    };

    // reset: the download's next window update after b1 goes down is answered with a RST.
    let mut listener = start_probe_listener();
    add_probed_rule(&topo, "reset");
    wait_for_b1(&topo, "ok", &log);
    let mut client = HoldingClient::start(&topo, "slow");
    let started = client.line();
    assert!(started.starts_with("started"), "{started}\n{}", log());
    listener.stop();
    wait_for_b1(&topo, "nok", &log);
    client.go_on();
    let ended = client.line();
    assert!(ended.starts_with("reset"), "with reset: {ended}\n{}", log());
    let metrics = topo.api("GET", "/metrics", None).1;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("oxlb_flows_ended_endpoint_down_total") && !l.ends_with(" 0")),
        "no flow counted as ended: {metrics}"
    );
    drop(client);

    // keep (the same rule replaced, b1 up again): the download completes while b1 is down.
    let _listener = start_probe_listener();
    add_probed_rule(&topo, "keep");
    wait_for_b1(&topo, "ok", &log);
    let mut client = HoldingClient::start(&topo, "fast");
    let started = client.line();
    assert!(started.starts_with("started"), "{started}\n{}", log());
    drop(_listener);
    wait_for_b1(&topo, "nok", &log);
    client.go_on();
    let ended = client.line();
    let bytes: u64 = ended
        .strip_prefix("closed ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("with keep: {ended}\n{}", log()));
    assert!(bytes >= 50_000_000, "with keep: only {bytes} bytes");
}
