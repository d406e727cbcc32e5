#!/usr/bin/env bash
# Builds the real KServe controller and agent (github.com/kserve/kserve cmd/manager and cmd/agent, the version in
# tools/kserve/go.mod) for the real node's tests (tests/support/kserve.py) and caches them outside the repo, keyed
# by version. Prints the cache directory, which holds `manager` and `agent`. (The CRDs, ConfigMap and webhook
# configurations come from the same module in the Go module cache: tests/support/crds.py.)
# A warm machine returns at once; a cold one downloads the module's dependencies and compiles (~3-5 min on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."

KSERVE_VERSION=$(awk '/^require github.com\/kserve\/kserve/ {print $3}' tools/kserve/go.mod)
cache=${SHEPHERD_CACHE:-$HOME/.cache/shepherd}/kserve-${KSERVE_VERSION}
mkdir -p "$cache"

command -v go >/dev/null || { echo "error: Go is needed to build the KServe controller (https://go.dev/dl)" >&2; exit 1; }
exec 9>"$cache/.lock"
command -v flock >/dev/null && flock 9 || true

if [ ! -x "$cache/manager" ]; then
  echo "==> building the KServe $KSERVE_VERSION controller into $cache (once per machine)" >&2
  (cd tools/kserve && go build -trimpath -o "$cache/manager.tmp" github.com/kserve/kserve/cmd/manager)
  mv "$cache/manager.tmp" "$cache/manager"
fi
# The agent runs in the predictor pods, from an image holding nothing else: a static binary.
if [ ! -x "$cache/agent" ]; then
  echo "==> building the KServe $KSERVE_VERSION agent (the payload logger) into $cache (once per machine)" >&2
  (cd tools/kserve && CGO_ENABLED=0 go build -trimpath -o "$cache/agent.tmp" github.com/kserve/kserve/cmd/agent)
  mv "$cache/agent.tmp" "$cache/agent"
fi
echo "$cache"
