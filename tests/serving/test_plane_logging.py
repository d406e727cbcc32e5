"""Payload logging through a real plane: every response is logged with its status, so the drift service
keeps nothing of a rejected request; a request whose response never comes is forgotten after the TTL;
and a logger that hangs costs dropped (counted) events, never a slower prediction."""

from __future__ import annotations

import json
import socket
import time
import uuid

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from monitoring.metrics import (
    DRIFT_PENDING_DISCARDED_TOTAL,
    PLANE_PAYLOAD_EVENTS_DELIVERED_TOTAL,
    PLANE_PAYLOAD_EVENTS_DROPPED_TOTAL,
)
from monitoring.payload_log import REQUEST_EVENT
from serving.backends import LocalBackend
from serving.inference_service import build_inference_service
from serving.plane_auth import token_for
from serving.traffic import instances
from tests.support.plane_processes import running_plane
from tests.support.waiting import wait_for

QUEUE_SIZE = 16
PENDING_TTL = 2.0


@pytest.fixture(scope="module")
def plane(registered_churn, tmp_path_factory):
    env = {"SHEPHERD_PAYLOAD_QUEUE_SIZE": str(QUEUE_SIZE), "SHEPHERD_DRIFT_PENDING_TTL": str(PENDING_TTL)}
    with running_plane(tmp_path_factory.mktemp("plane-logging"), registered_churn["tracking_uri"], env) as started:
        yield started


@pytest.fixture(scope="module")
def rows(churn_spec, churn_frame):
    return instances(churn_spec, churn_frame.head(2000))


def metric(url: str, name: str, **labels: str) -> float:
    text = httpx.get(url, timeout=30).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and labels.items() <= s.labels.items()
    )


def drift_state(plane) -> dict:
    return httpx.get(f"{plane.url}/drift/models/churn", timeout=30).json()


def test_rejected_requests_leave_nothing_pending(plane, churn_spec, rows):
    LocalBackend(plane.url).apply(build_inference_service(churn_spec, "1", payload_log_url=f"{plane.url}/drift/"))
    # The first events of a version wait (up to 2 s) for its spec and reference in the drift service: with
    # this 16-event queue a burst then would be dropped, so one answered prediction goes through first.
    first = metric(f"{plane.url}/metrics", PLANE_PAYLOAD_EVENTS_DELIVERED_TOTAL)
    assert httpx.post(f"{plane.url}/v1/models/churn:predict", json={"instances": rows[:1]}, timeout=60).is_success
    wait_for(lambda: metric(f"{plane.url}/metrics", PLANE_PAYLOAD_EVENTS_DELIVERED_TOTAL) - first == 2, 30, "warm-up")
    discarded_before = metric(f"{plane.url}/drift/metrics", DRIFT_PENDING_DISCARDED_TOTAL, reason="error_response")
    expired_before = metric(f"{plane.url}/drift/metrics", DRIFT_PENDING_DISCARDED_TOTAL, reason="expired")
    delivered_before = metric(f"{plane.url}/metrics", PLANE_PAYLOAD_EVENTS_DELIVERED_TOTAL)
    dropped_before = metric(f"{plane.url}/metrics", PLANE_PAYLOAD_EVENTS_DROPPED_TOTAL)
    bad = [{**row, "tenure": "a lot"} for row in rows]  # 2,000 rows, each named in the 400
    statuses = []
    with httpx.Client(base_url=plane.url, timeout=60) as http:
        for i in range(30):
            if i % 3 == 0:
                body = {"instances": rows[i : i + 1]}  # valid
            elif i % 3 == 1:
                body = {"instances": bad}
            else:
                body = {"inputs": [{"name": "tenure", "shape": [1], "datatype": "FP32", "data": [1.0]}]}
            path = "/v2/models/churn/infer" if "inputs" in body else "/v1/models/churn:predict"
            statuses.append(http.post(path, json=body).status_code)
    assert statuses.count(200) == 10 and statuses.count(400) == 20, statuses

    wait_for(
        lambda: metric(f"{plane.url}/metrics", PLANE_PAYLOAD_EVENTS_DELIVERED_TOTAL) - delivered_before == 60,
        30,
        "delivery of the 60 payload events (request + response of 30 predictions)",
    )
    assert metric(f"{plane.url}/metrics", PLANE_PAYLOAD_EVENTS_DROPPED_TOTAL) == dropped_before
    drift_metrics = f"{plane.url}/drift/metrics"
    # Dropped because their response said 400, not because the TTL ran out.
    assert metric(drift_metrics, DRIFT_PENDING_DISCARDED_TOTAL, reason="error_response") - discarded_before == 20
    assert metric(drift_metrics, DRIFT_PENDING_DISCARDED_TOTAL, reason="expired") == expired_before
    state = drift_state(plane)
    assert state["pending"] == {"champion": 0}
    assert state["windows"]["champion"] >= 10  # the answered rows, paired with their predictions


