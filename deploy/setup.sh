#!/usr/bin/env bash
# Installs what building, the demo and the tests need on a fresh Debian 12 machine.
# Idempotent: apt runs only when a package is missing. Non-interactive, works without a terminal.
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
    echo "setup.sh must run as root (it installs packages; the demo and tests create network namespaces): sudo bash $0" >&2
    exit 1
fi

packages=(
    # XDP program (clang -target bpf, asm/ headers) and vendored libxdp/libbpf for xsk-rs
    clang llvm libbpf-dev gcc-multilib libelf-dev zlib1g-dev m4 pkg-config make
    # topology, clients and comparison points used by the demo, tests and benchmarks
    iproute2 iputils-ping procps curl nftables ethtool iperf3 wrk python3-scapy
    # BGP peers of the appliance in tests/tests/bgp.rs
    bird2 gobgpd
    # the venv tests/run.sh installs schemathesis into (the API property test)
    python3-venv python3-pip
)

missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done

if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
else
    echo "setup: all ${#packages[@]} packages already installed"
fi

if ! command -v cargo >/dev/null 2>&1; then
    for d in "${HOME:-/root}/.cargo/bin" /root/.cargo/bin /usr/local/cargo/bin; do
        [[ -x "$d/cargo" ]] && export PATH="$d:$PATH" && break
    done
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo not found. The Rust toolchain (1.95, with rustfmt and clippy) is assumed preinstalled; install it and re-run." >&2
    exit 1
fi
echo "setup: $(cargo --version)"
