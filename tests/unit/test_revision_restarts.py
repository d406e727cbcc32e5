"""The plane restarts a revision whose process exited, and backs off when it keeps crashing (1, 2, 4 ...
60 s, as a kubelet's CrashLoopBackOff), so a revision that cannot start costs one restart and one
history event per back-off, not one a second. Real processes that exit at once (`false`) stand in for a
predictor that crashes at start; the plane's own supervision code runs unchanged."""

from __future__ import annotations

import asyncio
import json
import subprocess

import pytest

from serving.local_plane import Deployment, Plane, Revision


@pytest.fixture
def crashing(tmp_path, monkeypatch):
    plane = Plane(tmp_path, "sqlite:///unused.db", "http://127.0.0.1:9")
    champion = Revision("churn-v1", "models:/churn/1", "1", "champion", port=9)
    spawned = []

    def spawn(revision: Revision) -> None:  # the process edge: a predictor that dies at once
        (plane.dir / "logs" / f"{revision.name}.log").write_text("crashed at start\n")
        revision.process = subprocess.Popen(["false"])
        revision.process.wait()
        spawned.append(revision.process)

    monkeypatch.setattr(plane, "_spawn", spawn)
    spawn(champion)
    spawned.clear()
    plane.deployments["models/churn"] = Deployment({"metadata": {"name": "churn"}}, champion)
    return plane, champion, spawned


def _restart_events(plane: Plane) -> list[dict]:
    lines = (plane.dir / "events.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["reason"] == "RevisionRestarted"]


def test_a_crashing_revision_is_restarted_with_back_off(crashing):
    plane, champion, spawned = crashing

    async def ticks(n: int, every: float) -> None:
        for _ in range(n):
            await plane._restart_dead_revisions(client=None)
            await asyncio.sleep(every)
        await asyncio.gather(*plane._readiness_waits)

    asyncio.run(ticks(5, 0.1))  # half a second of ticks: one restart, then the 1 s back-off holds
    assert len(spawned) == 1 and len(_restart_events(plane)) == 1
    assert champion.restarting and not champion.up  # /healthz and Ready say so
    assert plane.health()["status"] == "degraded"

    asyncio.run(ticks(16, 0.25))  # four more seconds: restarts after 1 s and 2 s more; the next waits 4 s
    assert len(spawned) == 3, len(spawned)
    assert champion.restarts == 3
    assert plane.metrics.registry.get_sample_value("shepherd_plane_restarts_total", {"component": "churn-v1"}) == 3
    (first, *_) = _restart_events(plane)
    assert first["type"] == "Warning" and "the champion churn-v1 exited (code 1)" in first["message"]
