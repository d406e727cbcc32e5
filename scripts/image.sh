#!/usr/bin/env bash
# Builds the one Shepherd image from the repo's Dockerfile on a machine without a Docker daemon or a
# registry (this project's CI machines), with Debian's buildah and podman:
#
#   1. the base: the published default is python:3.11-slim-bookworm; where no registry can be reached, a
#      Debian bookworm root filesystem made from Debian's packages with mmdebstrap (python3 is 3.11
#      there too), imported as localhost/shepherd-base:<key> and passed as the Dockerfile's PYTHON_IMAGE;
#   2. the image: `buildah bud --isolation chroot --layers` (no OCI runtime needed to build), tagged
#      localhost/shepherd:<key> and as components/platform.py's PLATFORM_IMAGE.
#
# Cached by key: the base by its recipe (its rootfs tarball under $SHEPHERD_CACHE), the image by the
# base, the Dockerfile, the constraints and the code. A warm machine with an unchanged tree builds
# nothing. Prints the image reference on its last line.
#
#   scripts/image.sh                  build (or reuse) the image
#   SHEPHERD_BASE_IMAGE=python:3.11-slim-bookworm scripts/image.sh    build on a pulled base instead
set -euo pipefail
cd "$(dirname "$0")/.."

cache=${SHEPHERD_CACHE:-$HOME/.cache/shepherd}
image=$(sed -n 's/^PLATFORM_IMAGE = os.environ.get("SHEPHERD_IMAGE", "\(.*\)")$/\1/p' components/platform.py)
[ -n "$image" ] || { echo "error: no PLATFORM_IMAGE in components/platform.py" >&2; exit 1; }
suite=bookworm
base_packages=python3,python3-venv,python-is-python3,ca-certificates,libgomp1
say() { echo "==> $*" >&2; }
mkdir -p "$cache"
# One build at a time per machine: `make test` starts one in the background and the image tests wait here.
exec 9>"$cache/image.lock"
flock 9

# -- tools and the three settings podman needs in this sandbox (../shared/notes/containers.md) -------
missing=()
for tool in podman buildah mmdebstrap runc; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} (Debian packages)"
  # Waits for dpkg's lock: `make test` installs its Debian packages at the same time.
  apt-get install -o DPkg::Lock::Timeout=1200 -y -qq podman buildah mmdebstrap runc >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -o DPkg::Lock::Timeout=1200 -y -qq podman buildah mmdebstrap runc >/dev/null; }
fi
conf=/etc/containers/containers.conf
if ! grep -qs "shepherd: sandbox settings" "$conf"; then
  mkdir -p /etc/containers
  # No CAP_SYS_RESOURCE here (rlimits cannot be set), cgroups in hybrid mode (crun refuses them), and
  # containers must reach servers on the host's loopback (MLflow, PostgreSQL) as pods reach Services.
  cat >"$conf" <<'EOF'
# shepherd: sandbox settings (scripts/image.sh)
[containers]
default_ulimits = []
netns = "host"

[engine]
runtime = "runc"
EOF
fi

# -- the base --------------------------------------------------------------------------------------
if [ -n "${SHEPHERD_BASE_IMAGE:-}" ]; then
  base=$SHEPHERD_BASE_IMAGE
  base_key=$(printf '%s' "$base" | sha256sum | cut -c1-16)
else
  base_key=$(printf '%s %s mmdebstrap-minbase' "$suite" "$base_packages" | sha256sum | cut -c1-16)
  base=localhost/shepherd-base:$suite-$base_key
  if ! podman image exists "$base"; then
    rootfs=$cache/image-base-$suite-$base_key.tar
    if [ ! -f "$rootfs" ]; then
      rm -rf "$rootfs" "$rootfs.tmp"  # a directory left by an older script or an interrupted run
      say "making a Debian $suite base from Debian's packages (once per machine, ~1 min)"
      mkdir -p "$cache"
      mmdebstrap --quiet --format=tar --variant=minbase --include="$base_packages" "$suite" "$rootfs.tmp" http://deb.debian.org/debian
      mv "$rootfs.tmp" "$rootfs"
    fi
    podman import --quiet "$rootfs" "$base" >/dev/null
  fi
fi

# -- the image ---------------------------------------------------------------------------------------
key=$( {
  echo "$base_key"
  find Dockerfile .dockerignore pyproject.toml constraints.txt README.md specs components pipelines serving monitoring \
    -type f ! -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum
} | sha256sum | cut -c1-16)
tagged=localhost/shepherd:$key
if podman image exists "$tagged"; then
  say "image $tagged is current (cached)"
else
  say "building $tagged from the Dockerfile on $base (cold: about 8 min; a code-only change: about 3 min, the dependency layers are reused)"
  # pip inside the build reaches the same index as this machine: its certificate authorities and settings.
  build_conf=$(mktemp -d)
  trap 'rm -rf "$build_conf"' EXIT
  cp /etc/ssl/certs/ca-certificates.crt "$build_conf/ca.crt"
  printf '[global]\ncert = /etc/shepherd-build/ca.crt\ndefault-timeout = 180\n' >"$build_conf/pip.conf"
  started=$(date +%s)
  buildah bud --quiet --isolation chroot --layers \
    --build-arg PYTHON_IMAGE="$base" \
    --build-arg REVISION="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    --volume "$build_conf:/etc/shepherd-build:ro" \
    --volume "$build_conf/pip.conf:/etc/pip.conf:ro" \
    -t "$tagged" . >&2
  say "built in $(( $(date +%s) - started )) s"
fi
podman tag "$tagged" "$image"
size=$(podman image inspect --format '{{.Size}}' "$tagged")
say "image $image ($tagged): $(( size / 1000000 )) MB"
echo "$image"
