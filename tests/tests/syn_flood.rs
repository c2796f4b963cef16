//! A SYN flood against a real oxlb with a small connection table: the established download
//! through the VIP finishes intact, the flood is absorbed by evicting its own embryonic flows
//! (or refused once nothing is evictable), and the appliance's memory does not grow.
//! Needs root; without it the test fails, saying so.

use oxlb_tests::blob::blob_bytes;
use oxlb_tests::checks::{self, get_via_vip};
use oxlb_tests::{metric_sample, unique_prefix, Node, Topology, TopologyOptions, VIP, VIP_PORT};
use std::thread;
use std::time::{Duration, Instant};

/// Flows the (single) worker can track: the flood is thirty times bigger.
const CAPACITY: &str = "1024";
const SYNS: u64 = 30_000;
/// The download lasts about `SIZE / RATE` = 6 s, so the flood (~2 s) runs in its middle.
const SIZE: usize = 48 * 1024 * 1024;
const RATE: &str = "8M";
/// How much the appliance's resident memory may grow during the flood: allocator noise, far
/// less than a table that would grow with the flood.
const RSS_GROWTH_LIMIT_KB: u64 = 4 * 1024;

/// `VmRSS` of process `pid` in KiB.
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status:\n{status}"))
}

/// Flows evicted and new flows refused for a full table, over all workers.
fn pressure(topo: &Topology) -> (u64, u64) {
    let (status, page) = topo.api("GET", "/metrics", None);
    assert_eq!(status, 200, "{page}");
    let workers = page
        .lines()
        .filter(|l| l.starts_with("oxlb_flows_evicted_total{"))
        .count();
    assert!(workers > 0, "no oxlb_flows_evicted_total samples:\n{page}");
    (0..workers).fold((0, 0), |(evicted, full), w| {
        (
            evicted
                + metric_sample(
                    &page,
                    &format!("oxlb_flows_evicted_total{{worker=\"{w}\"}}"),
                ),
            full + metric_sample(
                &page,
                &format!("oxlb_drops_total{{worker=\"{w}\",reason=\"conntrack_full\"}}"),
            ),
        )
    })
}

#[test]
fn a_syn_flood_into_a_full_table_leaves_an_established_download_intact_and_memory_flat() {
    let topo = Topology::build(&unique_prefix(), TopologyOptions::default());
    let _backends = topo.start_backends();
    let oxlb = topo.start_oxlb(&["--conntrack-capacity", CAPACITY]);
    let diag = || format!("oxlb output:\n{}", oxlb.log());
    topo.add_vip("tcp");
    get_via_vip(&topo, &diag);

    // The flood must find the download's flow established: it returns after the first MiB.
    let (mut download, file) =
        checks::start_slow_download(&topo, "flood-blob.bin", SIZE, RATE, 60, &diag);

    let (evicted_before, full_before) = pressure(&topo);
    let rss_before = rss_kb(oxlb.pid());
    // Source ports below the kernel's ephemeral range: no SYN can hit the download's tuple.
    let target = format!("{VIP}:{VIP_PORT}");
    let count = SYNS.to_string();
    let out = topo.testpeer(
        Node::Client,
        &[
            "syn-flood",
            &target,
            "--count",
            &count,
            "--rate",
            "15000",
            "--ports",
            "1024-32767",
            "--deadline-ms",
            "20000",
        ],
    );
    let flood = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "syn-flood: {flood}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(flood.contains(&format!("sent={SYNS} ")), "{flood}");
    let rss_after = rss_kb(oxlb.pid());
    let (evicted, full) = pressure(&topo);

    // Wait (bounded by curl's own --max-time) for the download to finish.
    let deadline = Instant::now() + Duration::from_secs(70);
    let status = loop {
        if let Some(status) = download.try_wait() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "download still running\n{}",
            diag()
        );
        thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.success(),
        "download failed during the flood ({status}): {}\n{}",
        download.log(),
        diag()
    );
    let got = std::fs::read(&file).expect("read the downloaded file");
    let _ = std::fs::remove_file(&file);
    assert_eq!(got.len(), SIZE, "downloaded {} bytes", got.len());
    if let Some(at) = got.iter().zip(&blob_bytes(SIZE)).position(|(a, b)| a != b) {
        panic!("downloaded content differs from byte {at} on");
    }

    // The flood really filled the table: once 1024 flows are tracked, every further SYN
    // needs an eviction or is refused. Not all 30 000 need reach the worker on a busy machine
    // (the AF_XDP ring may overflow), hence the margin.
    let pressed = (evicted - evicted_before) + (full - full_before);
    eprintln!(
        "flood: {flood}; evicted {evicted_before}->{evicted}, conntrack_full {full_before}->{full}, \
         RSS {rss_before}->{rss_after} KiB"
    );
    assert!(
        pressed >= SYNS / 10,
        "only {pressed} evictions/refusals for {SYNS} SYNs (evicted {evicted_before}->{evicted}, \
         conntrack_full {full_before}->{full}); metrics:\n{}\n{}",
        topo.api("GET", "/metrics", None).1,
        diag()
    );
    assert!(
        rss_after <= rss_before + RSS_GROWTH_LIMIT_KB,
        "oxlb's RSS grew from {rss_before} KiB to {rss_after} KiB during the flood"
    );
    // The flood's leftovers are embryonic: a new connection still finds room at once.
    get_via_vip(&topo, &diag);
}
