//! `e2e`: traffic through the LB namespace of the demo topology, four setups side by side in one
//! run: plain kernel forwarding without NAT (the upper reference), nftables DNAT, oxlb with one
//! queue, and oxlb with two queues (two workers passing frames to a flow's owner).
//!
//! Tests: UDP 64-byte pps and TCP throughput (iperf3), keep-alive HTTP requests/s and p99
//! latency (wrk), and new connections/s with p99 latency (wrk, one request per connection).
//!
//! Each setup has its own topology and HTTP server, built once; rounds interleave the setups
//! (A, B, C, D, A, B, ...) so that noise on a shared machine hits all of them alike. oxlb runs
//! only during its own slot: it is started, configured over the REST API and stopped again every
//! round, and its `totals:` line (rx/tx/drops by reason) is kept from each stop.
//!
//! Traffic goes only to addresses in the namespaces built here (198.18.0.0/15); every client is
//! bounded by `timeout`, the whole run by a deadline; the harness's guards remove namespaces
//! and stop the processes started here (by PID) also when a step panics.

use crate::summary::Summary;
use oxlb_tests::{binary, ChildGuard, Node, Topology, TopologyOptions, BACKEND_IPS, VIP, VIP_PORT};
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

/// iperf3's server port in backend b1.
const IPERF_PORT: u16 = 5201;
/// The HTTP server's port in backend b1.
const HTTP_PORT: u16 = 8080;
/// The VIP's HTTP port; VIP_PORT carries iperf3.
const VIP_HTTP_PORT: u16 = 80;
/// The one server every setup reaches (b1).
const SERVER_IP: &str = BACKEND_IPS[0];
/// Seconds a client may take beyond its test time (connect, stats exchange).
const CLIENT_SLACK_SECS: u32 = 10;
/// How long a freshly started server may take to listen.
const SERVER_READY_TIMEOUT: Duration = Duration::from_secs(5);
/// UDP payload size of the small-packet test.
const UDP_PAYLOAD: &str = "64";
/// One wrk thread per core of this 2-core machine; more only adds switching.
const WRK_THREADS: &str = "2";
/// Enough requests in flight to keep the path busy, few enough for the server's thread pool.
const WRK_CONNECTIONS: &str = "32";
/// Server threads: at least WRK_CONNECTIONS, as each keep-alive connection holds one.
const HTTPD_THREADS: &str = "64";
/// wrk's per-request timeout; a request slower than this counts as an error, not a latency.
const WRK_TIMEOUT: &str = "2s";

/// wrk reports through this script, so nothing depends on the layout of its human report.
/// Defining only `done` keeps wrk's requests static (no Lua on the per-request path).
const WRK_REPORT_LUA: &str = r#"-- Written by oxlb-perf e2e: prints wrk's totals as one JSON line.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"duration_us":%d,"requests":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.duration, summary.requests, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setup {
    KernelForward,
    NftDnat,
    Oxlb,
    Oxlb2Queues,
}

