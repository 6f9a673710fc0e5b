#!/usr/bin/env bash
# Validates what `xds-server inject` makes of the examples offline, against
# the Kubernetes OpenAPI schemas (the checks of scripts/validate-deploy.sh:
# strict kubernetes-validate for each Kubernetes version it names, no
# repeated keys, a schema for every object): an injected pod template must
# be one the API server would accept.
#
# Usage: scripts/validate-inject.sh [EXAMPLE_DIR...]
#   (default: examples/article/base examples/tcp-passthrough/base)
# Uses $XDS_SERVER_BIN, else builds xds-server (into $CARGO_TARGET_DIR or
# target/). Needs scripts/install-tools.sh first. The last line is
# `inject: N passed, N failed` (one per example); exits 1 if any fails.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${root}"

examples=("$@")
if ((${#examples[@]} == 0)); then
  examples=(examples/article/base examples/tcp-passthrough/base)
fi
bin="${XDS_SERVER_BIN:-}"
if [[ -z "${bin}" ]]; then
  cargo build --quiet -p xds-server --bin xds-server
  bin="${CARGO_TARGET_DIR:-${root}/target}/debug/xds-server"
fi

out="$(mktemp -d)"
trap 'rm -rf "${out}"' EXIT
passed=0
failed=0
for ex in "${examples[@]}"; do
  name="$(tr '/' '-' <<<"${ex%/}")"
  dir="${out}/${name}"
  mkdir -p "${dir}"
  if ! "${bin}" inject -f "${ex}" >"${dir}/injected.yaml" 2>"${dir}/inject.log"; then
    echo "FAIL ${ex}: xds-server inject failed:"
    sed 's/^/  /' "${dir}/inject.log"
    failed=$((failed + 1))
    continue
  fi
  rm "${dir}/inject.log"
  if log="$(bash scripts/validate-deploy.sh "${dir}" 2>&1)"; then
    echo "ok   ${ex}: injected output valid ($(grep -E '^ok ' <<<"${log}" | sed 's/^ok *[^:]*: //'))"
    passed=$((passed + 1))
  else
    echo "FAIL ${ex}: injected output rejected:"
    sed 's/^/  /' <<<"${log}"
    failed=$((failed + 1))
  fi
done
echo "inject: ${passed} passed, ${failed} failed"
((failed == 0))
