//! Data-path checks through the VIP, independent of what implements it.
//!
//! The e2e tests run them against oxlb; `tests/nft_reference.rs` runs the same functions against
//! in-kernel nftables DNAT, which proves the checks themselves (and the topology) are right
//! before oxlb can pass them. `diag` returns what to print on failure (oxlb's log, the ruleset).

use crate::blob::blob_bytes;
use crate::{
    assert_strict_rotation, parse_answer, Answer, Node, Topology, BACKEND_NAMES, CLIENT_IP, VIP,
    VIP_PORT,
};
use std::path::PathBuf;
use std::process::Output;

/// `http://198.18.100.1:2020{path}`.
pub fn vip_url(path: &str) -> String {
    format!("http://{VIP}:{VIP_PORT}{path}")
}

/// `GET /` through the VIP from the client; panics with curl's error and `diag()`.
pub fn get_via_vip(topo: &Topology, diag: &dyn Fn() -> String) -> Answer {
    let body = topo
        .http_get(Node::Client, &vip_url("/"), 5)
        .unwrap_or_else(|e| panic!("{e}\n{}", diag()));
    parse_answer(&body)
}

/// Twelve requests are answered in strict rotation of b1, b2, b3 (starting anywhere).
pub fn twelve_requests_rotate(topo: &Topology, diag: &dyn Fn() -> String) {
    let names: Vec<String> = (0..12).map(|_| get_via_vip(topo, diag).backend).collect();
    assert_strict_rotation(&names, &BACKEND_NAMES);
}

/// Every backend answers within six requests and saw the client's own address (DNAT only).
pub fn backends_see_the_client_address(topo: &Topology, diag: &dyn Fn() -> String) {
    let answers: Vec<Answer> = (0..6).map(|_| get_via_vip(topo, diag)).collect();
    for a in &answers {
        assert_eq!(
            a.peer_ip, CLIENT_IP,
            "{} saw {}:{}; DNAT must keep the client's address",
            a.backend, a.peer_ip, a.peer_port
        );
    }
    for name in BACKEND_NAMES {
        assert!(
            answers.iter().any(|a| a.backend == name),
            "{name} never answered in six requests: {answers:?}"
        );
    }
}

/// A UDP datagram to the VIP is answered by a backend that saw the client and the payload.
pub fn udp_request_is_answered(topo: &Topology, diag: &dyn Fn() -> String) {
    let target = format!("{VIP}:{VIP_PORT}");
    // Up to three datagrams: the first may be held or dropped while the LB resolves the
    // backend's MAC (as the kernel itself may), but one of three must be answered.
    let mut last = None;
    for _ in 0..3 {
        let out = topo.testpeer(
            Node::Client,
            &["udp-request", &target, "hello-oxlb", "--timeout-ms", "2000"],
        );
        if out.status.success() {
            let a = parse_answer(&String::from_utf8_lossy(&out.stdout));
            assert!(
                BACKEND_NAMES.contains(&a.backend.as_str()),
                "unexpected answer {a:?}"
            );
            assert_eq!(a.peer_ip, CLIENT_IP, "the backend saw {a:?}");
            assert_eq!(a.rest, "hello-oxlb", "payload changed on the way: {a:?}");
            return;
        }
        last = Some(out);
    }
    panic!(
        "no UDP answer through the VIP in three tries: {last:?}\n{}",
        diag()
    );
}

/// Starts a download of `size` bytes of `/blob` through the VIP at `rate` (curl's
/// `--limit-rate`, e.g. "4M") into `name` in the scratch directory, and returns once its first
/// MiB arrived, so its flow is established and busy. Panics (with `diag()`) if it ends early or
/// has not started within 10 s. curl gives up after `max_secs`.
pub fn start_slow_download(
    topo: &Topology,
    name: &str,
    size: usize,
    rate: &str,
    max_secs: u32,
    diag: &dyn Fn() -> String,
) -> (crate::ChildGuard, PathBuf) {
    let file = topo.scratch_dir().join(name);
    let file_s = file.to_str().expect("utf-8 scratch path").to_owned();
    let url = vip_url(&format!("/blob?size={size}"));
    let max = max_secs.to_string();
    let mut download = topo.spawn(
        Node::Client,
        &[
            "curl",
            "-sS",
            "--fail",
            "--max-time",
            &max,
            "--limit-rate",
            rate,
            "-o",
            &file_s,
            &url,
        ],
        "download",
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::metadata(&file).map_or(0, |m| m.len()) < 1024 * 1024 {
        assert!(
            download.try_wait().is_none(),
            "download ended early: {}\n{}",
            download.log(),
            diag()
        );
        assert!(
            std::time::Instant::now() < deadline,
            "download did not start\n{}",
            diag()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    (download, file)
}

/// Downloads `size` bytes of `/blob` through the VIP from the client into the scratch
/// directory. Returns curl's output (stdout: `SIZE_DOWNLOADED SPEED_BYTES_PER_S`) and the file.
pub fn download_blob(topo: &Topology, size: usize) -> (Output, PathBuf) {
    let file = topo.scratch_dir().join("blob.bin");
    let file_s = file.to_str().expect("utf-8 scratch path").to_owned();
    let url = vip_url(&format!("/blob?size={size}"));
    let out = topo.exec(
        Node::Client,
        &[
            "curl",
            "-sS",
            "--fail",
            "--max-time",
            "60",
            "-o",
            &file_s,
            "-w",
            "%{size_download} %{speed_download}",
            &url,
        ],
    );
    (out, file)
}

/// A 10 MiB download through the VIP arrives complete and byte-identical.
pub fn ten_megabyte_download_is_identical(topo: &Topology, diag: &dyn Fn() -> String) {
    const SIZE: usize = 10 * 1024 * 1024;
    let (out, file) = download_blob(topo, SIZE);
    assert!(out.status.success(), "download failed: {out:?}\n{}", diag());

    let got = std::fs::read(&file).expect("read the downloaded file");
    // Ten megabytes per failed run would pile up in the kept scratch directory.
    let _ = std::fs::remove_file(&file);
    let want = blob_bytes(SIZE);
    assert_eq!(
        got.len(),
        SIZE,
        "downloaded {} bytes, expected {SIZE}",
        got.len()
    );
    if let Some(at) = got.iter().zip(&want).position(|(a, b)| a != b) {
        panic!("downloaded content differs from byte {at} on");
    }
}

/// 1000 sequential connections (`oxlb-testpeer tcp-loop`) all succeed, spread over all backends.
pub fn thousand_sequential_connections_succeed(topo: &Topology, diag: &dyn Fn() -> String) {
    let target = format!("{VIP}:{VIP_PORT}");
    let out = topo.testpeer(
        Node::Client,
        &[
            "tcp-loop",
            &target,
            "--count",
            "1000",
            "--timeout-ms",
            "2000",
            "--deadline-ms",
            "120000",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = stdout
        .lines()
        .nth(1)
        .unwrap_or_else(|| panic!("no JSON from tcp-loop: {out:?}"));
    let report: serde_json::Value = serde_json::from_str(json).expect("tcp-loop JSON");
    assert_eq!(
        (report["ok"].as_u64(), report["failed"].as_u64()),
        (Some(1000), Some(0)),
        "tcp-loop: {json}\n{}",
        diag()
    );
    for name in BACKEND_NAMES {
        assert!(
            report["backends"][name].as_u64().unwrap_or(0) > 0,
            "{name} got none: {json}"
        );
    }
}