const SETUPS: [Setup; 4] = [
    Setup::KernelForward,
    Setup::NftDnat,
    Setup::Oxlb,
    Setup::Oxlb2Queues,
];
/// Indices into SETUPS of the two references every ratio is taken against.
const KERNEL: usize = 0;
const NFT: usize = 1;

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::KernelForward => "kernel-forward",
            Setup::NftDnat => "nft-dnat",
            Setup::Oxlb => "oxlb",
            Setup::Oxlb2Queues => "oxlb-2q",
        }
    }

    /// Fixed, so that a run killed before its guards ran leaves namespaces the next run removes.
    fn prefix(self) -> &'static str {
        match self {
            Setup::KernelForward => "oxperf-kfwd",
            Setup::NftDnat => "oxperf-nft",
            Setup::Oxlb => "oxperf-oxlb",
            Setup::Oxlb2Queues => "oxperf-oxlb2q",
        }
    }

    fn is_oxlb(self) -> bool {
        matches!(self, Setup::Oxlb | Setup::Oxlb2Queues)
    }

    /// Where the client sends to reach `port` on b1: b1 itself without NAT, the VIP otherwise.
    fn target(self, server_port: u16) -> (&'static str, u16) {
        match (self, server_port) {
            (Setup::KernelForward, port) => (SERVER_IP, port),
            (_, HTTP_PORT) => (VIP, VIP_HTTP_PORT),
            _ => (VIP, VIP_PORT),
        }
    }

    fn build(self) -> Bench {
        let topo = Topology::build(
            self.prefix(),
            TopologyOptions {
                ip_forward: !self.is_oxlb(),
                queues: if self == Setup::Oxlb2Queues { 2 } else { 1 },
            },
        );
        if self == Setup::NftDnat {
            let ruleset = format!(
                "table ip oxlbperf {{\n chain pre {{\n  type nat hook prerouting priority dstnat; policy accept;\n  \
                 ip daddr {VIP} tcp dport {VIP_PORT} dnat to {SERVER_IP}:{IPERF_PORT}\n  \
                 ip daddr {VIP} udp dport {VIP_PORT} dnat to {SERVER_IP}:{IPERF_PORT}\n  \
                 ip daddr {VIP} tcp dport {VIP_HTTP_PORT} dnat to {SERVER_IP}:{HTTP_PORT}\n }}\n}}\n"
            );
            let file = topo.scratch_dir().join("ruleset.nft");
            std::fs::write(&file, ruleset).expect("write the nftables ruleset");
            topo.exec_ok(Node::Lb, &["nft", "-f", path_str(&file)]);
        }
        // The connection test opens tens of thousands of connections per run. If the client
        // happens to close first, its ports sit in TIME_WAIT; without reuse the default range
        // (28k ports, 60 s) would run out and measure the client, not the path.
        topo.exec_ok(
            Node::Client,
            &[
                "sysctl",
                "-q",
                "-w",
                "net.ipv4.tcp_tw_reuse=1",
                "net.ipv4.ip_local_port_range=1024 65535",
            ],
        );
        let lua = topo.scratch_dir().join("wrk-report.lua");
        std::fs::write(&lua, WRK_REPORT_LUA).expect("write the wrk report script");

        let httpd_bin = binary("oxlb-perf-httpd");
        let port = HTTP_PORT.to_string();
        let mut httpd = topo.spawn(
            Node::Backend(1),
            &[
                path_str(&httpd_bin),
                "--port",
                &port,
                "--threads",
                HTTPD_THREADS,
            ],
            "httpd",
        );
        if let Err(e) = wait_listening(&topo, &mut httpd, HTTP_PORT) {
            panic!("{}: {e}", self.name());
        }
        Bench {
            setup: self,
            httpd,
            lua,
            topo,
        }
    }
}

/// One setup's topology and the processes that live as long as it.
struct Bench {
    setup: Setup,
    /// Declared before `topo`: fields drop in order, and the server must stop before its
    /// namespace is deleted.
    httpd: ChildGuard,
    lua: PathBuf,
    topo: Topology,
}

/// What `--only` selects; each test yields one or more metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Test {
    Pps,
    Tcp,
    Http,
    Conn,
}

const TESTS: [Test; 4] = [Test::Pps, Test::Tcp, Test::Http, Test::Conn];

impl Test {
    fn name(self) -> &'static str {
        match self {
            Test::Pps => "pps",
            Test::Tcp => "tcp",
            Test::Http => "http",
            Test::Conn => "conn",
        }
    }
}

/// The quantities reported per setup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Metric {
    /// Frames that reached the backend's interface per second during the UDP flood: what the
    /// forwarder under test delivered, whatever the receiving application then kept up with.
    UdpForwarded,
    /// Datagrams the iperf3 server received per second (sent minus lost). On this 2-core VM
    /// the server's core is the limit, in every setup: the rest die at its socket buffer
    /// (`RcvbufErrors`), which is why `UdpForwarded` measures the forwarder.
    UdpReceived,
    /// Datagrams the client sent per second: the offered load, bounded by the client's core.
    UdpSent,
    /// TCP goodput at the receiver.
    TcpReceived,
    /// Successful (2xx) keep-alive requests per second.
    HttpRate,
    /// wrk's 99th percentile of request latency, keep-alive, in µs.
    HttpP99,
    /// Successful requests per second with `Connection: close`: one new connection each.
    ConnRate,
    /// wrk's 99th percentile with one connection per request, in µs. wrk starts the clock
    /// once the connection is established, so this is request to response on a fresh flow;
    /// the handshake's cost shows in the rate.
    ConnP99,
}

const METRICS: [Metric; 8] = [
    Metric::UdpForwarded,
    Metric::UdpReceived,
    Metric::UdpSent,
    Metric::TcpReceived,
    Metric::HttpRate,
    Metric::HttpP99,
    Metric::ConnRate,
    Metric::ConnP99,
];

