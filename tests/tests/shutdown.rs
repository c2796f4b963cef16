//! oxlb's life cycle as an operator drives it: a graceful stop under traffic (exit 0 within a
//! bound, the API closed, no XDP program left, a restart serving the saved services), a change
//! in flight at SIGTERM that is still answered and saved, and the log filter changed while
//! oxlb runs, with JSON log lines. Needs root; without it the tests fail, saying so.

use oxlb_tests::checks::{self, get_via_vip};
use oxlb_tests::{
    binary, in_netns, unique_prefix, vip_request_body, Node, OxlbGuard, Topology, TopologyOptions,
    API_ADDR, VIP,
};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Output;
use std::thread;
use std::time::{Duration, Instant};

/// From SIGTERM to exit: the API drain (3 s) is the longest step and is not needed here, as
/// no request is left open; workers, XDP and the rest take well under a second.
const STOP_BOUND: Duration = Duration::from_secs(4);

/// True if `ip -j link show dev IF` in the LB namespace reports an XDP program.
fn xdp_attached(topo: &Topology, dev: &str) -> bool {
    let out = topo.exec_ok(Node::Lb, &["ip", "-j", "link", "show", "dev", dev]);
    let links: serde_json::Value = serde_json::from_str(&out).expect("ip -j output");
    links
        .as_array()
        .is_some_and(|l| l.iter().any(|link| link.get("xdp").is_some()))
}

