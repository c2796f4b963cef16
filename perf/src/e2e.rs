//! `e2e`: iperf3 through the LB namespace of the demo topology, three setups side by side in one
//! run: plain kernel forwarding without NAT (the upper reference), nftables DNAT, and oxlb.
//!
//! Each setup has its own topology, built once; rounds interleave the setups (A, B, C, A, B, C,
//! ...) so that noise on a shared machine hits all three alike. oxlb runs only during its own
//! slot: it is started, configured over the REST API and stopped again every round, and its
//! `totals:` line (rx/tx/drops by reason) is kept from each stop.
//!
//! Traffic goes only to addresses in the namespaces built here (198.18.0.0/15); every client is
//! bounded by `timeout`, the whole run by a deadline; the harness's guards remove namespaces
//! and stop the processes started here (by PID) also when a step panics.

use crate::summary::Summary;
use oxlb_tests::{ChildGuard, Node, Topology, TopologyOptions, BACKEND_IPS, VIP, VIP_PORT};
use serde_json::Value;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

/// iperf3's server port in backend b1.
const IPERF_PORT: u16 = 5201;
/// The one server every setup reaches (b1).
const SERVER_IP: &str = BACKEND_IPS[0];
/// Seconds an iperf3 client may take beyond its test time (connect, stats exchange).
const CLIENT_SLACK_SECS: u32 = 10;
/// How long a freshly started iperf3 server may take to listen.
const SERVER_READY_TIMEOUT: Duration = Duration::from_secs(5);
/// UDP payload size of the small-packet test.
const UDP_PAYLOAD: &str = "64";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setup {
    KernelForward,
    NftDnat,
    Oxlb,
}

const SETUPS: [Setup; 3] = [Setup::KernelForward, Setup::NftDnat, Setup::Oxlb];

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::KernelForward => "kernel-forward",
            Setup::NftDnat => "nft-dnat",
            Setup::Oxlb => "oxlb",
        }
    }

    /// Fixed, so that a run killed before its guards ran leaves namespaces the next run removes.
    fn prefix(self) -> &'static str {
        match self {
            Setup::KernelForward => "oxperf-kfwd",
            Setup::NftDnat => "oxperf-nft",
            Setup::Oxlb => "oxperf-oxlb",
        }
    }

    /// Where the client sends: the backend itself without NAT, the VIP otherwise.
    fn target(self) -> (&'static str, u16) {
        match self {
            Setup::KernelForward => (SERVER_IP, IPERF_PORT),
            Setup::NftDnat | Setup::Oxlb => (VIP, VIP_PORT),
        }
    }

    fn build(self) -> Topology {
        let topo = Topology::build(
            self.prefix(),
            TopologyOptions {
                ip_forward: self != Setup::Oxlb,
                ..Default::default()
            },
        );
        if self == Setup::NftDnat {
            let ruleset = format!(
                "table ip oxlbperf {{\n chain pre {{\n  type nat hook prerouting priority dstnat; policy accept;\n  \
                 ip daddr {VIP} tcp dport {VIP_PORT} dnat to {SERVER_IP}:{IPERF_PORT}\n  \
                 ip daddr {VIP} udp dport {VIP_PORT} dnat to {SERVER_IP}:{IPERF_PORT}\n }}\n}}\n"
            );
            let file = topo.scratch_dir().join("ruleset.nft");
            std::fs::write(&file, ruleset).expect("write the nftables ruleset");
            topo.exec_ok(Node::Lb, &["nft", "-f", file.to_str().expect("utf-8 path")]);
        }
        topo
    }
}

/// The quantities reported per setup; one run yields all of them.
#[derive(Debug, Clone, Copy)]
enum Metric {
    /// Datagrams the iperf3 server received per second (sent minus lost).
    UdpReceived,
    /// Datagrams the client sent per second: the offered load, bounded by the client's core.
    UdpSent,
    /// TCP goodput at the receiver.
    TcpReceived,
}

const METRICS: [Metric; 3] = [Metric::UdpReceived, Metric::UdpSent, Metric::TcpReceived];

impl Metric {
    fn label(self) -> &'static str {
        match self {
            Metric::UdpReceived => "udp 64 B received (kpps)",
            Metric::UdpSent => "udp 64 B sent (kpps)",
            Metric::TcpReceived => "tcp received (Gbit/s)",
        }
    }

    fn unit(self) -> f64 {
        match self {
            Metric::UdpReceived | Metric::UdpSent => 1e3,
            Metric::TcpReceived => 1e9,
        }
    }
}

