"""The local plane's child processes (predictors, the drift service): owned by the plane, and
stopped without blocking its event loop.

Owned: on Linux each child asks the kernel for SIGTERM when the plane dies (`PR_SET_PDEATHSIG`), so a
SIGKILLed plane leaves no predictor or drift service running under PID 1. The signal follows the
*thread* that started the child: start children from the event loop's thread, never from a worker
thread that may exit. Each child keeps its own session (`start_new_session`): a Ctrl-C in the plane's
terminal is the plane's to handle, and the plane stops its children itself.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
STOP_GRACE_SECONDS = 15.0  # SIGTERM first; SIGKILL if the child is still there after this
_POLL_SECONDS = 0.05


def _die_with_parent_hook():
    """A `preexec_fn` that makes the child receive SIGTERM when its parent dies (Linux), or None."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here: the hook runs between fork and exec
    parent = os.getpid()

    def hook() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the request took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return hook


def spawn(command: list[str], log: Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start `command` with its output appended to `log`; it dies with this process."""
    with open(log, "a") as out:  # the child holds its own descriptor once started
        return subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent_hook(),  # only a prctl call runs in the child before exec
        )


async def stop(process: subprocess.Popen | None, grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM, then wait for the exit without blocking the event loop; SIGKILL after `grace` seconds."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    deadline = time.monotonic() + grace
    while process.poll() is None:
        if time.monotonic() >= deadline:
            process.kill()
            break
        await asyncio.sleep(_POLL_SECONDS)
    while process.poll() is None:  # SIGKILL cannot be refused; reap it
        await asyncio.sleep(_POLL_SECONDS)