impl Metric {
    fn label(self) -> &'static str {
        match self {
            Metric::UdpForwarded => "udp 64 B forwarded to the backend's interface (kpps)",
            Metric::UdpReceived => "udp 64 B received by the iperf3 server (kpps)",
            Metric::UdpSent => "udp 64 B sent, offered load (kpps)",
            Metric::TcpReceived => "tcp received (Gbit/s)",
            Metric::HttpRate => "http keep-alive (k requests/s)",
            Metric::HttpP99 => "http keep-alive p99 latency (ms)",
            Metric::ConnRate => "new connections, 1 request each (k conn/s)",
            Metric::ConnP99 => "new connections p99 latency, request to response (ms)",
        }
    }

    /// Short form for the per-round progress lines.
    fn short(self) -> &'static str {
        match self {
            Metric::UdpForwarded => "udp fwd kpps",
            Metric::UdpReceived => "udp rx kpps",
            Metric::UdpSent => "udp tx kpps",
            Metric::TcpReceived => "tcp Gbit/s",
            Metric::HttpRate => "http k/s",
            Metric::HttpP99 => "p99 ms",
            Metric::ConnRate => "conn k/s",
            Metric::ConnP99 => "p99 ms",
        }
    }

    /// Divisor from the stored value to the unit in the label.
    fn unit(self) -> f64 {
        match self {
            Metric::UdpForwarded
            | Metric::UdpReceived
            | Metric::UdpSent
            | Metric::HttpRate
            | Metric::ConnRate
            | Metric::HttpP99
            | Metric::ConnP99 => 1e3,
            Metric::TcpReceived => 1e9,
        }
    }

    fn lower_is_better(self) -> bool {
        matches!(self, Metric::HttpP99 | Metric::ConnP99)
    }

    fn test(self) -> Test {
        match self {
            Metric::UdpForwarded | Metric::UdpReceived | Metric::UdpSent => Test::Pps,
            Metric::TcpReceived => Test::Tcp,
            Metric::HttpRate | Metric::HttpP99 => Test::Http,
            Metric::ConnRate | Metric::ConnP99 => Test::Conn,
        }
    }
}

/// Command-line options of `oxlb-perf e2e`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    pub runs: usize,
    pub seconds: u32,
    /// Which tests run, indexed like TESTS.
    tests: [bool; 4],
}

