"""Processes killed mid-rollout, on a real local plane: SIGKILL, no goodbye.

- A canary's predictor killed: the requests routed to it meanwhile get the plane's 503, count as the
  canary's errors, and the error-rate gate rolls it back.
- The champion's predictor killed: the plane restarts it on the same port (as a kubelet would) and says
  so in the object's history.
- The plane and then the rollout controller killed: `shepherd up` restores the split and the rollout
  state without a second set of processes, the running controller resumes by itself, a restarted one
  carries on where the last one stood, and the rollout is promoted without anyone deciding anything.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from components import registry
from monitoring.metrics import PLANE_UNAVAILABLE_TOTAL
from serving.backends import LocalBackend, start_plane
from serving.inference_service import build_inference_service
from serving.local_plane import REPO_ROOT, free_port
from serving.rollout.controller import RolloutMetrics
from serving.rollout.loop import reconcile_once
from serving.rollout.machine import Action
from serving.traffic import TrafficReport, instances, send
from tests.support.plane_processes import children_of, is_gone, pid_serving, running_plane, stop_and_reap
from tests.support.rollouts import champion_and_challenger, fast_rollout_spec
from tests.support.waiting import wait_for


class Traffic:
    """Real rows sent through the plane from a thread until stopped; a plane that is away (killed,
    restarting) is waited for, as a client retrying would."""

    def __init__(self, url: str, spec, rows: list[dict]):
        self.url, self.spec, self.rows = url, spec, rows
        self.stop = threading.Event()
        self.report = TrafficReport()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                sent = send(self.url, self.spec, self.rows, 20)
            except httpx.TransportError:
                self.stop.wait(0.2)
                continue
            self.report.by_status.update(sent.by_status)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def _revision_port(obj: dict, role: str) -> int:
    traffic = obj["status"]["components"]["predictor"]["traffic"]
    tag = "latest" if role == "canary" else "prev" if len(traffic) > 1 else "latest"
    (entry,) = [t for t in traffic if t["tag"] == tag]
    return int(entry["url"].rsplit(":", 1)[1])


def _unanswered(plane_url: str, version: str, role: str) -> float:
    text = httpx.get(f"{plane_url}/router/metrics", timeout=10).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == PLANE_UNAVAILABLE_TOTAL and s.labels["version"] == version and s.labels["role"] == role
    )


def test_a_killed_canary_counts_its_failures_and_is_rolled_back(registry_with_challenger, fast_spec, churn_frame):
    home, uri = registry_with_challenger
    spec = fast_rollout_spec(fast_spec, gates={"error_rate": {"max": 0.01}}, failure_limit=1)
    with running_plane(home / "plane-canary-killed", uri) as plane:
        backend = LocalBackend(plane.url)
        backend.apply(build_inference_service(spec, "1"))
        deployed = backend.apply(build_inference_service(spec, "2", champion_version="1", canary_percent=10))
        decisions = []
        with Traffic(plane.url, spec, instances(spec, churn_frame.head(200))) as traffic:
            metrics = RolloutMetrics(CollectorRegistry())
            decisions.append(reconcile_once(backend, uri, "models", "churn", metrics=metrics))  # the baseline
            os.kill(pid_serving(_revision_port(deployed, "canary")), signal.SIGKILL)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and decisions[-1].action is not Action.ROLLBACK:
                time.sleep(spec.deployment.interval_seconds * 1.2)
                decisions.append(reconcile_once(backend, uri, "models", "churn", metrics=metrics))

        assert decisions[-1].action is Action.ROLLBACK, [(d.action, d.reason) for d in decisions]
        assert "error rate" in decisions[-1].reason
        # What the canary's clients saw while it was gone, and what the gate counted: the plane's 503s.
        assert traffic.report.by_status[503] > 0, traffic.report
        assert _unanswered(plane.url, "2", "canary") > 0
        assert str(registry.connect(uri).get_model_version_by_alias("churn", "champion").version) == "1"


def test_a_killed_champion_is_restarted_on_its_port_and_its_history_says_so(
    registry_with_challenger, fast_spec, churn_frame
):
    home, uri = registry_with_challenger
    with running_plane(home / "plane-champion-killed", uri) as plane, httpx.Client(base_url=plane.url) as http:
        backend = LocalBackend(plane.url)
        port = _revision_port(backend.apply(build_inference_service(fast_spec, "1")), "champion")
        killed = pid_serving(port)
        os.kill(killed, signal.SIGKILL)
        restarted = lambda: any(e["reason"] == "RevisionRestarted" for e in backend.events("models", "churn"))  # noqa: E731
        wait_for(restarted, 30, "the champion's restart")
        wait_for(lambda: http.get("/healthz").json()["status"] == "ok", 60, "the restarted champion's readiness")
        assert pid_serving(port) != killed  # a new process, on the port the status names
        answered = http.post("/v1/models/churn:predict", json={"instances": instances(fast_spec, churn_frame.head(3))})
        assert answered.status_code == 200 and len(answered.json()["predictions"]) == 3, answered.text
        (event,) = [e for e in backend.events("models", "churn") if e["reason"] == "RevisionRestarted"]
        assert event["type"] == "Warning" and "churn-v1" in event["message"]
        restarts = httpx.get(f"{plane.url}/router/metrics").text
        assert 'shepherd_plane_restarts_total{component="churn-v1"} 1.0' in restarts


def _controller(plane_url: str, tracking_uri: str, log: Path) -> subprocess.Popen:
    """`shepherd rollout controller` against the plane, scraping the revisions, every second."""
    command = [sys.executable, "-m", "pipelines.cli", "rollout", "controller", "--backend", plane_url]
    command += ["--metrics", "scrape", "--interval-seconds", "1", "--port", "0", "--tracking-uri", tracking_uri]
    with open(log, "ab") as out:
        return subprocess.Popen(command, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)


def _canary_percent(backend: LocalBackend) -> int | None:
    """The canary's share, or None once there is no canary (promoted); -1 while the plane is away."""
    try:
        obj = backend.get("models", "churn")
    except Exception:
        return -1
    canary = (obj or {}).get("spec", {}).get("canary")
    return canary[0]["trafficPercent"] if canary else None


