#!/usr/bin/env bash
# One command for a fresh Debian machine: install dependencies, build, run the demo.
set -euo pipefail
cd "$(dirname "$0")/.."

source deploy/setup.sh
cargo build --release --workspace
target_dir=${CARGO_TARGET_DIR:-target}
exec "$target_dir/release/oxlb-demo"
