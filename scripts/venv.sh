#!/usr/bin/env bash
# Creates ./.venv for this checkout.
#
# The stack (KFP, KServe, MLflow, Feast, GE, Evidently: ~1.5 GB) is installed once per machine into a
# shared environment keyed by the hash of constraints.txt, under $SHEPHERD_CACHE (default
# ~/.cache/shepherd). Each checkout's .venv is a small venv that sees that environment's site-packages
# through a .pth file and holds only this checkout's editable install, so a fresh clone (CI) gets a
# working .venv in seconds on a warm machine and still builds everything on a cold one.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3
cache=${SHEPHERD_CACHE:-$HOME/.cache/shepherd}
key=$(cat constraints.txt | sha256sum | cut -c1-16)
stack="$cache/stack-$key"

mkdir -p "$cache"
# One installer per stack: a second checkout (a CI run beside a developer's `make venv`) waits here instead of
# removing the half-installed stack from under the first.
exec 9>"$cache/stack-$key.lock"
flock 9
if [ ! -f "$stack/.complete" ]; then
  echo "==> installing the Shepherd stack into $stack (once per machine, ~3-5 min)"
  rm -rf "$stack"
  "$python" -m venv "$stack"
  "$stack/bin/pip" install --quiet --upgrade pip
  "$stack/bin/pip" install --quiet -r constraints.txt
  touch "$stack/.complete"
fi

site=$("$stack/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [ ! -x .venv/bin/python ] || ! grep -qs "$site" .venv/shepherd-stack; then
  echo "==> creating .venv on top of $stack"
  rm -rf .venv
  "$python" -m venv .venv
  vsite=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "import site; site.addsitedir('$site')" > "$vsite/shepherd-stack.pth"
  echo "$site" > .venv/shepherd-stack
fi
# This checkout goes onto the path (like an editable install, without a build step) and gets its
# console script; both are rewritten each time so they always point here.
vsite=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$PWD" > "$vsite/shepherd-checkout.pth"
printf '#!%s\nfrom pipelines.cli import app\napp()\n' "$PWD/.venv/bin/python" > .venv/bin/shepherd
chmod +x .venv/bin/shepherd
.venv/bin/python -c "import kfp, mlflow, feast, great_expectations, kserve, components" \
  || { echo "error: .venv is broken; remove $stack and .venv and run 'make venv' again" >&2; exit 1; }