/// The services a running oxlb lists, as `IP:PORT/PROTO`.
fn listed(topo: &Topology) -> Vec<String> {
    let (status, body) = topo.api("GET", "/netlox/v1/config/loadbalancer/all", None);
    assert_eq!(status, 200, "listing: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("listing is JSON");
    v["lbAttr"]
        .as_array()
        .expect("lbAttr")
        .iter()
        .map(|e| {
            let a = &e["serviceArguments"];
            format!(
                "{}:{}/{}",
                a["externalIP"].as_str().unwrap_or_default(),
                a["port"],
                a["protocol"].as_str().unwrap_or_default()
            )
        })
        .collect()
}

/// Sends SIGTERM to oxlb without waiting for it (the guard's `stop` waits).
fn sigterm(oxlb: &OxlbGuard) {
    let pid = libc::pid_t::try_from(oxlb.pid()).expect("pid fits pid_t");
    // SAFETY: kill has no memory-safety preconditions; `pid` is the harness's own child,
    // which is not reaped before its guard stops it, so the PID cannot have been reused.
    let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
}

/// Panics unless every `needle` occurs in `log`, in this order.
fn assert_in_order(log: &str, needles: &[&str]) {
    let mut from = 0;
    for n in needles {
        match log[from..].find(n) {
            Some(at) => from += at + n.len(),
            None => {
                panic!("{n:?} missing from oxlb's output (or out of order {needles:?}):\n{log}")
            }
        }
    }
}

#[test]
fn a_graceful_stop_during_a_download_exits_0_promptly_and_a_restart_serves_the_saved_vip() {
    let topo = Topology::build(&unique_prefix(), TopologyOptions::default());
    let _backends = topo.start_backends();
    let oxlb = topo.start_oxlb(&[]);
    let diag = || format!("oxlb output:\n{}", oxlb.log());
    topo.add_vip("tcp");
    get_via_vip(&topo, &diag);

    // About 16 s at this rate: the flow is busy in both directions when SIGTERM comes.
    let (download, file) = checks::start_slow_download(
        &topo,
        "shutdown-blob.bin",
        64 * 1024 * 1024,
        "4M",
        30,
        &diag,
    );

    let started = Instant::now();
    let log_before = oxlb.log();
    let status = OxlbGuard::stop(oxlb);
    let took = started.elapsed();
    // `stop` returns only once the process is reaped, so its output is complete.
    let log = std::fs::read_to_string(topo.scratch_dir().join("oxlb.log")).unwrap_or(log_before);
    assert_eq!(
        status.code(),
        Some(0),
        "oxlb did not exit 0 on SIGTERM:\n{log}"
    );
    assert!(took < STOP_BOUND, "oxlb took {took:?} to stop:\n{log}");
    assert_in_order(
        &log,
        &[
            "SIGTERM received",
            "API closed",
            "totals:",
            "worker(s) drained and stopped",
            "stopped; XDP program detached",
        ],
    );
    for dev in ["lb0", "lb1"] {
        assert!(
            !xdp_attached(&topo, dev),
            "XDP still attached to {dev}:\n{log}"
        );
    }
    let (status, body) = topo.api("GET", "/netlox/v1/", None);
    assert_eq!(status, 0, "the API still answers after the stop: {body}");
    drop(download);
    let _ = std::fs::remove_file(&file);

    let oxlb = topo.start_oxlb(&[]);
    let diag = || format!("oxlb output:\n{}", oxlb.log());
    assert_eq!(listed(&topo), [format!("{VIP}:2020/tcp")], "{}", diag());
    get_via_vip(&topo, &diag);
    let status = OxlbGuard::stop(oxlb);
    assert_eq!(status.code(), Some(0), "the second instance did not exit 0");
}

#[test]
fn a_change_in_flight_at_sigterm_is_answered_and_saved_while_new_connections_are_refused() {
    let topo = Topology::build(&unique_prefix(), TopologyOptions::default());
    let oxlb = topo.start_oxlb(&[]);
    let lb = topo.ns(Node::Lb).name().to_owned();

    let body = vip_request_body("tcp");
    let (head, tail) = body.split_at(body.len() / 2);
    let request = format!(
        "POST /netlox/v1/config/loadbalancer HTTP/1.1\r\nHost: {API_ADDR}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{head}",
        body.len()
    );
    // The socket is made in the LB namespace and keeps to it, whichever thread uses it.
    let mut stream = in_netns(&lb, move || {
        let mut s = TcpStream::connect(API_ADDR).expect("connect to the API");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(request.as_bytes())
            .expect("send the first half");
        s
    });
    // Time for oxlb to read the head: the request is then in flight, waiting for its body.
    thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    sigterm(&oxlb);

    let refused_by = Instant::now() + Duration::from_secs(2);
    let refused = in_netns(&lb, move || loop {
        if TcpStream::connect(API_ADDR).is_err() {
            return true;
        }
        if Instant::now() >= refused_by {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    });
    assert!(
        refused,
        "new API connections were still accepted 2 s after SIGTERM:\n{}",
        oxlb.log()
    );

    stream
        .write_all(tail.as_bytes())
        .expect("send the second half");
    let mut answer = String::new();
    // oxlb closes the connection after this last answer, which ends the read.
    stream.read_to_string(&mut answer).expect("read the answer");
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "the change in flight was not answered 200: {answer:?}\n{}",
        oxlb.log()
    );
    assert!(answer.contains("Success"), "{answer}");

    let status = OxlbGuard::stop(oxlb);
    let log = std::fs::read_to_string(topo.scratch_dir().join("oxlb.log")).unwrap_or_default();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(
        started.elapsed() < STOP_BOUND,
        "SIGTERM to exit took {:?}:\n{log}",
        started.elapsed()
    );
    assert_in_order(&log, &["SIGTERM received", "created", "API closed"]);

    let oxlb = topo.start_oxlb(&[]);
    assert_eq!(
        listed(&topo),
        [format!("{VIP}:2020/tcp")],
        "the change answered during the stop was not saved:\n{}",
        oxlb.log()
    );
}

#[test]
fn a_request_that_never_finishes_holds_the_stop_up_only_for_the_drain_bound() {
    let topo = Topology::build(&unique_prefix(), TopologyOptions::default());
    let oxlb = topo.start_oxlb(&[]);
    let lb = topo.ns(Node::Lb).name().to_owned();
    // A head announcing a body that never comes: a stuck or malicious client.
    let stream = in_netns(&lb, || {
        let mut s = TcpStream::connect(API_ADDR).expect("connect to the API");
        s.write_all(
            b"POST /netlox/v1/config/loadbalancer HTTP/1.1\r\nHost: x\r\n\
              Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{",
        )
        .expect("send the head");
        s
    });
    thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let status = OxlbGuard::stop(oxlb);
    let took = started.elapsed();
    drop(stream);
    let log = std::fs::read_to_string(topo.scratch_dir().join("oxlb.log")).unwrap_or_default();
    assert_eq!(status.code(), Some(0), "{log}");
    // The API drain is 3 s; `stop` itself allows 5 s before SIGKILL.
    assert!(
        took >= Duration::from_millis(2500),
        "oxlb stopped after {took:?}: it did not wait for the request in flight:\n{log}"
    );
    assert_in_order(
        &log,
        &[
            "SIGTERM received",
            "still unfinished",
            "stopped; XDP program detached",
        ],
    );
}

/// Runs `oxlbctl ARGS` in the LB namespace.
fn oxlbctl(topo: &Topology, args: &[&str]) -> Output {
    let bin = binary("oxlbctl");
    let mut all = vec![bin.to_str().expect("utf-8 path")];
    all.extend_from_slice(args);
    topo.exec(Node::Lb, &all)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

/// oxlb's output as JSON lines; panics on a line that is not one.
fn json_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}"))
        })
        .collect()
}

