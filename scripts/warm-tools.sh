#!/usr/bin/env bash
# Fetches or builds every pinned tool the test suite uses, one after another, in the order the suite
# needs them last-first-built: the cluster binaries (the longest build), kubectl and helm, the KServe
# controller, then the infrastructure linters. `make test` starts it in the background next to the image
# build, so a cold machine builds its tools while the tests that need none run; a test that needs a tool
# before it is ready waits on that tool's lock (each script below builds under a lock and renames when
# done). A warm machine returns in about a second.
#
#   scripts/warm-tools.sh        log lines go to stderr; a failure names the tool and goes on to the next
#
# A tool that fails here fails again, with its message, in the test that needs it: nothing is skipped.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

status=0
step() {
  local started=$SECONDS
  if "$@" >/dev/null; then
    echo "==> ready: $* ($((SECONDS - started)) s)" >&2
  else
    echo "error: $* failed; the tests that need it will say why" >&2
    status=1
  fi
}

step scripts/cluster-tools.sh
step scripts/go-tools.sh kubectl
step scripts/go-tools.sh helm
step scripts/kserve-tools.sh
step scripts/go-tools.sh checkov
step scripts/go-tools.sh hadolint
step scripts/infra-tools.sh hcl2-python
step scripts/infra-tools.sh shellcheck
step scripts/infra-tools.sh actionlint
step scripts/infra-tools.sh tofu
exit $status
