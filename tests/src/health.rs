//! Helpers of the health-probe tests: monitored services and watching which backends answer.

use crate::checks::vip_url;
use crate::{parse_answer, Node, Topology, BACKEND_IPS, BACKEND_PORT, VIP, VIP_PORT};
use std::thread;
use std::time::{Duration, Instant};

/// Backend names answering `n` requests through the VIP; `None` if one failed.
pub fn backends_of(topo: &Topology, n: usize) -> Option<Vec<String>> {
    let url = vip_url("/");
    (0..n)
        .map(|_| {
            let out = topo.exec(
                Node::Client,
                &["curl", "-sS", "--fail", "--max-time", "2", &url],
            );
            out.status
                .success()
                .then(|| parse_answer(&String::from_utf8_lossy(&out.stdout)).backend)
        })
        .collect()
}

/// Polls (bounded by `limit`) until 12 consecutive requests all succeed and satisfy `ok`;
/// on failure the panic says `what`, then shows `log()` (oxlb's output).
pub fn eventually(
    topo: &Topology,
    limit: Duration,
    what: &str,
    log: &dyn Fn() -> String,
    ok: impl Fn(&[String]) -> bool,
) {
    let started = Instant::now();
    let mut last = None;
    while started.elapsed() < limit {
        last = backends_of(topo, 12);
        if last.as_deref().is_some_and(&ok) {
            return;
        }
        thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "{what} within {limit:?}; last round: {last:?}\noxlb's output:\n{}",
        log()
    );
}

/// Creates the VIP over b1..b3:8080, round robin, monitored with a probe every second that
/// gives up after two misses, plus the `serviceArguments` fields in `probe` (at least
/// `probetype`); checks that the listing shows the probe type.
pub fn add_monitored_service(topo: &Topology, probe: serde_json::Value) {
    let endpoints: Vec<serde_json::Value> = BACKEND_IPS
        .iter()
        .map(|ip| serde_json::json!({"endpointIP": ip, "targetPort": BACKEND_PORT, "weight": 1}))
        .collect();
    let mut args = serde_json::json!({
        "externalIP": VIP, "port": VIP_PORT, "protocol": "tcp", "name": "probes",
        "monitor": true, "probeTimeout": PROBE_TIMEOUT_SECS, "probeRetries": PROBE_RETRIES,
    });
    for (k, v) in probe.as_object().expect("probe fields are an object") {
        args[k] = v.clone();
    }
    let probetype = args["probetype"].clone();
    let body = serde_json::json!({"serviceArguments": args, "endpoints": endpoints}).to_string();
    let (status, answer) = topo.api("POST", "/netlox/v1/config/loadbalancer", Some(&body));
    assert_eq!(status, 200, "creating the service failed: {answer}");
    let (_, listing) = topo.api("GET", "/netlox/v1/config/loadbalancer/all", None);
    assert!(
        listing.contains(&format!(r#""probetype":{probetype}"#)),
        "{listing}"
    );
}

/// `probeTimeout` and `probeRetries` of [`add_monitored_service`].
pub const PROBE_TIMEOUT_SECS: u64 = 1;
pub const PROBE_RETRIES: u64 = 2;
