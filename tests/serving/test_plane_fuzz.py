"""Property-based fuzzing through the local plane (tests/support/payload_fuzz.py): 5,000 generated requests
per protocol sent to the router, which splits them between the champion and a 50 % canary whose payload
logs go to the plane's drift service. Never a 5xx, every refusal `{"error": "<field>: <rule>"}`, valid
requests in between all answered, every answer counted once by the plane, and no memory kept by the
plane, either predictor or the drift service."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from monitoring.metrics import (
    DRIFT_EVENTS_TOTAL,
    DRIFT_PENDING_REQUESTS,
    PLANE_PAYLOAD_EVENTS_DELIVERED_TOTAL,
    PLANE_PAYLOAD_EVENTS_DROPPED_TOTAL,
    PLANE_REQUESTS_TOTAL,
)
from serving.backends import LocalBackend
from serving.inference_service import build_inference_service
from serving.traffic import instances
from tests.support.payload_fuzz import FuzzReport, fuzz
from tests.support.plane_processes import children_of, pid_serving, plane_pid, running_plane

EXAMPLES = 5_000
WARMUP_EXAMPLES = 500
RSS_GROWTH_ALLOWED = 0.10
DRAIN_SECONDS = 120
WARM_ROWS = 1_500  # real rows sent before measuring: both drift windows full and compared at least once


@pytest.fixture(scope="module")
def plane(two_versions, churn_spec, churn_frame, tmp_path_factory):
    """A plane serving churn v1 as champion and v2 as a 50 % canary, both logging payloads to the
    plane's drift service; with the pids of the processes whose memory is watched."""
    home = tmp_path_factory.mktemp("plane-fuzz")
    with running_plane(home, two_versions) as started:
        obj = build_inference_service(
            churn_spec, "2", champion_version="1", canary_percent=50, payload_log_url=f"{started.url}/drift/"
        )
        applied = LocalBackend(started.url).apply(obj)
        traffic = applied["status"]["components"]["predictor"]["traffic"]
        assert sorted(t["percent"] for t in traffic) == [50, 50], traffic
        plane = plane_pid(home)
        pids = {"plane": plane, "drift": drift_pid(plane)}
        for t in traffic:
            pids[t["revisionName"]] = pid_serving(int(t["url"].rsplit(":", 1)[1]))
        warm_drift(started.url, churn_spec, churn_frame)
        yield SimpleNamespace(url=started.url, pids=pids)


def warm_drift(url: str, spec, frame) -> None:
    """Fill both revisions' drift windows with real rows and wait for the drift service's first comparisons
    (champion and canary against training, canary against champion): its first Evidently runs allocate for
    good (~280 MB here), which is warm-up, not growth."""
    rows = [r for r in instances(spec, frame.head(3 * WARM_ROWS)) if None not in r.values()][:WARM_ROWS]
    with httpx.Client(base_url=url, timeout=60) as client:
        for start in range(0, len(rows), 50):
            answer = client.post("/v1/models/churn:predict", json={"instances": rows[start : start + 50]})
            assert answer.status_code == 200, answer.text
        deadline = time.monotonic() + DRAIN_SECONDS
        wanted = {("champion", "training"), ("canary", "training"), ("canary", "champion")}
        while True:
            found = client.get("/drift/models/churn").json()
            if wanted <= {(r["role"], r["reference"]) for r in found["results"]}:
                return
            assert time.monotonic() < deadline, f"no drift results after {DRAIN_SECONDS} s: {found}"
            time.sleep(1.0)


def drift_pid(plane: int) -> int:
    for child in children_of(plane):
        with open(f"/proc/{child}/cmdline", "rb") as handle:
            if b"monitoring.drift" in handle.read().split(b"\0"):
                return child
    raise LookupError(f"the plane {plane} runs no drift service")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise LookupError(f"no VmRSS for {pid}")