/// Command-line options of `oxlb-perf e2e`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    pub runs: usize,
    pub seconds: u32,
}

impl Options {
    /// Parses `[--runs N] [--seconds S]`.
    pub fn parse(args: &[String]) -> Result<Options, String> {
        let mut opts = Options {
            runs: 5,
            seconds: 5,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
            let bad = |e: std::num::ParseIntError| format!("{flag} {value}: {e}");
            match flag.as_str() {
                "--runs" => opts.runs = value.parse().map_err(bad)?,
                "--seconds" => opts.seconds = value.parse().map_err(bad)?,
                _ => return Err(format!("unknown option {flag}")),
            }
        }
        if !(1..=100).contains(&opts.runs) {
            return Err(format!("--runs must be 1..=100, not {}", opts.runs));
        }
        if !(1..=120).contains(&opts.seconds) {
            return Err(format!("--seconds must be 1..=120, not {}", opts.seconds));
        }
        Ok(opts)
    }

    /// Upper bound of the whole run: every client at its timeout, plus oxlb restarts.
    fn deadline(self) -> Duration {
        let per_client = u64::from(self.seconds + CLIENT_SLACK_SECS) + 5;
        let per_round = 3 * 2 * 2 * per_client + 60;
        Duration::from_secs(per_round * self.runs as u64 + 120)
    }
}

/// Everything measured: `values[setup][metric]`, one entry per successful run.
#[derive(Default)]
struct Results {
    values: [[Vec<f64>; 3]; 3],
    failures: Vec<String>,
    oxlb_totals: Vec<String>,
}

/// Runs the benchmark, prints the report and writes it to `perf/results/e2e-<timestamp>.txt`.
pub fn run(opts: Options, command_line: &str) {
    let started = Instant::now();
    let deadline = opts.deadline();
    let mut header = String::new();
    let _ = writeln!(header, "command: {command_line}");
    let _ = writeln!(header, "kernel: {}", command_output("uname", &["-r"]));
    let _ = writeln!(header, "nproc: {}", command_output("nproc", &[]));
    let _ = writeln!(
        header,
        "iperf3: {}",
        first_line(&command_output("iperf3", &["--version"]))
    );
    let _ = writeln!(
        header,
        "{} runs x {} s per metric; rounds interleave kernel-forward, nft-dnat, oxlb; \
         server iperf3 in b1 ({SERVER_IP}:{IPERF_PORT}), client in the client namespace",
        opts.runs, opts.seconds
    );
    print!("{header}");

    let topos: Vec<(Setup, Topology)> = SETUPS.iter().map(|&s| (s, s.build())).collect();
    let mut results = Results::default();
    'rounds: for round in 1..=opts.runs {
        for (si, (setup, topo)) in topos.iter().enumerate() {
            if started.elapsed() > deadline {
                results.failures.push(format!(
                    "stopped at round {round}: the run exceeded {deadline:?}"
                ));
                break 'rounds;
            }
            let sample = measure_setup(*setup, topo, opts.seconds, round, &mut results);
            for (mi, v) in sample.iter().enumerate() {
                if let Some(v) = v {
                    results.values[si][mi].push(*v);
                }
            }
            println!(
                "round {round}/{} {:<15} udp rx {} kpps, udp tx {} kpps, tcp {} Gbit/s",
                opts.runs,
                setup.name(),
                fmt_opt(sample[0], 1e3, 1),
                fmt_opt(sample[1], 1e3, 1),
                fmt_opt(sample[2], 1e9, 2),
            );
        }
    }
    drop(topos);

    let report = format!("{header}{}", render(&results));
    println!();
    print!("{}", render(&results));
    let path = write_report(&report);
    println!("written to {}", path.display());
}

