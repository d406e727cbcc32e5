"""Waiting for something a real process does, with a deadline that names what did not happen."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path


def wait_for(condition, seconds: float, what: str, every: float = 0.1, report=None):
    """Call `condition()` until it is true and return what it returned; fail with `what` after `seconds`, and
    with what `report()` tells of the state then (say, the pods' states and logs)."""
    deadline = time.monotonic() + seconds
    while not (value := condition()):
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} did not happen within {seconds} s" + (f"\n{report()}" if report else ""))
        time.sleep(every)
    return value


def start_serving(command: list[str], log: Path, health_url: str, seconds: float = 120) -> subprocess.Popen:
    """Start `command` (its output to `log`) and return it once GET `health_url` answers 200; fail with the log's
    tail if it exits or does not answer within `seconds`. The caller stops it."""
    import httpx

    with open(log, "w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + seconds
    while True:
        try:
            if httpx.get(health_url, timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"{command[:3]} did not answer {health_url}: {log.read_text()[-2000:]}")
        time.sleep(0.5)
