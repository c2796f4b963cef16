//! Benchmarks of oxlb.
//!
//! - `engine [runs] [flows]`: the packet engine's own cost in memory, one core.
//! - `e2e [--runs N] [--seconds S] [--only pps,tcp,http,conn]`: small-packet pps and TCP
//!   throughput (iperf3), HTTP requests/s and new connections/s with p99 (wrk) through kernel
//!   forwarding, nftables DNAT, oxlb and oxlb with two queues on the demo topology, interleaved in
//!   one run (needs root, iperf3, wrk, nftables; see `perf/e2e.sh`).
//! - `ownership [runs] [flows] [seconds]`: how a packet meets its flow's state when RSS spreads
//!   a flow over two workers: oxlb's hand-off rings against a shared sharded table.
//! - `scale [runs]`: how the engine's pps and memory grow with tracked flows and services.

mod e2e;
mod engine;
mod ownership;
mod scale;
mod summary;

const USAGE: &str = "usage: oxlb-perf engine [runs] [flows]\n       \
                     oxlb-perf e2e [--runs N] [--seconds S] [--only pps,tcp,http,conn]\n       \
                     oxlb-perf ownership [runs] [flows] [seconds]\n       \
                     oxlb-perf scale [runs]";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str).unwrap_or("engine") {
        "engine" => {
            let runs: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
            let flows: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(10_000);
            engine::run(runs, flows);
        }
        "ownership" => {
            let runs: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
            let flows: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(100_000);
            let secs: f64 = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(1.0);
            ownership::run(runs, flows, secs);
        }
        "scale" => scale::main(&args[2..]),
        "e2e" => match e2e::Options::parse(&args[2..]) {
            Ok(opts) => e2e::run(opts, &args.join(" ")),
            Err(e) => {
                eprintln!("oxlb-perf e2e: {e}\n{USAGE}");
                std::process::exit(2);
            }
        },
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    }
}