def samples(client: httpx.Client, path: str) -> list:
    response = client.get(path)
    assert response.status_code == 200, response.text
    return [s for family in text_string_to_metric_families(response.text) for s in family.samples]


def total(found: list, name: str, **labels: str) -> float:
    return sum(s.value for s in found if s.name == name and labels.items() <= s.labels.items())


def drained(client: httpx.Client) -> dict[str, float]:
    """Wait until the drift service has every event the plane logged and no request waits for its response:
    the plane's delivered count and the drift service's received count stand still and nothing is pending."""
    last, deadline = None, time.monotonic() + DRAIN_SECONDS
    while True:
        plane, drift = samples(client, "/metrics"), samples(client, "/drift/metrics")
        now = {
            "delivered": total(plane, PLANE_PAYLOAD_EVENTS_DELIVERED_TOTAL),
            "received": total(drift, DRIFT_EVENTS_TOTAL),
            "pending": total(drift, DRIFT_PENDING_REQUESTS),
        }
        if now == last and now["pending"] == 0:
            return now
        assert time.monotonic() < deadline, f"the payload logs did not drain in {DRAIN_SECONDS} s: {now}"
        last = now
        time.sleep(1.0)


def outcomes(client: httpx.Client) -> dict[str, float]:
    found = samples(client, "/metrics")
    return {o: total(found, PLANE_REQUESTS_TOTAL, model="churn", outcome=o) for o in ("ok", "invalid", "error")}


def answered(report: FuzzReport) -> dict[str, float]:
    """The outcomes the plane should have counted for what `report` saw."""
    counted = {"ok": report.valid_sent, "invalid": 0, "error": 0}
    for status, n in report.statuses.items():
        counted["ok" if status < 400 else "invalid" if status < 500 else "error"] += n
    return counted


@pytest.mark.timeout(600)
@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_generated_requests_through_the_plane_never_get_a_5xx_and_leave_no_memory(plane, churn_spec, protocol):
    with httpx.Client(base_url=plane.url, timeout=30) as client:
        # Warm up on other generated requests (another seed): first-time paths allocate for good.
        fuzz(plane.url, churn_spec, "churn", protocol, WARMUP_EXAMPLES, client, seed=1)
        drained(client)
        warm = {name: rss_kib(pid) for name, pid in plane.pids.items()}
        before, logged_before = outcomes(client), drained(client)
        undelivered_before = undelivered(client)

        report = fuzz(plane.url, churn_spec, "churn", protocol, EXAMPLES, client, seed=0)

        assert report.sent >= EXAMPLES
        assert report.valid_sent >= EXAMPLES // 20
        assert not [s for s in report.statuses if s >= 500], report.statuses
        # Both kinds of answers were exercised, not only refusals.
        assert report.statuses.get(200, 0) >= EXAMPLES // 20 and report.statuses.get(400, 0) >= EXAMPLES // 2
        after = outcomes(client)
        assert {o: after[o] - before[o] for o in after} == answered(report)
        logged = drained(client)
        # The drift service saw the fuzz: at least the valid requests and their responses reached it.
        assert logged["received"] - logged_before["received"] >= 2 * report.valid_sent, (logged_before, logged)
        lost = undelivered(client) - undelivered_before

    rss = {name: (warm[name], rss_kib(pid)) for name, pid in plane.pids.items()}
    grown = [name for name, (before_kib, after_kib) in rss.items() if after_kib > before_kib * (1 + RSS_GROWTH_ALLOWED)]
    assert not grown, f"RSS of {grown} grew beyond {RSS_GROWTH_ALLOWED:.0%} of warm (KiB, warm -> after): {rss}"
    # Every request and response event reached the drift service: a client's odd body loses no one's events.
    assert lost == 0, f"{lost:.0f} payload events were not delivered to the drift service (see the plane's log)"


def undelivered(client: httpx.Client) -> float:
    return total(samples(client, "/metrics"), PLANE_PAYLOAD_EVENTS_DROPPED_TOTAL, reason="undelivered")
