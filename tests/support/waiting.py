"""Waiting for something a real process does, with a deadline that names what did not happen."""

from __future__ import annotations

import time


def wait_for(condition, seconds: float, what: str, every: float = 0.1, report=None):
    """Call `condition()` until it is true and return what it returned; fail with `what` after `seconds`, and
    with what `report()` tells of the state then (say, the pods' states and logs)."""
    deadline = time.monotonic() + seconds
    while not (value := condition()):
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} did not happen within {seconds} s" + (f"\n{report()}" if report else ""))
        time.sleep(every)
    return value
