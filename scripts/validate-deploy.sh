#!/usr/bin/env bash
# Validates every Kubernetes object in deploy/ (every *.yaml and *.yml below
# it, deploy/crds/ included) offline, with no cluster:
#
#   1. the YAML parses and no mapping repeats a key (PyYAML, which
#      kubernetes-validate reads with, would silently keep the last one);
#   2. kubernetes-validate --strict against the Kubernetes OpenAPI schemas of
#      each version in KUBERNETES_VERSIONS: unknown fields (a typo such as
#      `replicass`) and wrong types are errors;
#   3. every object has a schema: kubernetes-validate only warns, and passes,
#      when it has none (a custom resource, or a typo in kind or apiVersion);
#      deploy/ holds no custom resources, so here that is an error too;
#   4. every file holds at least one object.
#
# What it does not check: the schemas inside our CRDs beyond their outline
# (crds/tests/ does: generated from the types, structural), CEL expressions,
# or anything only an API server knows (names, references, admission).
#
# Usage: scripts/validate-deploy.sh [DIR]   (default: deploy/)
# Needs scripts/install-tools.sh first. KUBERNETES_VERSIONS overrides the
# versions: by default the oldest Kubernetes these manifests support
# (ValidatingAdmissionPolicy v1 needs 1.30, PodDisruptionBudget's
# unhealthyPodEvictionPolicy 1.31) and the newest the pinned tool knows.
# Exits 1 if any file fails, naming the file and the error; the last line is
# `deploy: N passed, N failed` (files).
set -euo pipefail

KUBERNETES_VERSIONS="${KUBERNETES_VERSIONS:-1.33.0 1.37.0}"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${root}/.venv"
tool="${venv}/bin/kubernetes-validate"
dir="${1:-${root}/deploy}"

if [[ ! -x "${tool}" ]]; then
  echo "error: ${tool} not found: run scripts/install-tools.sh first" >&2
  exit 2
fi
if [[ ! -d "${dir}" ]]; then
  echo "error: ${dir} is not a directory" >&2
  exit 2
fi

files=()
while IFS= read -r -d '' f; do
  files+=("${f}")
done < <(find "${dir}" -type f \( -name '*.yaml' -o -name '*.yml' \) -print0 | sort -z)
if ((${#files[@]} == 0)); then
  echo "error: no YAML files under ${dir}" >&2
  exit 2
fi

version_args=()
for v in ${KUBERNETES_VERSIONS}; do
  version_args+=(-k "${v}")
done

# Parse errors and repeated keys, one line per problem, nothing when clean.
duplicate_keys() {
  "${venv}/bin/python" - "$1" <<'PY'
import sys
import yaml

class Duplicate(Exception):
    pass

class Loader(yaml.SafeLoader):
    pass

def mapping(loader, node, deep=False):
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise Duplicate("line %d: duplicate key %r (first at line %d)" % (line, key, seen[key]))
        seen[key] = line
    return loader.construct_mapping(node, deep=deep)

Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
try:
    with open(sys.argv[1]) as f:
        for _ in yaml.load_all(f, Loader=Loader):
            pass
except (Duplicate, yaml.YAMLError) as e:
    print("ERROR %s: %s" % (sys.argv[1], " ".join(str(e).split())))
PY
}

passed=0
failed=0
for f in "${files[@]}"; do
  rel="${f#"${root}"/}"
  problems="$(duplicate_keys "${f}")"
  out=""
  rc=0
  if [[ -z "${problems}" ]]; then
    out="$("${tool}" --strict "${version_args[@]}" "${f}" 2>&1)" || rc=$?
    # A WARN is an object without a schema: see 3. above.
    problems="$(grep -v '^INFO ' <<<"${out}" || true)"
    if ((rc != 0)) && [[ -z "${problems}" ]]; then
      problems="kubernetes-validate exited ${rc}"
    fi
  fi
  objects=$(grep -c '^INFO ' <<<"${out}" || true)
  if [[ -z "${problems}" ]] && ((objects == 0)); then
    problems="no Kubernetes object in the file"
  fi
  if [[ -n "${problems}" ]]; then
    echo "FAIL ${rel}"
    sed 's/^/  /' <<<"${problems}"
    failed=$((failed + 1))
  else
    echo "ok   ${rel}: $(grep -Eo 'resource [^ ]+' <<<"${out}" | sort -u | cut -d' ' -f2 | paste -sd, -)"
    passed=$((passed + 1))
  fi
done

echo "validated against Kubernetes ${KUBERNETES_VERSIONS// /, } (kubernetes-validate $("${tool}" --version), strict)"
echo "deploy: ${passed} passed, ${failed} failed"
((failed == 0))
