"""The plane and its processes under faults: a replaced revision is stopped without stalling the plane,
the children die with a SIGKILLed plane (and listen on loopback only while they live), and a connection
a revision drops under a request is retried instead of failing the client."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from serving.backends import LocalBackend, start_plane
from serving.inference_service import build_inference_service
from serving.local_plane import free_port
from serving.traffic import instances
from serving.upstream import Upstream, UpstreamUnavailable
from tests.support.plane_processes import (
    children_of,
    has_pending_sigterm,
    is_gone,
    listening_sockets,
    pid_serving,
    plane_pid,
    running_plane,
)
from tests.support.waiting import wait_for


@pytest.fixture(scope="module")
def rows(churn_spec, churn_frame):
    return instances(churn_spec, churn_frame.head(50))


def champion_port(applied: dict) -> int:
    (champion,) = applied["status"]["components"]["predictor"]["traffic"]
    return int(champion["url"].rsplit(":", 1)[1])


def test_the_plane_keeps_answering_while_a_revision_is_replaced(two_versions, tmp_path, churn_spec, rows):
    """The old champion is frozen (SIGSTOP), so it cannot act on the SIGTERM of the promotion: while the
    plane waits for it to exit, health checks and predictions (now on the new champion) are answered."""
    with running_plane(tmp_path, two_versions) as plane:
        backend = LocalBackend(plane.url)
        old = pid_serving(champion_port(backend.apply(build_inference_service(churn_spec, "1"))))
        os.kill(old, signal.SIGSTOP)
        promoted: list[dict] = []
        promotion = threading.Thread(
            target=lambda: promoted.append(backend.apply(build_inference_service(churn_spec, "2")))
        )
        try:
            promotion.start()
            wait_for(lambda: has_pending_sigterm(old), 180, "the new champion taking over and the old one told to stop")
            slowest_health, slowest_prediction = 0.0, 0.0
            with httpx.Client(base_url=plane.url, timeout=5) as http:
                for i in range(20):
                    started = time.perf_counter()
                    assert http.get("/healthz").status_code == 200
                    slowest_health = max(slowest_health, time.perf_counter() - started)
                    started = time.perf_counter()
                    response = http.post("/v1/models/churn:predict", json={"instances": rows[i : i + 1]})
                    slowest_prediction = max(slowest_prediction, time.perf_counter() - started)
                    assert response.status_code == 200 and response.headers["x-shepherd-revision"] == "churn-v2"
            assert promotion.is_alive(), "measured after the old revision was gone: the test proves nothing"
            assert slowest_health < 1.0 and slowest_prediction < 2.0, (slowest_health, slowest_prediction)
        finally:
            os.kill(old, signal.SIGCONT)  # it now takes the SIGTERM and exits
            promotion.join(60)
        assert promoted and promoted[0]["status"]["components"]["predictor"]["latestRolledoutRevision"] == "churn-v2"
        wait_for(lambda: is_gone(old), 20, "the old champion's exit")


def test_the_children_die_with_the_plane(registered_churn, tmp_path, churn_spec):
    with running_plane(tmp_path, registered_churn["tracking_uri"]) as plane:
        LocalBackend(plane.url).apply(build_inference_service(churn_spec, "1"))
        parent = plane_pid(tmp_path)
        children = children_of(parent)
        assert len(children) == 2, children  # the drift service and the champion's predictor
        listeners = listening_sockets([parent, *children])
        assert len(listeners) == 3, listeners  # the plane, the drift service, the predictor
        assert {address for address, _ in listeners} == {"0100007F"}  # 127.0.0.1 only: nothing on 0.0.0.0 or ::
        os.kill(parent, signal.SIGKILL)
        try:
            wait_for(lambda: all(is_gone(pid) for pid in children), 15, "the children's exit")
        finally:
            for pid in children:
                if not is_gone(pid):
                    os.kill(pid, signal.SIGKILL)
        # `shepherd up` again: the model is served as before, and the outage is in its history.
        restarted = start_plane(tmp_path, registered_churn["tracking_uri"], free_port())
        backend = LocalBackend(restarted.url)
        assert backend.get("models", "churn")["metadata"]["annotations"]["shepherd.io/model-version"] == "1"
        (recovered,) = [e for e in backend.events("models", "churn") if e["reason"] == "PlaneRecovered"]
        assert f"pid {parent}" in recovered["message"] and recovered["type"] == "Warning"
        assert len(children_of(restarted.pid)) == 2  # one drift service, one predictor: no second set


def test_a_dead_drift_service_is_reported_and_restarted(registered_churn, tmp_path):
    """The drift gates' source must not stay dead for the rest of the plane's life, and /healthz must
    not say ok while it is down."""
    with running_plane(tmp_path, registered_churn["tracking_uri"]) as plane, httpx.Client(base_url=plane.url) as http:
        assert http.get("/healthz").json()["status"] == "ok"
        (drift,) = children_of(plane_pid(tmp_path))  # no deployment yet: the drift service is the only child
        os.kill(drift, signal.SIGKILL)
        wait_for(lambda: is_gone(drift), 5, "the drift service's death")
        seen = []  # /healthz until it reports the death or the restart (the plane checks every 2 s)

        def reported() -> bool:
            seen.append(http.get("/healthz"))
            assert seen[-1].status_code == 200  # the plane itself answers: `shepherd up` must not start another
            body = seen[-1].json()
            return body["status"] == "degraded" or body["drift"]["restarts"] > 0

        wait_for(reported, 90, "the drift service's death in /healthz")
        down = seen[-1].json()
        assert down["status"] == "degraded" and down["drift"]["up"] is False, [r.json() for r in seen]
        wait_for(lambda: http.get("/healthz").json()["status"] == "ok", 90, "the drift service's restart")
        health = http.get("/healthz").json()
        assert health["drift"] == {"url": f"{plane.url}/drift/", "up": True, "restarts": 1}
        (restarted,) = children_of(plane_pid(tmp_path))
        assert restarted != drift
        assert http.get("/drift/metrics").status_code == 200  # the route follows the new process


class _DropsEverySecondRequest(BaseHTTPRequestHandler):
    """A keep-alive server that reads the second request on each connection and closes the connection
    without answering, as a predictor did after a 500 (and as any server may on an idle connection)."""

    protocol_version = "HTTP/1.1"
    answered = 0
    dropped = 0
    drop_all = False

    def do_POST(self):
        self.rfile.read(int(self.headers["content-length"]))
        self.seen = getattr(self, "seen", 0) + 1
        if self.drop_all or self.seen % 2 == 0:
            type(self).dropped += 1
            self.close_connection = True
            return
        type(self).answered += 1
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


@pytest.fixture
def flaky_upstream():
    handler = type("Handler", (_DropsEverySecondRequest,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/v1/models/m:predict", handler
    server.shutdown()
    server.server_close()


def test_a_dropped_connection_is_retried_once_on_the_same_revision(flaky_upstream):
    url, handler = flaky_upstream

    async def send(n: int) -> list[int]:
        upstream = Upstream(timeout_seconds=5)
        try:
            return [(await upstream.send("POST", url, b"{}", {})).status_code for _ in range(n)]
        finally:
            await upstream.close()

    assert asyncio.run(send(10)) == [200] * 10
    assert handler.dropped >= 5, "the server never dropped a connection: nothing was retried"

    handler.drop_all, handler.dropped = True, 0
    with pytest.raises(UpstreamUnavailable):  # really gone: the caller answers 503
        asyncio.run(send(1))
    assert handler.dropped == 2  # the request and one retry, no more
