"""The monitoring stack for end-to-end tests: a real predictor under real traffic, two exporter
processes' worth of a canary rollout (the predictor's own metric definitions, driven by the test), a
real Prometheus loading the committed rules, a real Alertmanager with the generated config, and an
HTTP webhook receiver standing in for the Shepherd webhook (the process edge)."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from monitoring import alertmanager, rules
from monitoring.metrics import OUTCOMES, PredictorMetrics
from serving.local_plane import free_port
from serving.predictor import predictor_command
from serving.traffic import instances, send
from tests.conftest import REPO
from tests.support.prometheus import (
    Target,
    binary,
    prometheus_config,
    start_alertmanager,
    start_prometheus,
)

WEBHOOK_TOKEN = "e2e-webhook-token"


@dataclass
class Delivery:
    at: float  # time.monotonic() when the webhook got it
    authorization: str
    body: dict


@dataclass
class WebhookReceiver:
    """An HTTP endpoint recording what Alertmanager delivers (answers 200 to every POST)."""

    url: str = ""
    deliveries: list[Delivery] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                receiver.deliveries.append(Delivery(time.monotonic(), self.headers.get("authorization", ""), body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()

    def wait_for(self, predicate, timeout: float) -> Delivery | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for delivery in list(self.deliveries):
                if predicate(delivery):
                    return delivery
            time.sleep(0.05)
        return None


class RevisionExporter:
    """One served revision's metrics, exported over HTTP with the predictor's own metric definitions
    (monitoring.metrics.PredictorMetrics) in a fresh registry. The test decides what each request
    does: healthy (ok, 3 ms) or failing (a 5xx), so a canary can start failing at a known instant."""

    def __init__(self, model: str, version: str, role: str, requests_per_tick: int):
        from prometheus_client import CollectorRegistry, start_http_server

        self.labels = {"model": model, "version": version, "role": role}
        self.registry = CollectorRegistry()
        metrics = PredictorMetrics.create(self.registry)
        self.requests = {o: metrics.requests.labels(**self.labels, outcome=o) for o in OUTCOMES}
        self.duration = metrics.duration.labels(**self.labels)
        self.score = metrics.score.labels(**self.labels)
        self.rows = metrics.rows.labels(**self.labels)
        self.per_tick = requests_per_tick
        self.failing = False
        self.first_failure: float | None = None
        self.port = free_port()
        self.server, _ = start_http_server(self.port, addr="127.0.0.1", registry=self.registry)

    @property
    def target(self) -> Target:
        return Target(f"127.0.0.1:{self.port}", self.labels)

    def tick(self) -> None:
        for _ in range(self.per_tick):
            if self.failing:
                if self.first_failure is None:
                    self.first_failure = time.monotonic()
                self.requests["error"].inc()
            else:
                self.requests["ok"].inc()
                self.duration.observe(0.003)
                self.score.observe(0.3)
                self.rows.inc()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Stack:
    prometheus: object
    alertmanager: object
    webhook: WebhookReceiver
    predictor_url: str
    canary: RevisionExporter
    champion: RevisionExporter


def _wait_ready(url: str, process: subprocess.Popen, log_path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"predictor exited: {log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    pytest.fail(f"predictor not ready after {timeout} s: {log_path.read_text()[-2000:]}")


@pytest.fixture(scope="session")
def monitoring_tools() -> None:
    """Missing tools skip (or, in CI, fail) before anything is trained or started."""
    binary("prometheus")
    binary("prometheus-alertmanager", "alertmanager")


@pytest.fixture(scope="module")
def monitoring_stack(monitoring_tools, tmp_path_factory, registered_churn, churn_spec, churn_frame):
    work = tmp_path_factory.mktemp("monitoring")
    stop = threading.Event()
    started: list = []
    threads: list[threading.Thread] = []
    try:
        # A real predictor, the churn champion, with real traffic.
        port = free_port()
        log_path = work / "predictor.log"
        with open(log_path, "w") as log:
            command = predictor_command("churn", "models:/churn@champion", registered_churn["tracking_uri"], port)
            predictor = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        started.append(predictor)
        predictor_url = f"http://127.0.0.1:{port}"
        _wait_ready(predictor_url, predictor, log_path)
        rows = instances(churn_spec, churn_frame.head(50))

        def drive_predictor():
            while not stop.is_set():
                send(predictor_url, churn_spec, rows, 5, batch=2)
                stop.wait(0.2)

        # A canary rollout of `fraud`: 10 requests/s on the canary, 20 on the champion.
        champion = RevisionExporter("fraud", "1", "champion", 2)
        canary = RevisionExporter("fraud", "2", "canary", 1)
        started += [champion, canary]

        def drive_exporters():
            while not stop.wait(0.1):
                champion.tick()
                canary.tick()

        threads = [threading.Thread(target=f, daemon=True) for f in (drive_predictor, drive_exporters)]
        for thread in threads:
            thread.start()

        webhook = WebhookReceiver().start()
        started.append(webhook)
        token = work / "webhook-token"
        token.write_text(WEBHOOK_TOKEN)
        # The production configuration: default Alertmanager timing, the committed rules, 3 s scrapes.
        am = start_alertmanager(work / "alertmanager", alertmanager.render(alertmanager.config(webhook.url, token)))
        started.append(am)
        config = prometheus_config(
            [
                Target(f"127.0.0.1:{port}", {"model": "churn", "version": "1", "role": "champion"}),
                champion.target,
                canary.target,
            ],
            rule_files=[rules.RULES_FILE],
            alertmanager_url=am.url,
            scrape_interval=rules.SCRAPE_INTERVAL,
            evaluation_interval=rules.CANARY_EVALUATION_INTERVAL,
        )
        prom = start_prometheus(work / "prometheus", config)
        started.append(prom)
        yield Stack(prom, am, webhook, predictor_url, canary, champion)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        for item in reversed(started):
            if isinstance(item, subprocess.Popen):
                item.terminate()
                try:
                    item.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    item.kill()
            else:
                item.stop()
