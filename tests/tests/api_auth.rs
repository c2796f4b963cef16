//! The API's bearer token and HTTPS against a real oxlb listening on the LB namespace's own
//! address, the refusal to listen there without a token, and the status call and endpoint
//! listing following a backend that stops answering its probe. Needs root.

use oxlb_tests::health::add_monitored_service;
use oxlb_tests::{
    binary, oxlb_binary, unique_prefix, ApiAccess, Node, Topology, TopologyOptions, BACKEND_IPS,
    BACKEND_PORT, LB_CLIENT_SIDE_IP, VIP, VIP_PORT,
};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

/// oxlb's API on the LB's client-side address: reachable from other hosts, so it needs a token.
fn api_on_lb() -> String {
    format!("{LB_CLIENT_SIDE_IP}:11111")
}

/// Writes `content` to `dir/name`, readable by its owner only, as a secret should be.
fn write_private(dir: &Path, name: &str, content: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// A test CA and a server certificate for the LB's address signed by it, written to `dir`:
/// (CA certificate, server certificate, server key).
fn write_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "oxlb api_auth test CA");
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let key = KeyPair::generate().expect("server key");
    let cert = CertificateParams::new(vec![LB_CLIENT_SIDE_IP.to_owned()])
        .expect("server params")
        .signed_by(&key, &ca, &ca_key)
        .expect("server certificate");
    (
        write_private(dir, "ca.pem", &ca.pem()),
        write_private(dir, "cert.pem", &cert.pem()),
        write_private(dir, "key.pem", &key.serialize_pem()),
    )
}

