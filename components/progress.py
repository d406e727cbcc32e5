"""Progress lines from pipeline steps: one prefix, flushed at once so a person watching sees them."""

from __future__ import annotations

import sys


def say(message: str) -> None:
    print(f"[shepherd] {message}", file=sys.stderr, flush=True)