/// One slot of a round: oxlb up (if it is this setup), TCP test, UDP test, oxlb down.
fn measure_setup(
    setup: Setup,
    topo: &Topology,
    seconds: u32,
    round: usize,
    results: &mut Results,
) -> [Option<f64>; 3] {
    let oxlb = (setup == Setup::Oxlb).then(|| {
        let oxlb = topo.start_oxlb(&[]);
        for proto in ["tcp", "udp"] {
            let body = service_body(proto);
            let (status, reply) = topo.api("POST", "/netlox/v1/config/loadbalancer", Some(&body));
            assert!(
                (200..300).contains(&status),
                "creating the {proto} service: HTTP {status}: {reply}\nrequest: {body}"
            );
        }
        oxlb
    });

    let mut record = |what: &str, r: Result<Value, String>| match r {
        Ok(v) => Some(v),
        Err(e) => {
            let msg = format!("round {round} {} {what}: {e}", setup.name());
            eprintln!("{msg}");
            results.failures.push(msg);
            None
        }
    };
    // TCP first: a UDP flood that wedges a setup then still leaves its TCP figure.
    let tcp = record("tcp", iperf(topo, setup, seconds, &[]));
    let udp = record(
        "udp",
        iperf(topo, setup, seconds, &["-u", "-l", UDP_PAYLOAD, "-b", "0"]),
    );

    if let Some(oxlb) = oxlb {
        oxlb.stop();
        let log = std::fs::read_to_string(topo.scratch_dir().join("oxlb.log")).unwrap_or_default();
        let totals = log
            .lines()
            .find_map(|l| l.find("totals:").map(|i| l[i..].to_string()))
            .unwrap_or_else(|| "no totals line in oxlb's log".to_string());
        println!("round {round} oxlb {totals}");
        results.oxlb_totals.push(format!("round {round}: {totals}"));
    }

    let udp_rx = udp.as_ref().and_then(|j| udp_rate(j, "sum_received", true));
    let udp_tx = udp.as_ref().and_then(|j| udp_rate(j, "sum_sent", false));
    let tcp_rx = tcp
        .as_ref()
        .and_then(|j| j["end"]["sum_received"]["bits_per_second"].as_f64());
    [udp_rx, udp_tx, tcp_rx]
}

/// The loxilb-compatible body of one service VIP:2020 -> b1:5201, DNAT, round robin.
fn service_body(protocol: &str) -> String {
    serde_json::json!({
        "serviceArguments": {
            "externalIP": VIP,
            "port": VIP_PORT,
            "protocol": protocol,
            "sel": 0,
            "mode": 0,
            "name": "iperf",
        },
        "endpoints": [{"endpointIP": SERVER_IP, "targetPort": IPERF_PORT, "weight": 1}],
    })
    .to_string()
}

/// Datagrams per second from `end.<which>` of a UDP run. At the receiver, `packets` is the
/// highest sequence number seen, so delivered = packets - lost_packets. (iperf3 3.12's
/// `end.sum.packets` is the sender's count, hence `sum_received`.)
fn udp_rate(json: &Value, which: &str, subtract_lost: bool) -> Option<f64> {
    let s = &json["end"][which];
    let packets = s["packets"].as_f64()?;
    let lost = if subtract_lost {
        s["lost_packets"].as_f64()?
    } else {
        0.0
    };
    let secs = s["seconds"].as_f64().filter(|&t| t > 0.0)?;
    Some((packets - lost) / secs)
}

/// One iperf3 test against a one-off server in b1. A client that failed to start its test
/// (e.g. the server was not ready) is retried once with a fresh server; one that hung and was
/// killed by `timeout` ("interrupt") is not, as the path itself stopped passing traffic.
fn iperf(topo: &Topology, setup: Setup, seconds: u32, extra: &[&str]) -> Result<Value, String> {
    iperf_once(topo, setup, seconds, extra).or_else(|first| {
        if first.contains("interrupt") {
            return Err(format!(
                "{first} (killed after {} s: the test hung)",
                seconds + CLIENT_SLACK_SECS
            ));
        }
        eprintln!(
            "{} iperf3 {extra:?} failed, retrying once: {first}",
            setup.name()
        );
        iperf_once(topo, setup, seconds, extra)
    })
}