/// A token nobody guesses across runs; its exact randomness does not matter to the test.
fn fresh_token() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("oxlb-test-{:x}-{nanos:x}", std::process::id())
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `oxlbctl ARGS` in the LB namespace with `OXLB_TOKEN_FILE` set to `token_env` (or unset).
fn oxlbctl(topo: &Topology, token_env: Option<&Path>, args: &[&str]) -> Run {
    let bin = binary("oxlbctl");
    let mut all = vec![bin.to_str().expect("utf-8 path")];
    all.extend_from_slice(args);
    let mut cmd = topo.ns(Node::Lb).command(&all);
    match token_env {
        Some(p) => cmd.env("OXLB_TOKEN_FILE", p),
        None => cmd.env_remove("OXLB_TOKEN_FILE"),
    };
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run oxlbctl");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn expect_code(run: Run, code: i32, what: &str) -> Run {
    assert_eq!(
        run.code,
        Some(code),
        "{what}: stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    run
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn vip_body() -> String {
    serde_json::json!({
        "serviceArguments": {"externalIP": VIP, "port": VIP_PORT, "protocol": "tcp", "name": "auth"},
        "endpoints": [{"endpointIP": BACKEND_IPS[0], "targetPort": BACKEND_PORT, "weight": 1}],
    })
    .to_string()
}

#[test]
fn the_api_on_the_lb_address_needs_the_token_over_https_and_oxlbctl_sends_it() {
    let topo = Topology::build(&unique_prefix(), TopologyOptions::default());
    let dir = topo.scratch_dir().to_path_buf();
    let token = fresh_token();
    let token_file = write_private(&dir, "token", &format!("{token}\n"));
    let wrong_file = write_private(&dir, "wrong-token", "not-the-token-of-this-appliance\n");
    let (ca, cert, key) = write_pki(&dir);
    let base = format!("https://{}", api_on_lb());
    let with_token = ApiAccess {
        base: base.clone(),
        token: Some(token.clone()),
        ca_file: Some(ca.clone()),
    };
    let api = api_on_lb();
    let oxlb = topo.start_oxlb_with(
        &[
            "--api",
            &api,
            "--api-token-file",
            token_file.to_str().unwrap(),
            "--api-tls-cert",
            cert.to_str().unwrap(),
            "--api-tls-key",
            key.to_str().unwrap(),
        ],
        &with_token,
    );
    let diag = || format!("oxlb output:\n{}", oxlb.log());

    let without = ApiAccess {
        token: None,
        ..with_token.clone()
    };
    let wrong = ApiAccess {
        token: Some("not-the-token-of-this-appliance".into()),
        ..with_token.clone()
    };
    for (who, access) in [("no token", &without), ("a wrong token", &wrong)] {
        for path in ["/netlox/v1/", "/netlox/v1/config/loadbalancer/all"] {
            let (status, body) = topo.api_with(access, "GET", path, None);
            assert_eq!(status, 401, "GET {path} with {who}: {body}\n{}", diag());
            let message = json(&body)["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            assert!(message.contains("token"), "{who}: {message}");
        }
        let (status, body) = topo.api_with(
            access,
            "POST",
            "/netlox/v1/config/loadbalancer",
            Some(&vip_body()),
        );
        assert_eq!(status, 401, "POST with {who}: {body}");
    }
    let (status, body) = topo.api_with(
        &with_token,
        "GET",
        "/netlox/v1/config/loadbalancer/all",
        None,
    );
    assert_eq!(status, 200, "{body}\n{}", diag());
    assert_eq!(
        json(&body)["lbAttr"].as_array().map_or(0, Vec::len),
        0,
        "a refused POST changed the rules: {body}"
    );

    // HTTPS only: the same port answers nothing to plain HTTP.
    let plain = ApiAccess {
        base: format!("http://{}", api_on_lb()),
        ca_file: None,
        ..with_token.clone()
    };
    assert_eq!(topo.api_with(&plain, "GET", "/netlox/v1/", None).0, 0);

    let (status, body) = topo.api_with(
        &with_token,
        "POST",
        "/netlox/v1/config/loadbalancer",
        Some(&vip_body()),
    );
    assert_eq!(status, 200, "{body}\n{}", diag());

    let ca_s = ca.to_str().unwrap();
    let token_s = token_file.to_str().unwrap();
    let listed = expect_code(
        oxlbctl(
            &topo,
            None,
            &[
                "--api",
                &base,
                "--ca-file",
                ca_s,
                "--token-file",
                token_s,
                "get",
                "lb",
            ],
        ),
        0,
        "oxlbctl get lb over https with the token",
    );
    assert!(listed.stdout.contains(VIP), "{}", listed.stdout);

    let status = expect_code(
        oxlbctl(
            &topo,
            Some(&token_file),
            &[
                "--api",
                &base,
                "--ca-file",
                ca_s,
                "-o",
                "json",
                "get",
                "status",
                "--detail",
            ],
        ),
        0,
        "oxlbctl get status --detail with OXLB_TOKEN_FILE",
    );
    let status = json(&status.stdout);
    assert_eq!(status["services"], 1, "{status}");
    assert_eq!(
        status["interfaces"],
        serde_json::json!(["lb0", "lb1"]),
        "{status}"
    );

    let refused = expect_code(
        oxlbctl(
            &topo,
            None,
            &["--api", &base, "--ca-file", ca_s, "get", "lb"],
        ),
        1,
        "oxlbctl without a token",
    );
    assert!(
        refused.stderr.contains("--token-file"),
        "{}",
        refused.stderr
    );
    let refused = expect_code(
        oxlbctl(
            &topo,
            Some(&wrong_file),
            &["--api", &base, "--ca-file", ca_s, "get", "lb"],
        ),
        1,
        "oxlbctl with a wrong token",
    );
    assert!(
        refused.stderr.contains("was not accepted"),
        "{}",
        refused.stderr
    );
    let untrusted = expect_code(
        oxlbctl(&topo, Some(&token_file), &["--api", &base, "get", "lb"]),
        3,
        "oxlbctl without --ca-file",
    );
    assert!(
        untrusted.stderr.contains("--ca-file"),
        "{}",
        untrusted.stderr
    );

    oxlb.stop();
}

/// Runs `oxlb run ARGS` in the LB namespace, bounded by `timeout`, and returns its exit code
/// and stderr: these starts must fail before touching anything.
fn failed_start(topo: &Topology, args: &[&str]) -> (Option<i32>, String) {
    let bin = oxlb_binary();
    let state = topo.scratch_dir().join("state");
    let mut all = vec![
        "timeout",
        "20",
        bin.to_str().expect("utf-8 path"),
        "run",
        "--iface",
        "lb0",
        "--iface",
        "lb1",
        "--state-dir",
        state.to_str().expect("utf-8 path"),
    ];
    all.extend_from_slice(args);
    let out = topo.exec(Node::Lb, &all);
    let code = out.status.code();
    assert_ne!(
        code,
        Some(124),
        "oxlb {args:?} ran instead of refusing to start"
    );
    assert_ne!(code, Some(0), "oxlb {args:?} exited 0");
    (code, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn starting_on_a_non_loopback_address_without_a_token_file_fails_saying_how_to_fix_it() {
    let topo = Topology::build(&unique_prefix(), TopologyOptions::default());
    let api = api_on_lb();
    let (_, stderr) = failed_start(&topo, &["--api", &api]);
    assert!(
        stderr.contains("--api-token-file") && stderr.contains(&api),
        "{stderr}"
    );
    let (_, stderr) = failed_start(&topo, &["--api", &format!("0.0.0.0:{}", 11111)]);
    assert!(stderr.contains("--api-token-file"), "{stderr}");

    // TLS files: both or neither, and unreadable ones are named.
    let (code, stderr) = failed_start(&topo, &["--api-tls-cert", "/nonexistent/cert.pem"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--api-tls-key"), "{stderr}");
    let (_, stderr) = failed_start(
        &topo,
        &[
            "--api-tls-cert",
            "/nonexistent/cert.pem",
            "--api-tls-key",
            "/nonexistent/key.pem",
        ],
    );
    assert!(stderr.contains("/nonexistent/cert.pem"), "{stderr}");
    let (_, stderr) = failed_start(&topo, &["--api-token-file", "/nonexistent/token"]);
    assert!(stderr.contains("/nonexistent/token"), "{stderr}");
}

/// The endpoint listing's entry for `host`, polling (bounded by `limit`) until its state is
/// `want`; panics with the last listing otherwise.
fn wait_for_endpoint_state(topo: &Topology, host: &str, want: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    while Instant::now() < deadline {
        let (status, body) = topo.api("GET", "/netlox/v1/config/endpoint/all", None);
        if status == 200 {
            let list = json(&body);
            let entry = list["Attr"]
                .as_array()
                .and_then(|a| a.iter().find(|e| e["hostName"] == host).cloned());
            if let Some(e) = entry.filter(|e| e["currState"] == want) {
                return e;
            }
        }
        last = body;
        thread::sleep(Duration::from_millis(200));
    }
    panic!("{host} did not become {want} within {limit:?}; last listing: {last}");
}

#[test]
fn the_status_call_and_the_endpoint_listing_follow_a_stopped_backend() {
    let topo = Topology::build(&unique_prefix(), TopologyOptions::default());
    let mut backends = topo.start_backends();
    let oxlb = topo.start_oxlb(&[]);
    let diag = || format!("oxlb output:\n{}", oxlb.log());

    let (status, body) = topo.api("GET", "/netlox/v1/status", None);
    assert_eq!(status, 200, "{body}\n{}", diag());
    let s = json(&body);
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"), "{s}");
    assert_eq!(s["interfaces"], serde_json::json!(["lb0", "lb1"]), "{s}");
    assert!(s["workers"].as_u64().unwrap_or(0) >= 1, "{s}");
    assert!(s["uptimeSeconds"].is_u64(), "{s}");
    assert_eq!(s["services"], 0, "{s}");

    // A TCP probe every second, down after two misses.
    add_monitored_service(&topo, serde_json::json!({"probetype": "tcp"}));
    assert_eq!(
        json(&topo.api("GET", "/netlox/v1/status", None).1)["services"],
        1
    );

    let (_, listing) = topo.api("GET", "/netlox/v1/config/endpoint/all", None);
    let list = json(&listing);
    let entries = list["Attr"].as_array().expect("an Attr array");
    assert_eq!(entries.len(), BACKEND_IPS.len(), "{listing}");
    for (e, ip) in entries.iter().zip(BACKEND_IPS) {
        assert_eq!(e["hostName"], ip, "{listing}");
        assert_eq!(e["name"], format!("{ip}_tcp_{BACKEND_PORT}"), "{listing}");
        assert_eq!(e["probeType"], "tcp", "{listing}");
        assert_eq!(e["probePort"], BACKEND_PORT, "{listing}");
        assert_eq!(e["currState"], "ok", "{listing}");
    }

    backends[1].stop();
    wait_for_endpoint_state(&topo, BACKEND_IPS[1], "nok", Duration::from_secs(10));
    wait_for_endpoint_state(&topo, BACKEND_IPS[0], "ok", Duration::from_secs(1));

    let table = expect_code(oxlbctl(&topo, None, &["get", "ep"]), 0, "oxlbctl get ep").stdout;
    let row = table
        .lines()
        .find(|l| l.contains(BACKEND_IPS[1]))
        .unwrap_or_else(|| panic!("no row for {}: {table}", BACKEND_IPS[1]));
    assert!(row.contains("| nok "), "{table}");
    let listed = expect_code(
        oxlbctl(&topo, None, &["-o", "json", "get", "ep"]),
        0,
        "oxlbctl -o json get ep",
    );
    assert_eq!(
        json(&listed.stdout)["Attr"].as_array().map(Vec::len),
        Some(3)
    );

    let _b2 = topo.start_testpeer(
        Node::Backend(2),
        "b2",
        BACKEND_PORT,
        Node::Lb,
        BACKEND_IPS[1],
    );
    wait_for_endpoint_state(&topo, BACKEND_IPS[1], "ok", Duration::from_secs(10));
}
