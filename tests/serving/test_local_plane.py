"""The local serving plane as a real process: KServe-shaped status (checked against the CRD schema),
the router's observed canary split, payload logs as KServe's binary-mode CloudEvents (every response,
with its status), and state kept across a restart."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import httpx
import pytest
from scipy.stats import binomtest

from serving.backends import ConflictError, LocalBackend, ServingError, start_plane
from serving.inference_service import build_inference_service
from serving.inference_service_view import serving_container
from serving.local_plane import free_port
from serving.traffic import instances, send
from tests.support.crds import validate_inference_service
from tests.support.plane_processes import stop_and_reap

# A split is wrong if a two-sided binomial test rejects the configured share at this level.
SIGNIFICANCE = 1e-4


class _Collector(BaseHTTPRequestHandler):
    received: ClassVar[list] = []  # shared by the handler instances the server creates

    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        _Collector.received.append(({k.lower(): v for k, v in self.headers.items()}, json.loads(body)))
        self.send_response(202)
        self.end_headers()

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture(scope="module")
def collector():
    server = HTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/events"
    server.shutdown()


@pytest.fixture(scope="module")
def plane(two_versions, tmp_path_factory):
    home = tmp_path_factory.mktemp("plane-home")
    port = free_port()
    started = start_plane(home, two_versions, port)
    yield {"home": home, "url": started.url, "tracking_uri": two_versions, "port": port}
    stop_and_reap(home)


def _observed_canary_share(plane, churn_spec, rows, n):
    report = send(plane["url"], churn_spec, rows, n)
    assert report.by_status == {200: n}
    return report.by_revision["churn-v2"], report


@pytest.fixture(scope="module")
def rows(churn_spec, churn_frame):
    return instances(churn_spec, churn_frame.head(300))


def test_canary_is_applied_with_kserve_shaped_status(plane, churn_spec, collector):
    obj = build_inference_service(churn_spec, "2", champion_version="1", canary_percent=10, payload_log_url=collector)
    applied = LocalBackend(plane["url"]).apply(obj)
    validate_inference_service(applied)  # status included: the plane speaks KServe's schema
    status = applied["status"]
    traffic = {t["revisionName"]: t["percent"] for t in status["components"]["predictor"]["traffic"]}
    assert traffic == {"churn-v1": 90, "churn-v2": 10}
    assert status["canaryStatuses"] == [{"name": "churn-v2", "ready": True, "trafficPercent": 10}]
    assert status["components"]["predictor"]["latestRolledoutRevision"] == "churn-v1"
    assert next(c for c in status["conditions"] if c["type"] == "Ready")["status"] == "True"


def test_router_split_matches_the_configured_percentage(plane, churn_spec, rows):
    canary, _ = _observed_canary_share(plane, churn_spec, rows, 2000)
    assert binomtest(canary, 2000, 0.10).pvalue > SIGNIFICANCE, f"{canary}/2000 canary answers at 10 %"

    obj = build_inference_service(churn_spec, "2", champion_version="1", canary_percent=50)
    LocalBackend(plane["url"]).apply(obj)
    canary, _ = _observed_canary_share(plane, churn_spec, rows, 1000)
    assert binomtest(canary, 1000, 0.50).pvalue > SIGNIFICANCE, f"{canary}/1000 canary answers at 50 %"


def test_payload_logs_arrive_as_kserve_cloudevents(plane, churn_spec, rows, collector):
    obj = build_inference_service(churn_spec, "2", champion_version="1", canary_percent=50, payload_log_url=collector)
    LocalBackend(plane["url"]).apply(obj)
    _Collector.received.clear()
    send(plane["url"], churn_spec, rows, 20)
    deadline = time.monotonic() + 10
    while len(_Collector.received) < 40 and time.monotonic() < deadline:
        time.sleep(0.1)
    types = [h["ce-type"] for h, _ in _Collector.received]
    assert types.count("org.kubeflow.serving.inference.request") == 20
    assert types.count("org.kubeflow.serving.inference.response") == 20
    headers, body = next((h, b) for h, b in _Collector.received if h["ce-type"].endswith("request"))
    assert headers["ce-inferenceservicename"] == "churn" and headers["ce-namespace"] == "models"
    assert headers["ce-endpoint"] in ("default", "canary") and headers["ce-specversion"] == "1.0"
    assert set(body["instances"][0]) == set(churn_spec.feature_names)
    responses = [h for h, _ in _Collector.received if h["ce-type"].endswith("response")]
    assert {h["ce-statuscode"] for h in responses} == {"200"}
    assert {h["ce-id"] for h in responses} == {h["ce-id"] for h, _ in _Collector.received}  # paired by id

    _Collector.received.clear()  # a rejected request is logged with its status too, one event per POST
    rejected = httpx.post(f"{plane['url']}/v1/models/churn:predict", json={"instances": [{"tenure": "x"}]})
    assert rejected.status_code == 400
    deadline = time.monotonic() + 10
    while len(_Collector.received) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    (request, _), (response, error) = sorted(_Collector.received, key=lambda e: e[0]["ce-type"])
    assert response["ce-type"].endswith("response") and response["ce-statuscode"] == "400"
    assert request["ce-id"] == response["ce-id"] and "error" in error


def test_bad_objects_are_refused_with_the_reason(plane, churn_spec):
    obj = build_inference_service(churn_spec, "2", champion_version="1", canary_percent=10)
    serving_container(obj["spec"]["canary"][0]["predictor"])["args"] = []
    with pytest.raises(ServingError, match="no --model_uri"):
        LocalBackend(plane["url"]).apply(obj)
    missing = build_inference_service(churn_spec, "99")
    with pytest.raises(ServingError, match="has no version '99'"):
        LocalBackend(plane["url"]).apply(missing)


def canary_share_in_spec(obj: dict) -> int:
    return obj["spec"]["canary"][0]["trafficPercent"]


def test_a_write_from_a_stale_read_is_refused_and_changes_nothing(plane):
    backend = LocalBackend(plane["url"])
    read_by_loop = backend.get("models", "churn")
    read_by_webhook = backend.get("models", "churn")
    assert read_by_loop["metadata"]["resourceVersion"] == read_by_webhook["metadata"]["resourceVersion"]

    read_by_webhook.pop("status")
    read_by_webhook["spec"]["canary"][0]["trafficPercent"] = 0  # a rollback, written first
    written = backend.apply(read_by_webhook)
    assert int(written["metadata"]["resourceVersion"]) == int(read_by_loop["metadata"]["resourceVersion"]) + 1

    read_by_loop.pop("status")
    read_by_loop["spec"]["canary"][0]["trafficPercent"] = 50  # decided from the older read
    with pytest.raises(ConflictError, match="changed since it was read"):
        backend.apply(read_by_loop)
    assert canary_share_in_spec(backend.get("models", "churn")) == 0

    fresh = backend.get("models", "churn")
    fresh.pop("status")
    fresh["spec"]["canary"][0]["trafficPercent"] = 50  # re-read, re-decided: accepted
    assert canary_share_in_spec(backend.apply(fresh)) == 50


def test_a_blind_replace_is_refused_unless_forced(plane):
    """A PUT over an existing object without the resourceVersion it was read at would undo whatever was
    written since (a rollback, a promotion): refused with a 409 naming the field, as the API server
    refuses it for custom resources; `?force=true` is the operator's explicit blind replace."""
    from serving.plane_auth import token_for

    backend = LocalBackend(plane["url"])
    blind = backend.get("models", "churn")
    blind.pop("status")
    before = blind["metadata"].pop("resourceVersion")
    url = f"{plane['url']}/apis/serving.kserve.io/v1beta1/namespaces/models/inferenceservices/churn"
    auth = {"authorization": f"Bearer {token_for(plane['url'])}"}
    refused = httpx.put(url, json=blind, headers=auth, timeout=60)
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"].startswith("metadata.resourceVersion: required")
    assert backend.get("models", "churn")["metadata"]["resourceVersion"] == before  # nothing written

    forced = httpx.put(url, params={"force": "true"}, json=blind, headers=auth, timeout=60)
    assert forced.status_code == 200, forced.text
    assert int(forced.json()["metadata"]["resourceVersion"]) == int(before) + 1
    # The backend's apply of an object read from nothing (the deploy step's) writes over a fresh read.
    assert int(backend.apply(blind)["metadata"]["resourceVersion"]) == int(before) + 2


def test_state_survives_a_restart_of_the_plane(plane, churn_spec, rows):
    before = LocalBackend(plane["url"]).get("models", "churn")
    stop_and_reap(plane["home"])
    restarted = start_plane(plane["home"], plane["tracking_uri"], plane["port"])
    after = LocalBackend(restarted.url).get("models", "churn")
    assert after["spec"] == before["spec"]
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]  # readers stay valid
    assert after["status"]["components"]["predictor"]["traffic"][1]["percent"] == 50
    report = send(restarted.url, churn_spec, rows, 50)
    assert report.by_status == {200: 50}
