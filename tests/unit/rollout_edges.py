"""The process edges of a rollout, for the loop's unit tests: an API server that keeps InferenceServices
(and refuses a stale write, as the real one does), revisions exporting the predictor's own metrics over
real HTTP, a drift service that answers, fails or is gone, and a real MLflow registry."""

from __future__ import annotations

import copy
import itertools
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Gauge, generate_latest

from monitoring.metrics import DRIFT_FEATURE_SCORE, DRIFT_SHARE, PredictorMetrics
from serving.backends import ConflictError
from serving.inference_service import build_inference_service
from serving.rollout.providers import PREDICTION_FEATURE

BAD_GATEWAY = b"<html>502 Bad Gateway</html>"  # what a proxy answers for a process that is gone
NS, NAME = "models", "churn"
INTERVAL = 60


def rollout_spec(churn_spec):
    """The churn spec with production-like rollout settings and all four gates."""
    import yaml

    from components.spec import parse_spec

    data = yaml.safe_load(churn_spec.to_yaml())
    data["deployment"].update(
        namespace=NS, canary_steps=[10, 50, 100], interval_seconds=INTERVAL, min_requests=50, failure_limit=2
    )
    data["deployment"]["gates"] = {
        "error_rate": {"max": 0.01},
        "latency_p99_ratio": {"max": 1.5},
        "drift_share": {"max": 0.5},
        "prediction_psi": {"max": 0.25},
    }
    return parse_spec(yaml.safe_dump(data))


def deploy(spec, percent=10, champion_url="http://champion.invalid", canary_url="http://canary.invalid", drift=True):
    """v2 as a canary next to v1, as the deploy step leaves it; with the payload logger, drift is a gate."""
    api = ApiServer()
    logger_url = "http://drift.invalid/events" if drift else None
    api.apply(
        build_inference_service(spec, "2", champion_version="1", canary_percent=percent, payload_log_url=logger_url)
    )
    api.set_status(NS, NAME, champion_url, canary_url, percent)
    return api


class ApiServer:
    """InferenceServices as the API server keeps them: a write carries the resourceVersion it read and is
    refused (409) over a newer one; the status is KServe's (a subresource a write leaves alone)."""

    def __init__(self):
        self.objects: dict[tuple[str, str], dict] = {}
        self.recorded: list[dict] = []
        self._versions = itertools.count(1)

    def apply(self, obj: dict) -> dict:
        meta = obj["metadata"]
        key = (meta["namespace"], meta["name"])
        current = self.objects.get(key)
        read = meta.get("resourceVersion")
        if current is not None and read is not None and read != current["metadata"]["resourceVersion"]:
            raise ConflictError(f"{meta['name']} changed since it was read")
        new = copy.deepcopy(obj)
        new["metadata"]["resourceVersion"] = str(next(self._versions))
        new["status"] = copy.deepcopy((current or {}).get("status", {}))
        self.objects[key] = new
        return copy.deepcopy(new)

    def get(self, namespace: str, name: str) -> dict | None:
        obj = self.objects.get((namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def list(self, namespace: str | None = None) -> list[dict]:
        return [copy.deepcopy(o) for (ns, _), o in self.objects.items() if namespace in (None, ns)]

    def set_status(self, namespace: str, name: str, champion_url: str, canary_url: str, percent: int) -> None:
        """What KServe writes: the two revisions' traffic and where each one serves."""
        traffic = [
            {"revisionName": f"{name}-predictor-1", "percent": 100 - percent, "latestRevision": False},
            {"revisionName": f"{name}-predictor-2", "percent": percent, "latestRevision": True},
        ]
        traffic[0]["url"], traffic[1]["url"] = champion_url, canary_url
        self.objects[(namespace, name)]["status"] = {"components": {"predictor": {"traffic": traffic}}}

    def record_event(self, obj: dict, reason: str, message: str, warning: bool = False) -> None:
        self.recorded.append({"reason": reason, "message": message, "type": "Warning" if warning else "Normal"})

    def events(self, namespace: str, name: str) -> list[dict]:
        return list(self.recorded)


class HttpEdge(ThreadingHTTPServer):
    """A process answering GETs over real HTTP on a loopback port: `answer(path)` gives the status and
    the body; `kill()` closes the port as a SIGKILL would (a connection is refused from then on)."""

    daemon_threads = True

    def __init__(self, answer):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                code, text = outer.answer(self.path)
                self.send_response(code)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

            def log_message(self, *args):  # quiet
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.answer = answer
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def kill(self) -> None:
        if self._thread.is_alive():
            self.shutdown()
            self.server_close()


class RevisionProcess:
    """One revision's predictor as its `/metrics` shows it: the predictor's own metric definitions in a
    fresh registry, counted as the predictor counts (a 5xx is an error and has no latency sample)."""

    def __init__(self, model: str, version: str, role: str):
        self.labels = {"model": model, "version": version, "role": role}
        self.garbage = False  # a proxy's error page instead of an exposition
        self.restart()
        self.server = HttpEdge(lambda path: (200, BAD_GATEWAY if self.garbage else generate_latest(self.registry)))

    def restart(self) -> None:
        """A new process: every series starts from zero again."""
        self.registry = CollectorRegistry()
        metrics = PredictorMetrics.create(self.registry)
        self.requests = {o: metrics.requests.labels(**self.labels, outcome=o) for o in ("ok", "invalid", "error")}
        self.duration = metrics.duration.labels(**self.labels)

    def serve(self, ok: int = 0, error: int = 0, invalid: int = 0, latency: float = 0.003) -> None:
        for _ in range(ok):
            self.requests["ok"].inc()
            self.duration.observe(latency)
        self.requests["error"].inc(error)
        self.requests["invalid"].inc(invalid)

    @property
    def url(self) -> str:
        return self.server.url

    def kill(self) -> None:
        self.server.kill()


class DriftService:
    """The drift service's `/metrics`: the canary's drift share vs training and its prediction PSI vs the
    champion; `failing` answers 500, `garbage` a proxy's error page, `kill()` closes the port."""

    def __init__(self, model: str, canary_version: str, share: float = 0.05, psi: float = 0.01):
        self.registry = CollectorRegistry()
        labels = ["model", "version", "role", "reference"]
        base = {"model": model, "version": canary_version, "role": "canary"}
        Gauge(DRIFT_SHARE, "share", labels, registry=self.registry).labels(**base, reference="training").set(share)
        Gauge(DRIFT_FEATURE_SCORE, "psi", [*labels, "feature"], registry=self.registry).labels(
            **base, reference="champion", feature=PREDICTION_FEATURE
        ).set(psi)
        self.failing = self.garbage = False
        self.server = HttpEdge(self._answer)

    def _answer(self, path: str) -> tuple[int, bytes]:
        if self.failing:
            return 500, b"internal error"
        return 200, BAD_GATEWAY if self.garbage else generate_latest(self.registry)

    @property
    def metrics_url(self) -> str:
        return f"{self.server.url}/drift/metrics"

    def kill(self) -> None:
        self.server.kill()


def registry_with_two_versions(directory) -> str:
    """A real MLflow registry (SQLite) with `churn` v1 @champion and v2 @challenger, as a deploy leaves it."""
    from components import registry

    uri = f"sqlite:///{directory / 'mlflow.db'}"
    client = registry.connect(uri)
    client.create_registered_model("churn")
    for _ in range(2):
        client.create_model_version("churn", source=str(directory / "model"), run_id=None)
    client.set_registered_model_alias("churn", registry.CHAMPION, "1")
    client.set_registered_model_alias("churn", registry.CHALLENGER, "2")
    return uri
