#!/usr/bin/env bash
# Long fuzzing of the packet path (not part of CI): installs cargo-fuzz if needed and runs the
# target for SECONDS (default 300) with the corpus kept in dataplane/fuzz/corpus/.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-300}
if ! rustup toolchain list | grep -q nightly; then
    echo "fuzzing needs a nightly toolchain (rustup toolchain install nightly)" >&2
    exit 1
fi
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
mkdir -p corpus/packet_path
cargo +nightly fuzz run packet_path corpus/packet_path -- -max_total_time="$seconds" -max_len=4096
