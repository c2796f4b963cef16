//! The demo: builds the test topology (prefix `oxdemo`), starts three backends and oxlb, creates
//! a VIP over the REST API and shows round robin, client-address preservation and a 10 MB
//! transfer through it. Removes everything it created, also on failure or Ctrl-C.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use oxlb_tests::{
    blob::blob_bytes, checks, parse_answer, require_root, vip_request_body, Node, Topology,
    TopologyOptions, API_ADDR, VIP, VIP_PORT,
};

const PREFIX: &str = "oxdemo";
const BLOB_SIZE: usize = 10 * 1024 * 1024;

/// Set by SIGINT/SIGTERM; the demo checks it between steps and unwinds through its guards.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

fn check_interrupted() -> Result<(), String> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        Err("interrupted".to_string())
    } else {
        Ok(())
    }
}

fn main() -> ExitCode {
    require_root();
    install_signal_handlers();
    // Panics (failed setup steps) unwind too, so the guards inside `demo` still clean up.
    let result = std::panic::catch_unwind(demo);
    println!("cleaned up: namespaces {PREFIX}-*, backends and oxlb stopped");
    match result {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("demo failed: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("demo failed (see the message above)");
            ExitCode::FAILURE
        }
    }
}

fn demo() -> Result<(), String> {
    println!("== topology {PREFIX}-{{client,lb,sw,b1,b2,b3}}");
    println!("   client 198.18.0.2 --- lb0 198.18.0.1 [oxlb] lb1 198.18.31.254 --- br0 --- b1 b2 b3 (198.18.31.1-3:8080)");
    let topo = Topology::build(PREFIX, TopologyOptions::default());
    check_interrupted()?;

    println!("== starting backends b1 b2 b3 (oxlb-testpeer serve, port 8080)");
    let _backends = topo.start_backends();
    check_interrupted()?;

    println!("== starting oxlb in {PREFIX}-lb: oxlb run --iface lb0 --iface lb1");
    let oxlb = topo.start_oxlb(&[]);
    println!(
        "   API ready on http://{API_ADDR}/netlox/v1/ (pid {})",
        oxlb.pid()
    );
    check_interrupted()?;

    println!("== creating the VIP {VIP}:{VIP_PORT}/tcp -> b1 b2 b3 :8080, round robin");
    let body = vip_request_body("tcp");
    println!(
        "   $ ip netns exec {PREFIX}-lb curl -X POST http://{API_ADDR}/netlox/v1/config/loadbalancer \\\n       -H 'Content-Type: application/json' -d '{body}'"
    );
    let (status, reply) = topo.api("POST", "/netlox/v1/config/loadbalancer", Some(&body));
    println!("   -> HTTP {status} {}", reply.trim());
    if !(200..300).contains(&status) {
        return Err(format!("the API refused the VIP: HTTP {status}"));
    }
    check_interrupted()?;

    let url = format!("http://{VIP}:{VIP_PORT}/");
    println!("== 12 requests from the client to {url}");
    for i in 1..=12 {
        check_interrupted()?;
        match topo.http_get(Node::Client, &url, 5) {
            Ok(body) => {
                let a = parse_answer(&body);
                println!(
                    "   request {i:2} -> {} (saw client {}:{})",
                    a.backend, a.peer_ip, a.peer_port
                );
            }
            Err(e) => println!("   request {i:2} -> FAILED: {e}"),
        }
    }

    println!("== 10 MB transfer through the VIP");
    let (out, file) = checks::download_blob(&topo, BLOB_SIZE);
    if out.status.success() {
        let stats = String::from_utf8_lossy(&out.stdout);
        let mut it = stats.split_whitespace();
        let size: f64 = it.next().and_then(|s| s.parse().ok()).unwrap_or(0.0);
        let speed: f64 = it.next().and_then(|s| s.parse().ok()).unwrap_or(0.0);
        let same = std::fs::read(&file)
            .map(|b| b == blob_bytes(BLOB_SIZE))
            .unwrap_or(false);
        println!(
            "   {size:.0} bytes at {:.1} MB/s, content {}",
            speed / 1e6,
            if same { "identical" } else { "DIFFERENT" }
        );
    } else {
        println!("   FAILED: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    check_interrupted()?;

    println!("== the rule as the API lists it");
    println!(
        "   $ ip netns exec {PREFIX}-lb curl http://{API_ADDR}/netlox/v1/config/loadbalancer/all"
    );
    let (status, listing) = topo.api("GET", "/netlox/v1/config/loadbalancer/all", None);
    let pretty = serde_json::from_str::<serde_json::Value>(&listing)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or(listing);
    println!("   -> HTTP {status}");
    for line in pretty.lines() {
        println!("      {line}");
    }

    println!("== stopping oxlb and removing the topology");
    let status = oxlb.stop();
    println!("   oxlb exited ({status})");
    Ok(())
}
