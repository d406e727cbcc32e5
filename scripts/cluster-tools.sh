#!/usr/bin/env bash
# Builds the binaries of the cluster test harness from Go modules and caches them outside the repo,
# keyed by version: etcd and kube-apiserver (the envtest pattern), and for the real node (tests/support/node.py)
# the kubelet, kube-controller-manager, kube-scheduler, kube-proxy and the pod sandbox's `pause`.
# Prints the cache directory. A warm machine returns at once; a cold one compiles (~10-20 min on 2 cores; the
# node's commands share most packages with kube-apiserver: about a minute each after it).
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION=$(awk '/^require k8s.io\/kubernetes/ {print $3}' tools/cluster/go.mod)
ETCD_VERSION=$(awk '/^require go.etcd.io\/etcd\/server\/v3/ {print $3}' tools/etcd/go.mod)
cache=${SHEPHERD_CACHE:-$HOME/.cache/shepherd}/cluster-k8s-${K8S_VERSION}-etcd-${ETCD_VERSION}
mkdir -p "$cache"

command -v go >/dev/null || { echo "error: Go is needed to build the cluster test binaries (https://go.dev/dl)" >&2; exit 1; }
# One builder per cache: two checkouts testing at once on one machine (a CI run beside a developer's)
# would otherwise compile into the same .tmp file and move it from under each other.
exec 9>"$cache/.lock"
command -v flock >/dev/null && flock 9 || true

if [ ! -x "$cache/etcd" ]; then
  echo "==> building etcd $ETCD_VERSION into $cache (once per machine)" >&2
  (cd tools/etcd && go build -trimpath -o "$cache/etcd.tmp" go.etcd.io/etcd/server/v3) && mv "$cache/etcd.tmp" "$cache/etcd"
fi
minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
pkg=k8s.io/component-base/version
for command in kube-apiserver kubelet kube-controller-manager kube-scheduler kube-proxy; do
  if [ ! -x "$cache/$command" ]; then
    echo "==> building $command $K8S_VERSION into $cache (once per machine)" >&2
    (cd tools/cluster && go build -trimpath \
        -ldflags "-X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor" \
        -o "$cache/$command.tmp" "k8s.io/kubernetes/cmd/$command") \
      && mv "$cache/$command.tmp" "$cache/$command"
  fi
done
if [ ! -x "$cache/pause" ]; then
  (cd tools/pause && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$cache/pause.tmp" .) && mv "$cache/pause.tmp" "$cache/pause"
fi
echo "$cache"
