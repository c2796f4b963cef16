#!/usr/bin/env bash
# Validates every YAML file in deploy/kube/ against the Kubernetes 1.32 schemas, offline, with
# kubernetes-validate (which ships the schemas). Installs it once into a venv under target/;
# later runs reuse it without touching the network. Strict: unknown fields are errors.
# Usage: bash deploy/kube/validate.sh
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
venv=${CARGO_TARGET_DIR:-$repo/target}/venv-kubernetes-validate
# Pinned: a new release could change the bundled schemas under us.
version=1.37.0
k8s=1.32

if ! "$venv/bin/kubernetes-validate" --version 2>/dev/null | grep -qx "$version"; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$version"
fi

shopt -s nullglob
files=("$repo"/deploy/kube/*.yaml "$repo"/deploy/kube/*.yml)
if [[ ${#files[@]} -eq 0 ]]; then
    echo "validate.sh: no YAML in deploy/kube/" >&2
    exit 1
fi
"$venv/bin/kubernetes-validate" --kubernetes-version "$k8s" --strict --quiet "${files[@]}"
echo "validate.sh: ${#files[@]} file(s) valid against Kubernetes $k8s"
