"""What a test does when a tool it needs is missing: outside CI it skips with how to get the tool; in CI,
where every test runs, it fails."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def unavailable(reason: str, how_to_get: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI runs every test)")
    pytest.skip(f"{reason}; {how_to_get}")