def test_a_request_whose_response_never_comes_is_forgotten_after_the_ttl(plane, churn_spec, rows):
    """KServe's own logger posts no response event for an error: its request must not stay in memory."""
    LocalBackend(plane.url).apply(build_inference_service(churn_spec, "1", payload_log_url=f"{plane.url}/drift/"))
    expired_before = metric(f"{plane.url}/drift/metrics", DRIFT_PENDING_DISCARDED_TOTAL, reason="expired")
    headers = {  # what KServe's logger sends, in binary mode, to the URL the deploy step configures
        "ce-specversion": "1.0",
        "ce-type": REQUEST_EVENT,
        "ce-id": str(uuid.uuid4()),
        "ce-source": "http://churn-predictor.models",
        "ce-inferenceservicename": "churn",
        "ce-namespace": "models",
        "ce-component": "predictor",
        "ce-endpoint": "default",
        "ce-modelid": "1",
        "content-type": "application/json",
        "authorization": f"Bearer {token_for(plane.url)}",  # payload logs posted to the plane are changes
    }
    sent = time.monotonic()
    response = httpx.post(f"{plane.url}/drift/", content=json.dumps({"instances": rows[:100]}), headers=headers)
    assert response.status_code == 202, response.text
    assert drift_state(plane)["pending"] == {"champion": 1}
    wait_for(lambda: drift_state(plane)["pending"] == {"champion": 0}, PENDING_TTL + 5, "expiry")
    assert time.monotonic() - sent >= PENDING_TTL * 0.9
    assert metric(f"{plane.url}/drift/metrics", DRIFT_PENDING_DISCARDED_TOTAL, reason="expired") == expired_before + 1


@pytest.fixture
def hanging_logger():
    """A logger URL that accepts connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(0)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/"


def test_a_hanging_logger_drops_counted_events_and_never_slows_a_prediction(plane, churn_spec, rows, hanging_logger):
    LocalBackend(plane.url).apply(build_inference_service(churn_spec, "1", payload_log_url=hanging_logger))
    url = f"{plane.url}/metrics"
    full_before = metric(url, PLANE_PAYLOAD_EVENTS_DROPPED_TOTAL, reason="queue_full")
    undelivered_before = metric(url, PLANE_PAYLOAD_EVENTS_DROPPED_TOTAL, reason="undelivered")
    latencies = []
    with httpx.Client(base_url=plane.url, timeout=30) as http:
        for i in range(40):
            started = time.perf_counter()
            response = http.post("/v1/models/churn:predict", json={"instances": rows[i : i + 1]})
            latencies.append(time.perf_counter() - started)
            assert response.status_code == 200, response.text
    # 80 events for a queue of 16 and a delivery stuck on its first POST: most are dropped at once.
    assert metric(url, PLANE_PAYLOAD_EVENTS_DROPPED_TOTAL, reason="queue_full") - full_before >= 40
    assert max(latencies) < 2.0, f"a prediction waited {max(latencies):.2f} s for the logger"
    wait_for(
        lambda: metric(url, PLANE_PAYLOAD_EVENTS_DROPPED_TOTAL, reason="undelivered") > undelivered_before,
        15,
        "the stuck delivery timing out and being counted",
    )
