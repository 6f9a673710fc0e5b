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

# shellcheck source=lib/venv.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/venv.sh"
tool="${venv}/bin/kubernetes-validate"

installed_version() {
  # The distribution's own metadata: `kubernetes-validate --version` prints
  # the same number, but importing the package is not needed to read it.
  if [[ -x "${venv}/bin/python" && -x "${tool}" ]]; then
    "${venv}/bin/python" -c 'import importlib.metadata as m; print(m.version("kubernetes-validate"))' 2>/dev/null || true
  fi
}

venv_exit_if_installed kubernetes-validate "${KUBERNETES_VALIDATE_VERSION}" "${tool}"
venv_pip_install kubernetes-validate "${KUBERNETES_VALIDATE_VERSION}" "${venv} has kubernetes-validate"
echo "kubernetes-validate ${KUBERNETES_VALIDATE_VERSION} installed: ${tool}"