impl Options {
    /// Parses `[--runs N] [--seconds S] [--only pps,tcp,http,conn]`.
    pub fn parse(args: &[String]) -> Result<Options, String> {
        let mut opts = Options {
            runs: 5,
            seconds: 5,
            tests: [true; 4],
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
            let bad = |e: std::num::ParseIntError| format!("{flag} {value}: {e}");
            match flag.as_str() {
                "--runs" => opts.runs = value.parse().map_err(bad)?,
                "--seconds" => opts.seconds = value.parse().map_err(bad)?,
                "--only" => {
                    opts.tests = [false; 4];
                    for name in value.split(',').filter(|s| !s.is_empty()) {
                        let i = TESTS.iter().position(|t| t.name() == name).ok_or_else(|| {
                            format!("--only: unknown test {name:?}; tests are pps,tcp,http,conn")
                        })?;
                        opts.tests[i] = true;
                    }
                    if !opts.tests.contains(&true) {
                        return Err("--only needs at least one of pps,tcp,http,conn".into());
                    }
                }
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

    fn runs_test(self, test: Test) -> bool {
        TESTS
            .iter()
            .zip(self.tests)
            .any(|(&t, selected)| t == test && selected)
    }

    /// Upper bound of the whole run: every client at its timeout (iperf3 may retry once),
    /// plus oxlb's start and stop.
    fn deadline(self) -> Duration {
        let per_client = u64::from(self.seconds + CLIENT_SLACK_SECS) + 5;
        let clients: u64 = [
            (Test::Pps, 2),
            (Test::Tcp, 2),
            (Test::Http, 1),
            (Test::Conn, 1),
        ]
        .iter()
        .filter(|(t, _)| self.runs_test(*t))
        .map(|(_, n)| n)
        .sum();
        let per_round = SETUPS.len() as u64 * (clients * per_client + 60);
        Duration::from_secs(per_round * self.runs as u64 + 120)
    }
}

/// One wrk run's totals, from [`WRK_REPORT_LUA`].
#[derive(Debug, Clone, Copy, PartialEq)]
struct WrkReport {
    seconds: f64,
    /// Complete responses, whatever their status.
    requests: u64,
    connect_errors: u64,
    read_errors: u64,
    write_errors: u64,
    /// Responses other than 2xx/3xx.
    status_errors: u64,
    timeouts: u64,
    p99_us: f64,
}

impl WrkReport {
    /// The last line of wrk's stdout that parses as the script's JSON object.
    fn parse(stdout: &str) -> Option<WrkReport> {
        let json: Value = stdout
            .lines()
            .rev()
            .filter(|l| l.trim_start().starts_with('{'))
            .find_map(|l| serde_json::from_str(l).ok())?;
        let n = |k: &str| json[k].as_u64();
        Some(WrkReport {
            seconds: json["duration_us"].as_f64().filter(|&d| d > 0.0)? / 1e6,
            requests: n("requests")?,
            connect_errors: n("connect")?,
            read_errors: n("read")?,
            write_errors: n("write")?,
            status_errors: n("status")?,
            timeouts: n("timeout")?,
            p99_us: json["p99_us"].as_f64()?,
        })
    }

    fn ok_per_second(&self) -> f64 {
        self.requests.saturating_sub(self.status_errors) as f64 / self.seconds
    }

    fn errors(&self) -> u64 {
        self.connect_errors
            + self.read_errors
            + self.write_errors
            + self.status_errors
            + self.timeouts
    }

    fn errors_text(&self) -> String {
        format!(
            "{} requests, errors: connect {}, read {}, write {}, status {}, timeout {}",
            self.requests,
            self.connect_errors,
            self.read_errors,
            self.write_errors,
            self.status_errors,
            self.timeouts
        )
    }
}

/// Everything measured: `values[setup][metric]`, one entry per successful run.
#[derive(Default)]
struct Results {
    values: [[Vec<f64>; METRICS.len()]; SETUPS.len()],
    failures: Vec<String>,
    /// Measurements kept despite some errors (wrk's error counts).
    notes: Vec<String>,
    oxlb_totals: Vec<String>,
}

/// Runs the benchmark, prints the report and writes it to `perf/results/e2e-<timestamp>.txt`.
pub fn run(opts: Options, command_line: &str) {
    let started = Instant::now();
    let deadline = opts.deadline();
    let tests: Vec<&str> = TESTS
        .iter()
        .filter(|&&t| opts.runs_test(t))
        .map(|t| t.name())
        .collect();
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
        "wrk: {}",
        first_line(&command_output("wrk", &["-v"]))
    );
    let _ = writeln!(
        header,
        "{} runs x {} s per test ({}); rounds interleave {}; servers in b1: iperf3 \
         ({SERVER_IP}:{IPERF_PORT}), oxlb-perf-httpd ({SERVER_IP}:{HTTP_PORT}); clients in the \
         client namespace; wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS}",
        opts.runs,
        opts.seconds,
        tests.join(","),
        SETUPS.map(Setup::name).join(", "),
    );
    print!("{header}");

    let benches: Vec<Bench> = SETUPS.iter().map(|&s| s.build()).collect();
    let mut results = Results::default();
    'rounds: for round in 1..=opts.runs {
        for (si, bench) in benches.iter().enumerate() {
            if started.elapsed() > deadline {
                results.failures.push(format!(
                    "stopped at round {round}: the run exceeded {deadline:?}"
                ));
                break 'rounds;
            }
            let sample = measure_setup(bench, opts, round, &mut results);
            let mut line = format!("round {round}/{} {:<15}", opts.runs, bench.setup.name());
            for ((mi, metric), v) in METRICS.iter().enumerate().zip(sample) {
                if !opts.runs_test(metric.test()) {
                    continue;
                }
                if let Some(v) = v {
                    results.values[si][mi].push(v);
                }
                let _ = write!(
                    line,
                    " {} {},",
                    metric.short(),
                    fmt_opt(v, metric.unit(), 2)
                );
            }
            println!("{}", line.trim_end_matches(','));
        }
    }
    drop(benches);

    let body = render(&results, opts);
    let report = format!("{header}\n{body}");
    println!();
    print!("{body}");
    let path = write_report(&report);
    println!("written to {}", path.display());
}

/// One slot of a round: oxlb up (if it is this setup), the selected tests, oxlb down.
fn measure_setup(
    bench: &Bench,
    opts: Options,
    round: usize,
    results: &mut Results,
) -> [Option<f64>; METRICS.len()] {
    let (setup, topo, seconds) = (bench.setup, &bench.topo, opts.seconds);
    let oxlb = setup.is_oxlb().then(|| {
        let oxlb = topo.start_oxlb(&[]);
        for (proto, port, target, name) in [
            ("tcp", VIP_PORT, IPERF_PORT, "iperf"),
            ("udp", VIP_PORT, IPERF_PORT, "iperf"),
            ("tcp", VIP_HTTP_PORT, HTTP_PORT, "http"),
        ] {
            let body = service_body(proto, port, target, name);
            let (status, reply) = topo.api("POST", "/netlox/v1/config/loadbalancer", Some(&body));
            assert!(
                (200..300).contains(&status),
                "creating the {proto} service: HTTP {status}: {reply}\nrequest: {body}"
            );
        }
        oxlb
    });

    let mut failed = |what: &str, e: String| {
        let msg = format!("round {round} {} {what}: {e}", setup.name());
        eprintln!("{msg}");
        results.failures.push(msg);
    };
    let mut sample = [None; METRICS.len()];
    let mut set = |m: Metric, v: Option<f64>| {
        let i = METRICS.iter().position(|&x| x == m).expect("listed metric");
        sample[i] = v;
    };
    let mut wrk_notes = Vec::new();
    // TCP first and the UDP flood last: a flood that wedges a setup still leaves the others.
    if opts.runs_test(Test::Tcp) {
        match iperf(topo, setup, seconds, &[]) {
            Ok(j) => set(
                Metric::TcpReceived,
                j["end"]["sum_received"]["bits_per_second"].as_f64(),
            ),
            Err(e) => failed("tcp", e),
        }
    }
    for (test, close, rate, p99) in [
        (Test::Http, false, Metric::HttpRate, Metric::HttpP99),
        (Test::Conn, true, Metric::ConnRate, Metric::ConnP99),
    ] {
        if !opts.runs_test(test) {
            continue;
        }
        match wrk(bench, seconds, close) {
            Ok(r) => {
                if r.errors() > 0 {
                    wrk_notes.push(format!(
                        "round {round} {} {}: {}",
                        setup.name(),
                        test.name(),
                        r.errors_text()
                    ));
                }
                set(rate, Some(r.ok_per_second()));
                set(p99, Some(r.p99_us));
            }
            Err(e) => failed(test.name(), e),
        }
    }
    if opts.runs_test(Test::Pps) {
        let before = backend_rx_packets(topo);
        match iperf(topo, setup, seconds, &["-u", "-l", UDP_PAYLOAD, "-b", "0"]) {
            Ok(j) => {
                let secs = j["end"]["sum_sent"]["seconds"]
                    .as_f64()
                    .filter(|&t| t > 0.0);
                let forwarded = match (before, backend_rx_packets(topo), secs) {
                    (Some(a), Some(b), Some(t)) => Some(b.saturating_sub(a) as f64 / t),
                    _ => None,
                };
                set(Metric::UdpForwarded, forwarded);
                set(Metric::UdpReceived, udp_rate(&j, "sum_received", true));
                set(Metric::UdpSent, udp_rate(&j, "sum_sent", false));
            }
            Err(e) => failed("udp", e),
        }
    }
    results.notes.append(&mut wrk_notes);

    if let Some(oxlb) = oxlb {
        oxlb.stop();
        let log = std::fs::read_to_string(topo.scratch_dir().join("oxlb.log")).unwrap_or_default();
        let totals = log
            .lines()
            .find_map(|l| l.find("totals:").map(|i| l[i..].to_string()))
            .unwrap_or_else(|| "no totals line in oxlb's log".to_string());
        println!("round {round} {} {totals}", setup.name());
        results
            .oxlb_totals
            .push(format!("round {round} {}: {totals}", setup.name()));
    }
    sample
}

/// Frames received so far by b1's interface (the kernel's own count, before any socket).
fn backend_rx_packets(topo: &Topology) -> Option<u64> {
    let out = topo.exec(
        Node::Backend(1),
        &["cat", "/sys/class/net/eth0/statistics/rx_packets"],
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// The loxilb-compatible body of one service VIP:port -> b1:target, DNAT, round robin.
fn service_body(protocol: &str, port: u16, target: u16, name: &str) -> String {
    serde_json::json!({
        "serviceArguments": {
            "externalIP": VIP,
            "port": port,
            "protocol": protocol,
            "sel": 0,
            "mode": 0,
            "name": name,
        },
        "endpoints": [{"endpointIP": SERVER_IP, "targetPort": target, "weight": 1}],
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

/// wrk from the client against the HTTP server in b1, for `seconds`, keep-alive unless
/// `close`. A run that completed no successful request is a failure; one with some errors is
/// kept (the caller notes them), as wrk's rate already counts only completed requests.
fn wrk(bench: &Bench, seconds: u32, close: bool) -> Result<WrkReport, String> {
    let (ip, port) = bench.setup.target(HTTP_PORT);
    let url = format!("http://{ip}:{port}/");
    let (duration, limit) = (
        format!("{seconds}s"),
        (seconds + CLIENT_SLACK_SECS).to_string(),
    );
    let mut args = vec![
        "timeout",
        "-k",
        "5",
        &limit,
        "wrk",
        "-t",
        WRK_THREADS,
        "-c",
        WRK_CONNECTIONS,
        "-d",
        &duration,
        "--timeout",
        WRK_TIMEOUT,
        "--latency",
        "-s",
        path_str(&bench.lua),
    ];
    if close {
        args.extend_from_slice(&["-H", "Connection: close"]);
    }
    args.push(&url);
    let out = bench.topo.exec(Node::Client, &args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = WrkReport::parse(&stdout).ok_or_else(|| {
        format!(
            "wrk exited {} without its report; stdout: {}; stderr: {}",
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })?;
    if report.ok_per_second() <= 0.0 {
        return Err(format!(
            "no successful request to {url}: {}; server log: {:?}",
            report.errors_text(),
            bench.httpd.log().trim()
        ));
    }
    Ok(report)
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
    let _server = start_iperf_server(topo)?;
    let (ip, port) = setup.target(IPERF_PORT);
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
fn start_iperf_server(topo: &Topology) -> Result<ChildGuard, String> {
    let port = IPERF_PORT.to_string();
    let mut server = topo.spawn(
        Node::Backend(1),
        &["iperf3", "-s", "-1", "-p", &port],
        "iperf3-server",
    );
    wait_listening(topo, &mut server, IPERF_PORT)?;
    Ok(server)
}

/// Waits (bounded) until something in b1 listens on TCP `port`; fails if `server` exits first.
fn wait_listening(topo: &Topology, server: &mut ChildGuard, port: u16) -> Result<(), String> {
    let filter = format!("sport = :{port}");
    let deadline = Instant::now() + SERVER_READY_TIMEOUT;
    loop {
        if let Some(status) = server.try_wait() {
            return Err(format!(
                "the server for port {port} exited ({status}): {}",
                server.log()
            ));
        }
        let ss = topo.exec(Node::Backend(1), &["ss", "-Hltn", &filter]);
        if !String::from_utf8_lossy(&ss.stdout).trim().is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "nothing listened on {port} within {SERVER_READY_TIMEOUT:?}"
            ));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// One table per metric (median, min, max, ratios of medians), then oxlb's counters, wrk's
/// error counts and any failures.
fn render(r: &Results, opts: Options) -> String {
    let mut out = String::new();
    for (mi, metric) in METRICS.iter().enumerate() {
        if !opts.runs_test(metric.test()) {
            continue;
        }
        let summaries: Vec<Option<Summary>> = SETUPS
            .iter()
            .enumerate()
            .map(|(si, _)| Summary::of(&r.values[si][mi]))
            .collect();
        out.push_str(&render_table(*metric, &r.values, mi, &summaries));
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "ratios are of medians, row / column; for latency, below 1 is better"
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "oxlb counters at each stop (from its log):");
    for t in &r.oxlb_totals {
        let _ = writeln!(out, "  {t}");
    }
    if !r.notes.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(out, "wrk runs kept despite errors (rates count only 2xx):");
        for n in &r.notes {
            let _ = writeln!(out, "  {n}");
        }
    }
    if !r.failures.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(out, "failed measurements (left out of the tables):");
        for f in &r.failures {
            let _ = writeln!(out, "  {f}");
        }
    }
    out
}

fn render_table(
    metric: Metric,
    values: &[[Vec<f64>; METRICS.len()]; SETUPS.len()],
    mi: usize,
    summaries: &[Option<Summary>],
) -> String {
    let mut out = String::new();
    let better = if metric.lower_is_better() {
        "lower is better"
    } else {
        "higher is better"
    };
    let _ = writeln!(out, "{}; {better}", metric.label());
    let _ = writeln!(
        out,
        "  {:<15} {:>3} {:>10} {:>10} {:>10} {:>13} {:>12}",
        "setup", "n", "median", "min", "max", "/ kernel-fw", "/ nft-dnat"
    );
    let median = |si: usize| summaries[si].map(|s| s.median);
    for (si, setup) in SETUPS.iter().enumerate() {
        let s = summaries[si];
        let cell = |x: Option<f64>| fmt_opt(x, metric.unit(), 2);
        let ratio = |reference: usize| match (median(si), median(reference)) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
            _ => "-".to_string(),
        };
        let _ = writeln!(
            out,
            "  {:<15} {:>3} {:>10} {:>10} {:>10} {:>13} {:>12}",
            setup.name(),
            values[si][mi].len(),
            cell(s.map(|s| s.median)),
            cell(s.map(|s| s.min)),
            cell(s.map(|s| s.max)),
            ratio(KERNEL),
            ratio(NFT),
        );
    }
    out
}

fn fmt_opt(x: Option<f64>, unit: f64, decimals: usize) -> String {
    x.map_or_else(|| "-".to_string(), |x| format!("{:.*}", decimals, x / unit))
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
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
    fn options_default_to_five_runs_of_five_seconds_of_every_test_and_reject_unknown_flags() {
        let all = Options::parse(&[]).unwrap();
        assert_eq!((all.runs, all.seconds), (5, 5));
        assert!(TESTS.iter().all(|&t| all.runs_test(t)));
        let some = Options::parse(&args("--seconds 3 --runs 2")).unwrap();
        assert_eq!((some.runs, some.seconds), (2, 3));
        assert!(Options::parse(&args("--runs")).is_err());
        assert!(Options::parse(&args("--runs 0")).is_err());
        assert!(Options::parse(&args("--fast 1")).is_err());
    }

    #[test]
    fn only_selects_the_named_tests_and_rejects_unknown_or_empty_lists() {
        let o = Options::parse(&args("--only http,conn")).unwrap();
        assert!(o.runs_test(Test::Http) && o.runs_test(Test::Conn));
        assert!(!o.runs_test(Test::Pps) && !o.runs_test(Test::Tcp));
        assert!(o.deadline() < Options::parse(&[]).unwrap().deadline());
        assert!(Options::parse(&args("--only http,udp")).is_err());
        assert!(Options::parse(&args("--only ,")).is_err());
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

    #[test]
    fn wrk_report_is_the_scripts_json_line_among_wrks_human_output() {
        let stdout = "Running 5s test @ http://198.18.100.1:80/\n  2 threads and 32 connections\n\
            {not json\n\
            {\"duration_us\":5000000,\"requests\":100000,\"connect\":0,\"read\":2,\"write\":0,\
            \"status\":1000,\"timeout\":3,\"p50_us\":300,\"p99_us\":1200}\n\
            Requests/sec:  20000.00\n";
        let r = WrkReport::parse(stdout).unwrap();
        assert_eq!(r.seconds, 5.0);
        assert_eq!(r.ok_per_second(), 19_800.0);
        assert_eq!(r.p99_us, 1200.0);
        assert_eq!(r.errors(), 1005);
        assert_eq!(WrkReport::parse("Requests/sec: 1\n"), None);
        let zero_time = "{\"duration_us\":0,\"requests\":0,\"connect\":0,\"read\":0,\"write\":0,\
            \"status\":0,\"timeout\":0,\"p50_us\":0,\"p99_us\":0}";
        assert_eq!(WrkReport::parse(zero_time), None);
    }

    #[test]
    fn only_kernel_forwarding_bypasses_the_vip_and_http_has_its_own_vip_port() {
        assert_eq!(
            Setup::KernelForward.target(HTTP_PORT),
            (SERVER_IP, HTTP_PORT)
        );
        assert_eq!(Setup::NftDnat.target(HTTP_PORT), (VIP, VIP_HTTP_PORT));
        assert_eq!(Setup::Oxlb2Queues.target(IPERF_PORT), (VIP, VIP_PORT));
        assert_eq!(SETUPS[KERNEL], Setup::KernelForward);
        assert_eq!(SETUPS[NFT], Setup::NftDnat);
    }
}
