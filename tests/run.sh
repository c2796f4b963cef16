#!/usr/bin/env bash
# Everything CI checks: dependencies, build, formatting, lints, unit and end-to-end tests.
# The end-to-end tests need root (network namespaces, XDP). Runs every step even after a
# failure, prints a summary, exits non-zero if any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."

# Sourced so a cargo it finds outside PATH stays on PATH; it turns on -e, undone here.
source deploy/setup.sh || exit 1
set +e

declare -a names=() results=()
failed=0
step() {
    local name=$1
    shift
    echo
    echo "==> $name: $*"
    if "$@"; then
        results+=("ok")
    else
        results+=("FAILED")
        failed=1
    fi
    names+=("$name")
}

step build cargo build --release --workspace --all-targets
step fmt cargo fmt --all -- --check
step clippy cargo clippy --release --workspace --all-targets -- -D warnings
if [[ ${results[0]} == ok ]]; then
    step test cargo test --release --workspace
else
    names+=("test")
    results+=("skipped (build failed)")
fi

echo
echo "==> summary"
for i in "${!names[@]}"; do
    printf '    %-7s %s\n' "${names[$i]}" "${results[$i]}"
done
leftover=$(ip netns list 2>/dev/null | grep -cE '^(oxt[0-9]+|oxdemo)-' || true)
if [[ $leftover -ne 0 ]]; then
    echo "    warning: $leftover test namespaces left behind (ip netns list)"
fi
exit $failed
