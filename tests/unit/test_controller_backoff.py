"""The rollout controller outlives its serving backend: while the plane (or the API server) is away
it backs off and keeps trying, and it resumes the moment the backend answers again."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from serving.backends import LocalBackend
from serving.local_plane import free_port
from serving.rollout.controller import Backoff, run


def test_backoff_doubles_up_to_its_cap_and_a_success_starts_again():
    backoff = Backoff(base=2.0, cap=30.0)
    assert [backoff.failed() for _ in range(6)] == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    backoff.succeeded()
    assert backoff.failed() == 2.0


class _EmptyPlane(BaseHTTPRequestHandler):
    """The plane's admin API at its process edge: no InferenceService is rolling out."""

    lists = 0

    def do_GET(self):
        type(self).lists += 1
        body = json.dumps({"items": []}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_the_controller_waits_for_an_unreachable_plane_and_resumes_when_it_answers():
    port = free_port()
    stop = threading.Event()
    controller = threading.Thread(
        target=run,
        args=(LocalBackend(f"http://127.0.0.1:{port}", timeout=2), "sqlite:///unused.db", None, 0.2),
        kwargs={"stop": stop},
        daemon=True,
    )
    controller.start()
    time.sleep(2.0)  # several refused connections
    assert controller.is_alive(), "the controller exited while the plane was away"
    server = ThreadingHTTPServer(("127.0.0.1", port), _EmptyPlane)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        deadline = time.monotonic() + 20  # the back-off is at most a few seconds by now
        while _EmptyPlane.lists < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _EmptyPlane.lists >= 2, "the controller did not resume reconciling once the plane answered"
    finally:
        stop.set()
        controller.join(timeout=10)
        server.shutdown()
    assert not controller.is_alive()
