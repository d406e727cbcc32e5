"""The Shepherd image and containers started from it, as the chart runs them: uid 10001, a read-only
root filesystem, `/tmp` the only writable path. Built (or reused) by `scripts/image.sh`; podman runs
the containers on the host's network (containers.conf `netns = "host"`), so they reach servers on
loopback as pods reach Services. Outside CI a machine without podman skips with how to get it."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent
HOW_TO_GET = "Debian: scripts/image.sh installs podman, buildah, mmdebstrap and runc with apt-get and builds the image"


@cache
def _build() -> str:
    """The image reference, or 'error: ...'."""
    try:
        result = subprocess.run(
            [str(REPO / "scripts" / "image.sh")], capture_output=True, text=True, timeout=3600, cwd=REPO, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"error: scripts/image.sh did not run: {exc}"
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        return f"error: scripts/image.sh failed: {result.stderr.strip()[-2000:]}"
    return lines[-1]


def shepherd_image() -> str:
    """The image built from this checkout; fails in CI, skips elsewhere, when it cannot be built."""
    if not os.environ.get("CI") and not (shutil.which("podman") or shutil.which("apt-get")):
        pytest.skip(f"no podman here; {HOW_TO_GET}")
    image = _build()
    if image.startswith("error: "):
        if os.environ.get("CI"):
            pytest.fail(f"{image[7:]} (CI runs every test)")
        pytest.skip(f"{image[7:]}; {HOW_TO_GET}")
    return image


def hardened(image: str, *command: str, volumes: dict[Path, str] | None = None) -> list[str]:
    """`podman run` arguments for `command` in `image` under the chart's securityContext."""
    args = ["--user", "10001:10001", "--read-only", "--tmpfs", "/tmp:rw,mode=1777", "--cap-drop", "ALL"]
    for source, target in (volumes or {}).items():
        args += ["--volume", f"{source}:{target}"]
    return [*args, image, *command]


def run(
    image: str, *command: str, timeout: float = 300, stdin: str | None = None, **kwargs
) -> subprocess.CompletedProcess:
    """Run `command` to completion in a hardened container from `image` (`stdin` fed to it)."""
    interactive = ["--interactive"] if stdin is not None else []
    return subprocess.run(
        ["podman", "run", "--rm", *interactive, *hardened(image, *command, **kwargs)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@contextlib.contextmanager
def started(image: str, *command: str, **kwargs):
    """A hardened container running `command` in the background; yields its name, removed afterwards
    (its log printed, for a failing test's output)."""
    name = f"shepherd-test-{uuid.uuid4().hex[:10]}"
    subprocess.run(
        ["podman", "run", "--detach", "--name", name, *hardened(image, *command, **kwargs)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    try:
        yield name
    finally:
        logs = subprocess.run(["podman", "logs", name], capture_output=True, text=True, check=False)
        print(f"--- {name}: {' '.join(command)}\n{logs.stdout[-3000:]}{logs.stderr[-3000:]}")
        subprocess.run(["podman", "rm", "--force", "--time", "5", name], capture_output=True, check=False)


def running(name: str) -> bool:
    state = subprocess.run(
        ["podman", "inspect", "--format", "{{.State.Running}}", name], capture_output=True, text=True, check=False
    )
    return state.stdout.strip() == "true"
