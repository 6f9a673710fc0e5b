#!/usr/bin/env bash
# Installs the Python tools the checks use into the project-local virtual
# environment (.venv at the repository root, the one install-envoy.sh uses):
#
#   kubernetes-validate  validates the manifests in deploy/ against the
#                        Kubernetes OpenAPI schemas, offline (the schemas ship
#                        inside the package); run by scripts/validate-deploy.sh.
#
# Idempotent: does nothing when .venv already has the pinned version. Override
# the version with KUBERNETES_VALIDATE_VERSION, the interpreter with PYTHON.
set -euo pipefail

KUBERNETES_VALIDATE_VERSION="${KUBERNETES_VALIDATE_VERSION:-1.37.0}"
PYTHON="${PYTHON:-python3}"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${root}/.venv"
tool="${venv}/bin/kubernetes-validate"

installed_version() {
  # The distribution's own metadata: `kubernetes-validate --version` prints
  # the same number, but importing the package is not needed to read it.
  if [[ -x "${venv}/bin/python" && -x "${tool}" ]]; then
    "${venv}/bin/python" -c 'import importlib.metadata as m; print(m.version("kubernetes-validate"))' 2>/dev/null || true
  fi
}

if [[ "$(installed_version)" == "${KUBERNETES_VALIDATE_VERSION}" ]]; then
  echo "kubernetes-validate ${KUBERNETES_VALIDATE_VERSION} already installed: ${tool}"
  exit 0
fi

if [[ ! -x "${venv}/bin/python" ]]; then
  echo "creating virtual environment ${venv}"
  "${PYTHON}" -m venv "${venv}"
fi

echo "installing kubernetes-validate==${KUBERNETES_VALIDATE_VERSION} into ${venv}"
"${venv}/bin/python" -m pip install --disable-pip-version-check --quiet "kubernetes-validate==${KUBERNETES_VALIDATE_VERSION}"

got="$(installed_version)"
if [[ "${got}" != "${KUBERNETES_VALIDATE_VERSION}" ]]; then
  echo "error: ${venv} has kubernetes-validate '${got}', expected ${KUBERNETES_VALIDATE_VERSION}" >&2
  exit 1
fi

echo "kubernetes-validate ${KUBERNETES_VALIDATE_VERSION} installed: ${tool}"
