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

# schemathesis (PyPI), which tests/tests/api_schemathesis.rs runs against a real oxlb, in a venv
# of its own so Debian's python stays untouched (python3-venv from deploy/setup.sh). Idempotent:
# pip runs only while the pinned version is missing. OXLB_TEST_VENV moves the venv.
SCHEMATHESIS_VERSION=4.32.5
export OXLB_TEST_VENV=${OXLB_TEST_VENV:-/opt/oxlb-test-venv}
export OXLB_SCHEMATHESIS=$OXLB_TEST_VENV/bin/schemathesis
schemathesis_venv() {
    if "$OXLB_TEST_VENV/bin/python" -c "import importlib.metadata as m, sys
sys.exit(m.version('schemathesis') != '$SCHEMATHESIS_VERSION')" 2>/dev/null; then
        echo "schemathesis $SCHEMATHESIS_VERSION already in $OXLB_TEST_VENV"
        return 0
    fi
    python3 -m venv "$OXLB_TEST_VENV" &&
        "$OXLB_TEST_VENV/bin/pip" install --quiet --disable-pip-version-check \
            "schemathesis==$SCHEMATHESIS_VERSION"
}
step schemathesis-venv schemathesis_venv
if [[ ${results[0]} == ok ]]; then
    step test cargo test --release --workspace
else
    names+=("test")
    results+=("skipped (build failed)")
fi

# Kubernetes manifests: every YAML in deploy/kube/ against the 1.32 schemas, offline; the
# script installs kubernetes-validate into its own venv under target/ the first time.
kube_manifests() {
    bash deploy/kube/validate.sh
}
step kube-manifests kube_manifests

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