def _processes_naming(text: str) -> set[int]:
    """Every live process whose command line contains `text` (the test's own tracking URI)."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/cmdline", "rb") as handle:
                if text.encode() in handle.read() and not is_gone(int(entry)):
                    found.add(int(entry))
    return found


def test_a_rollout_finishes_by_itself_across_a_killed_plane_and_a_killed_controller(tmp_path, churn_spec, churn_frame):
    spec = fast_rollout_spec(
        churn_spec,
        gates={"error_rate": {"max": 0.05}, "latency_p99_ratio": {"max": 5.0}},
        canary_steps=[10, 20, 30, 40, 60, 100],
        min_requests=10,
    )
    uri = champion_and_challenger(spec, churn_frame, tmp_path)
    home, port = tmp_path / "plane", free_port()
    plane = start_plane(home, uri, port)
    backend = LocalBackend(plane.url)
    backend.apply(build_inference_service(spec, "1"))
    backend.apply(build_inference_service(spec, "2", champion_version="1", canary_percent=10))
    controllers = [_controller(plane.url, uri, tmp_path / "controller.log")]
    try:
        with Traffic(plane.url, spec, instances(spec, churn_frame.head(200))):
            wait_for(lambda: (_canary_percent(backend) or 0) >= 20, 90, "the first step")
            children = children_of(plane.pid)
            os.kill(plane.pid, signal.SIGKILL)
            os.waitpid(plane.pid, 0)
            wait_for(lambda: all(is_gone(pid) for pid in children), 15, "the plane's children's exit")
            time.sleep(3)  # the controller finds the plane gone and backs off

            plane = start_plane(home, uri, port)  # `shepherd up`
            stood_at = _canary_percent(backend)
            assert stood_at is not None and stood_at >= 20  # the split and the rollout state came back
            assert len(children_of(plane.pid)) == 3  # drift service, champion, canary: no second set
            wait_for(lambda: (_canary_percent(backend) or 101) > stood_at, 120, "the controller resuming by itself")

            controllers[0].kill()
            controllers[0].wait()
            controllers.append(_controller(plane.url, uri, tmp_path / "controller.log"))
            client = registry.connect(uri)
            wait_for(
                lambda: str(client.get_model_version_by_alias("churn", "champion").version) == "2",
                180,
                "the promotion",
                every=0.5,
            )
        reasons = [e["reason"] for e in backend.events("models", "churn")]
        assert "PlaneRecovered" in reasons and "ControllerResumed" in reasons, reasons
        assert _canary_percent(backend) is None  # promoted: v2 serves everything
        # No orphans, no duplicates: every process serving this registry is the plane's (drift + v2) or
        # the running controller.
        wait_for(lambda: len(children_of(plane.pid)) == 2, 30, "the old champion's stop")
        assert _processes_naming(uri) == {plane.pid, *children_of(plane.pid), controllers[-1].pid}
    finally:
        for controller in controllers:
            controller.kill()
            controller.wait()
        stop_and_reap(home)
        print((tmp_path / "controller.log").read_text()[-3000:])