fn iperf_once(
    topo: &Topology,
    setup: Setup,
    seconds: u32,
    extra: &[&str],
) -> Result<Value, String> {
    let _server = start_server(topo)?;
    let (ip, port) = setup.target();
    let (port, secs, limit) = (
        port.to_string(),
        seconds.to_string(),
        (seconds + CLIENT_SLACK_SECS).to_string(),
    );
    let mut args = vec![
        "timeout",
        "-k",
        "5",
        &limit,
        "iperf3",
        "-c",
        ip,
        "-p",
        &port,
        "-t",
        &secs,
        "-J",
        "--connect-timeout",
        "5000",
    ];
    args.extend_from_slice(extra);
    let out = topo.exec(Node::Client, &args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json: Value = serde_json::from_str(&stdout).map_err(|e| {
        format!(
            "iperf3 exited {} without JSON ({e}); stderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })?;
    if let Some(err) = json.get("error").and_then(Value::as_str) {
        return Err(format!("iperf3: {err}"));
    }
    Ok(json)
}

/// `iperf3 -s -1` in b1, once it listens. The guard stops it if the client did not finish it.
fn start_server(topo: &Topology) -> Result<ChildGuard, String> {
    let port = IPERF_PORT.to_string();
    let mut server = topo.spawn(
        Node::Backend(1),
        &["iperf3", "-s", "-1", "-p", &port],
        "iperf3-server",
    );
    let filter = format!("sport = :{IPERF_PORT}");
    let deadline = Instant::now() + SERVER_READY_TIMEOUT;
    loop {
        if let Some(status) = server.try_wait() {
            return Err(format!("iperf3 server exited ({status}): {}", server.log()));
        }
        let ss = topo.exec(Node::Backend(1), &["ss", "-Hltn", &filter]);
        if !String::from_utf8_lossy(&ss.stdout).trim().is_empty() {
            return Ok(server);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "iperf3 server did not listen on {IPERF_PORT} within {SERVER_READY_TIMEOUT:?}"
            ));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// The summary table, the ratios of medians, oxlb's counters and any failures.
fn render(r: &Results) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<15} {:<26} {:>4} {:>10} {:>10} {:>10}",
        "setup", "metric", "n", "min", "median", "max"
    );
    let mut medians = [[None; 3]; 3];
    for (si, setup) in SETUPS.iter().enumerate() {
        for (mi, metric) in METRICS.iter().enumerate() {
            let v = &r.values[si][mi];
            let s = Summary::of(v);
            medians[si][mi] = s.map(|s| s.median);
            let cell = |x: Option<f64>| fmt_opt(x, metric.unit(), 2);
            let _ = writeln!(
                out,
                "{:<15} {:<26} {:>4} {:>10} {:>10} {:>10}",
                setup.name(),
                metric.label(),
                v.len(),
                cell(s.map(|s| s.min)),
                cell(s.map(|s| s.median)),
                cell(s.map(|s| s.max)),
            );
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "ratio of medians");
    for (name, other) in [("oxlb / nft-dnat", 1), ("oxlb / kernel-forward", 0)] {
        let _ = write!(out, "  {name:<22}");
        for (mi, metric) in METRICS.iter().enumerate() {
            let ratio = match (medians[2][mi], medians[other][mi]) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
                _ => "-".to_string(),
            };
            let _ = write!(out, "  {}: {ratio}", metric.label());
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "oxlb counters at each stop (from its log):");
    for t in &r.oxlb_totals {
        let _ = writeln!(out, "  {t}");
    }
    if !r.failures.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(out, "failed measurements (left out of the table):");
        for f in &r.failures {
            let _ = writeln!(out, "  {f}");
        }
    }
    out
}

fn fmt_opt(x: Option<f64>, unit: f64, decimals: usize) -> String {
    x.map_or_else(|| "-".to_string(), |x| format!("{:.*}", decimals, x / unit))
}

fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|e| format!("({program}: {e})"))
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

/// Writes the report to `perf/results/e2e-<UTC timestamp>.txt` and returns the path.
fn write_report(report: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results");
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let stamp = command_output("date", &["-u", "+%Y%m%dT%H%M%SZ"]);
    let path = dir.join(format!("e2e-{stamp}.txt"));
    std::fs::write(&path, report)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn options_default_to_five_runs_of_five_seconds_and_reject_unknown_flags() {
        assert_eq!(
            Options::parse(&[]).unwrap(),
            Options {
                runs: 5,
                seconds: 5
            }
        );
        assert_eq!(
            Options::parse(&args("--seconds 3 --runs 2")).unwrap(),
            Options {
                runs: 2,
                seconds: 3
            }
        );
        assert!(Options::parse(&args("--runs")).is_err());
        assert!(Options::parse(&args("--runs 0")).is_err());
        assert!(Options::parse(&args("--fast 1")).is_err());
    }

    #[test]
    fn received_udp_rate_subtracts_lost_datagrams_from_the_receivers_count() {
        let json: Value = serde_json::json!({"end": {
            "sum_sent": {"packets": 1000, "lost_packets": 0, "seconds": 2.0},
            "sum_received": {"packets": 900, "lost_packets": 100, "seconds": 2.0},
        }});
        assert_eq!(udp_rate(&json, "sum_received", true), Some(400.0));
        assert_eq!(udp_rate(&json, "sum_sent", false), Some(500.0));
        assert_eq!(udp_rate(&Value::Null, "sum_sent", false), None);
    }
}
