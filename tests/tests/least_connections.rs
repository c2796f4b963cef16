//! Least connections (`sel` 4) with a real oxlb: long downloads through the VIP, each
//! followed by short requests, end up one per backend. Round robin would put all three on the
//! same backend here (each download is followed by a multiple of three requests), so the
//! spread comes from counting live connections, and from a closed connection no longer
//! counting. Needs root; without it the test fails, saying so.

use oxlb_tests::checks::{self, get_via_vip};
use oxlb_tests::{unique_prefix, Topology, TopologyOptions};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// Each download would last about `SIZE / RATE` = 64 s: all three are live when counted (and
/// killed then).
const SIZE: usize = 64 * 1024 * 1024;
const RATE: &str = "1M";
/// Short requests after each download: a multiple of the three backends.
const SHORT: usize = 5;

/// Established connections per endpoint (`conntrackAct` of the client's direction, e.g.
/// `dnat-198.18.31.1:8080:w1`), from the appliance's conntrack listing.
fn established_per_endpoint(topo: &Topology) -> BTreeMap<String, usize> {
    let (status, body) = topo.api("GET", "/netlox/v1/config/conntrack/all", None);
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let mut per = BTreeMap::new();
    for e in v["ctAttr"].as_array().unwrap_or_else(|| panic!("{body}")) {
        let act = e["conntrackAct"].as_str().unwrap_or_default();
        if e["conntrackState"] == "est" && act.starts_with("dnat-") {
            *per.entry(act.to_owned()).or_insert(0) += 1;
        }
    }
    per
}

#[test]
fn least_connections_spreads_long_downloads_that_round_robin_would_stack_on_one_backend() {
    let topo = Topology::build(&unique_prefix(), TopologyOptions::default());
    let _backends = topo.start_backends();
    let oxlb = topo.start_oxlb(&[]);
    let diag = || format!("oxlb output:\n{}", oxlb.log());
    // TCP, DNAT (mode 0), least connections (sel 4), backends on port 8080.
    topo.add_service("tcp", 0, 4, 8080);

    let mut downloads = Vec::new();
    for i in 0..3 {
        let name = format!("lc-{i}.bin");
        downloads.push(checks::start_slow_download(
            &topo, &name, SIZE, RATE, 60, &diag,
        ));
        for _ in 0..SHORT {
            get_via_vip(&topo, &diag);
        }
        // The short connections' closing packets have passed by now.
        std::thread::sleep(Duration::from_millis(300));
    }
    let per = established_per_endpoint(&topo);
    let listing = || topo.api("GET", "/netlox/v1/config/conntrack/all", None).1;
    assert_eq!(
        per.values().copied().collect::<Vec<_>>(),
        vec![1, 1, 1],
        "one long download per backend, got {per:?}\nconntrack: {}\n{}",
        listing(),
        diag()
    );
    for (mut child, _) in downloads {
        child.kill();
    }
}
