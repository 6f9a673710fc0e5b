#!/usr/bin/env bash
# The scale benchmark (issue #13, BENCHMARKS.md). Builds the release
# binaries, then `xds-load bench`: generates the mesh, starts
# `xds-server serve` on it, connects the simulated sidecars (real ADS
# clients over mutual TLS that decode and ACK every response), measures
# the initial sync and the mesh-wide and one-namespace policy changes,
# stops the server, for state of the world and then delta; prints one
# table. Server and load share this machine (loopback only).
#
#   bash scripts/bench.sh                                  # 1,000 services, 2,000 proxies, SotW and delta
#   bash scripts/bench.sh --services 2000 --proxies 10000 --delta
#
# Every other flag goes to `xds-load bench` (`--help` lists them). Not part
# of scripts/test.sh: a benchmark is not a test.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${root}"
target="${CARGO_TARGET_DIR:-${root}/target}"
cargo build --release -p xds-server --bins >&2
exec "${target}/release/xds-load" bench --server-bin "${target}/release/xds-server" "$@"
