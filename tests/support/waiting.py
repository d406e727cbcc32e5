"""Waiting for something a real process does, with a deadline that names what did not happen."""

from __future__ import annotations

import time


def wait_for(condition, seconds: float, what: str, every: float = 0.1):
    """Call `condition()` until it is true and return what it returned; fail with `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while not (value := condition()):
        assert time.monotonic() < deadline, f"{what} did not happen within {seconds} s"
        time.sleep(every)
    return value