fn messages(lines: &[serde_json::Value]) -> Vec<&str> {
    lines
        .iter()
        .map(|l| l["message"].as_str().unwrap_or_default())
        .collect()
}

#[test]
fn the_log_filter_changes_at_run_time_and_json_lines_carry_structured_fields() {
    let topo = Topology::build(&unique_prefix(), TopologyOptions::default());
    let oxlb = topo.start_oxlb(&["--log-format", "json"]);

    let lines = json_lines(&oxlb.log());
    let serving = lines
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("worker(s)"))
        })
        .unwrap_or_else(|| panic!("no serving line:\n{}", oxlb.log()));
    assert_eq!(serving["level"], "INFO", "{serving}");
    assert_eq!(
        serving["workers"], 1,
        "the worker count is not a field: {serving}"
    );

    let got = oxlbctl(&topo, &["get", "loglevel"]);
    assert_eq!(
        stdout(&got),
        "loglevel: info,netlink_packet_route=error",
        "{got:?}"
    );

    // At warn, a created rule (an info line of the API) is not logged...
    let set = oxlbctl(&topo, &["set", "loglevel", "warn"]);
    assert_eq!(
        (set.status.code(), stdout(&set)),
        (Some(0), "loglevel: warn".into()),
        "{set:?}"
    );
    topo.add_vip("tcp");
    // ...and back at info, a deleted one is.
    let set = oxlbctl(&topo, &["-o", "json", "set", "loglevel", "info"]);
    let answer: serde_json::Value = serde_json::from_str(&stdout(&set)).expect("JSON answer");
    assert_eq!(answer, serde_json::json!({"filter": "info"}));
    let (status, body) = topo.delete_vip("tcp");
    assert_eq!(status, 200, "{body}");

    let bad = oxlbctl(&topo, &["set", "loglevel", "info,oxlb=loud"]);
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("HTTP 400") && stderr.contains("oxlb=loud"),
        "{stderr}"
    );
    assert_eq!(
        stdout(&oxlbctl(&topo, &["get", "loglevel"])),
        "loglevel: info"
    );

    let status = OxlbGuard::stop(oxlb);
    let log = std::fs::read_to_string(topo.scratch_dir().join("oxlb.log")).unwrap_or_default();
    assert_eq!(status.code(), Some(0), "{log}");
    let lines = json_lines(&log);
    let said = messages(&lines);
    assert!(
        !said.iter().any(|m| m.contains("2020/tcp created")),
        "an info line was logged at warn:\n{log}"
    );
    assert!(said.iter().any(|m| m.contains("2020/tcp deleted")), "{log}");
    assert!(said.iter().any(|m| m.starts_with("totals:")), "{log}");
    assert!(said.contains(&"stopped; XDP program detached"), "{log}");
}
