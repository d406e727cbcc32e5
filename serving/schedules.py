"""Retraining schedules the local plane keeps: the embedded counterpart of a KFP recurring run.

A schedule says "retrain <model> every N seconds". The plane checks its schedules every second; a due
one starts `shepherd retrain <model>` (a run of the champion's stored spec that trains only when there is
something new: labelled production rows, a new source, a new spec, new code; otherwise it says so), at
most one run per model at a time, and the next one is due N seconds later: runs missed while the plane
was down are not made up (no catch-up), as KFP's `no_catchup`. Kept in `<home>/serving/schedules.json`,
so a restarted plane keeps them.
"""

from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

SCHEDULES = "/shepherd/v1/schedules"  # the local plane's API for them (GET, PUT and DELETE /<model>)
DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """Seconds in `30s`, `15m`, `24h`, `7d`; ValueError naming the forms otherwise."""
    match = DURATION.match(text)
    if not match or int(match.group(1)) < 1:
        raise ValueError(f"{text!r} is not a duration; write it as 30s, 15m, 24h or 7d")
    return int(match.group(1)) * UNIT_SECONDS[match.group(2)]


def describe(seconds: int) -> str:
    for unit in ("d", "h", "m"):
        if seconds % UNIT_SECONDS[unit] == 0:
            return f"{seconds // UNIT_SECONDS[unit]}{unit}"
    return f"{seconds}s"


@dataclass(frozen=True)
class Schedule:
    model: str
    every_seconds: int
    next_at: float  # unix seconds
    namespace: str = "models"

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "namespace": self.namespace,
            "everySeconds": self.every_seconds,
            "nextAt": self.next_at,
        }


class Schedules:
    """The plane's schedules, persisted (atomically) on every change."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._by_model: dict[str, Schedule] = {}
        if path.exists():
            for raw in json.loads(path.read_text()):
                self._by_model[raw["model"]] = Schedule(**raw)

    def _save(self) -> None:
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps([asdict(s) for s in self._by_model.values()], indent=2))
        tmp.replace(self.path)

    def set(self, model: str, every_seconds: int, now: float, namespace: str = "models") -> Schedule:
        if every_seconds < 1:
            raise ValueError(f"everySeconds: must be at least 1, got {every_seconds}")
        with self._lock:
            schedule = self._by_model[model] = Schedule(model, every_seconds, now + every_seconds, namespace)
            self._save()
        return schedule

    def delete(self, model: str) -> bool:
        with self._lock:
            found = self._by_model.pop(model, None) is not None
            if found:
                self._save()
        return found

    def all(self) -> list[Schedule]:
        with self._lock:
            return sorted(self._by_model.values(), key=lambda s: s.model)

    def due(self, now: float) -> list[Schedule]:
        """The schedules due at `now`; each is next due `every_seconds` from now (no catch-up)."""
        with self._lock:
            due = [s for s in self._by_model.values() if s.next_at <= now]
            for schedule in due:
                self._by_model[schedule.model] = Schedule(
                    schedule.model, schedule.every_seconds, now + schedule.every_seconds, schedule.namespace
                )
            if due:
                self._save()
        return due
