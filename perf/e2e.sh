#!/usr/bin/env bash
# End-to-end benchmark on the demo topology, four setups interleaved in one run: plain kernel
# forwarding, nftables DNAT, oxlb with one queue and oxlb with two queues (see `oxlb-perf e2e`).
# Tests: UDP 64 B pps and TCP throughput (iperf3), keep-alive HTTP requests/s and new
# connections/s with p99 latency (wrk). Needs root (network namespaces, XDP).
#
#   sudo bash perf/e2e.sh                      # --runs 5 --seconds 5, about 9 minutes
#   sudo bash perf/e2e.sh --runs 3 --seconds 3
#   sudo bash perf/e2e.sh --only http,conn     # any of pps,tcp,http,conn
#
# The tables are printed and written to perf/results/e2e-<timestamp>.txt. Namespaces are named
# oxperf-*; a run killed with SIGKILL leaves them, and the next run removes them.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $(id -u) -ne 0 ]]; then
    echo "e2e.sh must run as root (network namespaces, XDP): sudo bash $0" >&2
    exit 1
fi

missing=()
for tool in iperf3 wrk nft ip ss curl timeout sysctl ethtool; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
    echo "e2e.sh: missing ${missing[*]}; install them with: sudo bash deploy/setup.sh" >&2
    exit 1
fi

if ! command -v cargo >/dev/null 2>&1; then
    for d in "${HOME:-/root}/.cargo/bin" /root/.cargo/bin /usr/local/cargo/bin; do
        [[ -x "$d/cargo" ]] && export PATH="$d:$PATH" && break
    done
fi
command -v cargo >/dev/null 2>&1 || { echo "e2e.sh: cargo not found (see deploy/setup.sh)" >&2; exit 1; }

cargo build --release -p oxlb -p oxlb-perf

args=("$@")
((${#args[@]})) || args=(--runs 5 --seconds 5)
exec ./target/release/oxlb-perf e2e "${args[@]}"
