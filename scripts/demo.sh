#!/usr/bin/env bash
# The article's demo on real Envoy: installs the pinned Envoy (project-local
# .venv) if needed, builds, then runs the mesh once per policy stage and
# prints the sleep -> httpbin connectivity matrix of each.
#
# As root it runs the mesh as pods (`up --capture iptables`: network
# namespaces, Istio's iptables capture, the article's curl in each client
# pod); otherwise in the explicit-bind layout on loopback addresses, which
# needs no privilege. It says which.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${root}"

echo "==> installing the pinned Envoy (if needed)"
bash scripts/install-envoy.sh
capture=()
if [[ "$(id -u)" == 0 ]]; then
  bash scripts/install-iptables.sh
  capture=(--capture iptables)
  echo "==> running as root: every workload a pod with iptables capture (up --capture iptables)"
else
  echo "==> not root: the explicit-bind layout on loopback, no iptables (run as root for pods with iptables capture)"
fi
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
  "${bin}" up "${capture[@]}" examples/article/base ${dir} --once --from app=sleep --to app=httpbin
done
echo
echo "Expected matrices: examples/article/*/README.md. Run a stage live (matrix reprinted on every change):"
echo "  ${bin} up ${capture[*]} examples/article/base --from app=sleep --to app=httpbin"
