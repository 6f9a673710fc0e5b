#!/usr/bin/env bash
# Installs the system tools that traffic capture needs, when missing:
#
#   iptables   iptables-save and iptables-restore program a pod's nat table
#              (`xds-server iptables`, the `up --capture iptables` runner);
#   iproute2   `ip netns` and veth links for the runner and its tests.
#
# Debian and Ubuntu packages, through apt-get; needs root. Without root (or
# without apt-get) it says what is missing and exits 0: the tests that need
# these tools decide for themselves (they fail, unless XDS_SKIP_ROOT=1
# outside CI, see tests/src/root_rule.rs).
set -euo pipefail

have() {
  command -v "$1" >/dev/null 2>&1 || [[ -x "/usr/sbin/$1" || -x "/sbin/$1" ]]
}

missing=()
have iptables-restore && have iptables-save || missing+=(iptables)
have ip || missing+=(iproute2)
if ((${#missing[@]} == 0)); then
  echo "iptables and iproute2 already installed"
  exit 0
fi
if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
  echo "note: ${missing[*]} missing and cannot be installed here (needs root and apt-get):" \
    "the tests that program iptables will say so" >&2
  exit 0
fi
echo "installing ${missing[*]} with apt-get"
export DEBIAN_FRONTEND=noninteractive
# The package lists may be absent (a fresh container): update once and retry.
apt-get install -y --no-install-recommends "${missing[@]}" ||
  { apt-get update && apt-get install -y --no-install-recommends "${missing[@]}"; }
have iptables-restore && have ip || {
  echo "error: ${missing[*]} still missing after apt-get install" >&2
  exit 1
}
echo "installed ${missing[*]}"
