//! oxlbctl drives a real oxlb: it runs inside the LB namespace, as an operator would on the
//! appliance, and its exit status says who said no. The commands are the README's examples.
//! Needs root; without it every test fails, saying so.

use oxlb_tests::checks::get_via_vip;
use oxlb_tests::{
    binary, unique_prefix, Node, Topology, TopologyOptions, BACKEND_IPS, BACKEND_NAMES, VIP,
    VIP_PORT,
};
use std::process::Output;

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `oxlbctl ARGS` in the LB namespace.
fn oxlbctl(topo: &Topology, args: &[&str]) -> Run {
    let bin = binary("oxlbctl");
    let mut all = vec![bin.to_str().expect("utf-8 path")];
    all.extend_from_slice(args);
    let out: Output = topo.exec(Node::Lb, &all);
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn expect(topo: &Topology, args: &[&str], code: i32) -> Run {
    let r = oxlbctl(topo, args);
    assert_eq!(
        r.code,
        Some(code),
        "oxlbctl {args:?}: stdout:\n{}\nstderr:\n{}",
        r.stdout,
        r.stderr
    );
    r
}

const ENDPOINTS: &str = "--endpoints=198.18.31.1:1,198.18.31.2:1,198.18.31.3:1";

#[test]
fn oxlbctl_creates_lists_and_deletes_a_vip_that_serves_traffic() {
    let topo = Topology::build(&unique_prefix(), TopologyOptions::default());
    let _backends = topo.start_backends();
    let oxlb = topo.start_oxlb(&[]);
    let diag = || format!("oxlb output:\n{}", oxlb.log());

    let status = expect(&topo, &["get", "status"], 0);
    assert_eq!(status.stdout.trim(), "status: ok");

    let created = expect(
        &topo,
        &[
            "create",
            "lb",
            "198.18.100.1",
            "--tcp=2020:8080",
            ENDPOINTS,
            "--name",
            "web",
        ],
        0,
    );
    assert_eq!(
        created.stdout.trim(),
        "create lb 198.18.100.1:2020/tcp: Success"
    );

    let table = expect(&topo, &["get", "lb"], 0).stdout;
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2 + BACKEND_IPS.len(), "{table}");
    assert!(
        lines[0].contains("EXT IP") && lines[0].contains("ENDPOINT"),
        "{table}"
    );
    let first: Vec<&str> = lines[2].split('|').map(str::trim).collect();
    assert_eq!(
        first[1..10],
        [
            VIP,
            "2020",
            "tcp",
            "web",
            "dnat",
            "rr",
            BACKEND_IPS[0],
            "8080",
            "1"
        ],
        "{table}"
    );
    for (line, ip) in lines[2..].iter().zip(BACKEND_IPS) {
        assert!(line.contains(ip), "{table}");
    }

    let json = expect(&topo, &["-o", "json", "get", "lb"], 0).stdout;
    let v: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("not JSON ({e}): {json}"));
    let args = &v["lbAttr"][0]["serviceArguments"];
    assert_eq!(
        (&args["externalIP"], &args["port"], &args["protocol"]),
        (&VIP.into(), &VIP_PORT.into(), &"tcp".into()),
        "{json}"
    );
    assert_eq!(
        v["lbAttr"][0]["endpoints"].as_array().map(Vec::len),
        Some(3)
    );

    let a = get_via_vip(&topo, &diag);
    assert!(BACKEND_NAMES.contains(&a.backend.as_str()), "{a:?}");

    let deleted = expect(&topo, &["delete", "lb", "198.18.100.1", "--tcp=2020"], 0);
    assert_eq!(
        deleted.stdout.trim(),
        "delete lb 198.18.100.1:2020/tcp: Success"
    );
    let json = expect(&topo, &["-o", "json", "get", "lb"], 0).stdout;
    assert!(!json.contains(VIP), "still listed after delete: {json}");
    let after = topo.http_get(Node::Client, &format!("http://{VIP}:{VIP_PORT}/"), 2);
    assert!(
        after.is_err(),
        "the VIP still answers after delete: {after:?}"
    );

    // Deleting what is not there: the appliance's 404, shown as it said it.
    let gone = expect(&topo, &["delete", "lb", "198.18.100.1", "--tcp=2020"], 1);
    assert!(
        gone.stderr.contains("HTTP 404") && gone.stderr.contains("no load-balancer rule"),
        "{}",
        gone.stderr
    );
}

#[test]
fn oxlbctl_exit_status_says_who_refused() {
    let topo = Topology::build(&unique_prefix(), TopologyOptions::default());
    let _oxlb = topo.start_oxlb(&[]);

    // Port 0: the appliance refuses (400), its message is shown.
    let r = expect(
        &topo,
        &["create", "lb", "198.18.100.1", "--tcp=0:8080", ENDPOINTS],
        1,
    );
    assert!(
        r.stderr.contains("HTTP 400") && r.stderr.contains("serviceArguments.port 0"),
        "{}",
        r.stderr
    );
    // The same refusal for scripts: the appliance's JSON error on stdout.
    let r = expect(
        &topo,
        &[
            "-o",
            "json",
            "create",
            "lb",
            "198.18.100.1",
            "--tcp=0:8080",
            ENDPOINTS,
        ],
        1,
    );
    let err: serde_json::Value = serde_json::from_str(r.stdout.trim())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.stdout));
    assert_eq!(err["code"], 400, "{}", r.stdout);

    // A mode the appliance does not implement is sent anyway; its answer says so.
    let r = expect(
        &topo,
        &[
            "create",
            "lb",
            "198.18.100.1",
            "--tcp=2020:8080",
            ENDPOINTS,
            "--mode",
            "fullproxy",
        ],
        1,
    );
    assert!(r.stderr.contains("mode 4"), "{}", r.stderr);

    // Usage errors never reach the appliance.
    expect(
        &topo,
        &["create", "lb", "198.18.100.1", "--tcp=2020:8080"],
        2,
    );
    expect(
        &topo,
        &["create", "lb", "198.18.100.1", "--tcp=x:8080", ENDPOINTS],
        2,
    );

    // Nothing listens on port 1: the appliance cannot be reached.
    let r = expect(&topo, &["--api", "http://127.0.0.1:1", "get", "lb"], 3);
    assert!(
        r.stderr.contains("cannot reach the appliance"),
        "{}",
        r.stderr
    );

    // None of the refused requests changed anything.
    let json = expect(&topo, &["-o", "json", "get", "lb"], 0).stdout;
    let v: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(v["lbAttr"].as_array().map(Vec::len), Some(0), "{json}");

    expect(&topo, &["delete", "lb", "--all"], 0);
}
