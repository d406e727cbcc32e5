"""The local serving plane: KServe's InferenceService semantics on one machine.

One process holds the applied InferenceService objects (persisted, so the plane survives a restart),
runs one predictor process (`serving.predictor`, a real `kserve.ModelServer`) per revision, and routes
predictions to the champion or the canary in the proportion the object sets (Standard
`spec.canary[].trafficPercent` or Knative `spec.predictor.canaryTrafficPercent`). Status is reported in
KServe's shape. The plane forwards, the predictor answers: bodies, status codes and the binary tensor
extension's headers (`inference-header-content-length`, `content-type`) pass through both ways, so any
V1 or Open Inference Protocol (V2) client works against the plane as against one predictor.

Inference (V1 and Open Inference Protocol):
  POST /v1/models/<m>:predict  POST /v2/models/<m>/infer     split by the canary percentage
  POST /v2/models/<m>/versions/<v>/infer                       the revision serving version <v>
  GET  /v1/models/<m>  GET /v2/models/<m>  GET /v2/models/<m>/ready   forwarded to the champion
  GET  /v2/models/<m>/versions/<v>[/ready]                     forwarded to the revision serving <v>
  GET  /v1/models  GET /v2/models                              the deployed models
  GET  /v2  GET /v2/health/live  GET /v2/health/ready          answered by the plane (ready: every
                                                               revision of every deployment is ready)
  An unknown model or version is a 404 in the error shape `{"error": "..."}`. The answering revision
  is in the `x-shepherd-revision` and `x-shepherd-role` response headers. Every prediction has an id:
  the request's `x-request-id` (the client's when usable, else the plane's own), sent to the predictor,
  answered as a header and in the body (row i is `<id>-<i>`; V2: the `prediction_id` output), and the
  `id` of its payload-log events (`serving/prediction_ids.py`).
  A revision whose connection drops under a request (a keep-alive connection it closed) is asked once
  more (inference is idempotent), then its successor if it was just replaced; only a revision that is
  really gone answers 503, and only to the requests routed to it (counted in
  `shepherd_plane_unavailable_total{model,version,role}`, which the rollout's error-rate gate adds to
  that revision's errors).

Ground truth: `POST /v1/models/<m>/feedback` (token) takes labels for predictions by id, or by entity key and
  event time; the drift service records them in the outcome ledger beside the feature store
  (`components/outcomes.py`) and scores each revision's live quality (`GET /drift/models/<m>/quality`).

Metrics: `GET /metrics` serves the plane's own series (`shepherd_plane_*`: requests by model, role and
outcome; payload-log events delivered and dropped) and every running revision's, scraped at that moment,
each labelled `revision` (`monitoring/metrics.py` names them); `GET /router/metrics` the plane's own
series alone. `GET /sd/predictors` lists the running revisions for Prometheus' HTTP service discovery.

Supervision: like a kubelet, the plane restarts its drift service and any revision whose process exited
(same port; a `RevisionRestarted` Warning event; `shepherd_plane_restarts_total{component}`), and
`/healthz` says `degraded` while one is down.

Payload logs: when the object names a logger (`spec.predictor.logger.url`), each prediction's request and
response are logged as CloudEvents in KServe's logger format, every status included (the response carries
it in `statuscode`). Logging never waits: events go to a bounded queue per logger URL (dropped and counted
when full; `--payload-queue-size`) and one background task per URL delivers them, in batch mode to the
plane's own drift service and in KServe's binary mode to any other URL (`serving/payload_logger.py`).

Admin API (what the `local` ServingBackend and `shepherd status` use):
  PUT  /apis/serving.kserve.io/v1beta1/namespaces/<ns>/inferenceservices/<name>   apply an object
       (replacing one needs the `metadata.resourceVersion` it was read at, else 409; `?force=true`
       replaces blindly)
  GET  /apis/serving.kserve.io/v1beta1/namespaces/<ns>/inferenceservices/<name>   object + status
  GET  /apis/serving.kserve.io/v1beta1/inferenceservices                          every object
  POST .../inferenceservices/<name>/events   GET .../events                     the object's history
  GET  /healthz
Changes (PUT objects, POST events, POST /drift/) need `Authorization: Bearer <token>`: the plane issues
it at start into a file only its user can read (`serving/plane_auth.py`), where that user's clients find
it; anything else gets a 401. Predictions and reads need no token.

The plane also runs the drift service (`monitoring.drift`) as a child process and serves it under
`/drift/`: `POST /drift/` is the payload-logger URL the deploy step writes into objects it applies
here (KServe's binary mode is accepted there too), `GET /drift/metrics` its Prometheus metrics,
`GET /drift/models/<name>[/report]` its results.

Processes: the children (predictors, drift service) die with the plane (`serving/children.py`), and a
replaced revision is stopped without blocking the event loop, so predictions flow during a promotion.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from urllib.parse import urlsplit

# Module level: FastAPI resolves the handlers' (string) annotations in this module's globals.
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from serving import children, prediction_ids
from serving.inference_service_view import InferenceServiceView
from serving.payload_logger import DEFAULT_QUEUE_SIZE, ENV_QUEUE_SIZE, Body, PayloadLogger, inference_events
from serving.plane_metrics import PlaneMetrics, exposition
from serving.schedules import SCHEDULES, Schedules, describe
from serving.upstream import Upstream, UpstreamTimeout, UpstreamUnavailable

logger = logging.getLogger("shepherd.plane")

API = "/apis/serving.kserve.io/v1beta1"
READY_TIMEOUT_SECONDS = 120
STABLE_SECONDS = 600.0  # a revision that ran this long since its last restart backs off from 1 s again
SUPERVISE_SECONDS = 1.0  # how often the plane checks that its drift service and revisions still run
UPSTREAM_TIMEOUT_SECONDS = 30
REPO_ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = ("127.0.0.1", "localhost", "::1")
# What passes between a client and a revision, besides the body (lower case).
FORWARDED_REQUEST_HEADERS = ("content-type", "content-encoding", "inference-header-content-length", "x-request-id")
FORWARDED_RESPONSE_HEADERS = ("content-type", "inference-header-content-length", "x-request-id")


@dataclass
class Revision:
    """One served model version: its predictor process and where it listens."""

    name: str  # <isvc>-v<version>
    model_uri: str
    version: str
    role: str  # champion | canary
    port: int
    process: subprocess.Popen | None = None
    env: dict[str, str] = field(default_factory=dict)  # the container's SHEPHERD_* settings
    restarting: bool = False  # its process exited and a new one is not ready yet
    restarts: int = 0
    next_restart: float = 0.0  # monotonic time before which a crashing revision is not restarted again

    @property
    def up(self) -> bool:
        return self.process is not None and self.process.poll() is None and not self.restarting

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class StaleWrite(Exception):
    """A write based on an older resourceVersion than the stored object's: answered with a 409."""


@dataclass
class Deployment:
    """An applied InferenceService and the revisions serving it."""

    obj: dict
    champion: Revision
    canary: Revision | None = None
    canary_percent: int = 0
    events: list[dict] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Plane:
    """Holds deployments, starts and stops predictor processes, persists objects."""

    def __init__(self, home: Path, tracking_uri: str, url: str, feature_repo: str | None = None):
        self.dir = home / "serving"
        # The outcome ledger (predictions and their labels) lives with the feature store.
        self.feature_repo = feature_repo or str(home / "feature_repo")
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "logs").mkdir(exist_ok=True)
        self.state_file = self.dir / "objects.json"
        self.tracking_uri = tracking_uri
        self.url = url
        self.deployments: dict[str, Deployment] = {}
        self.lock = asyncio.Lock()
        self.drift: Revision | None = None  # the drift service child process
        self.drift_restarts = 0
        self.metrics = PlaneMetrics.create()
        self._readiness_waits: set[asyncio.Task] = set()  # restarted revisions not ready yet
        self.schedules = Schedules(self.dir / "schedules.json")
        self._retrain_launchers: list[subprocess.Popen] = []  # `shepherd retrain` processes, reaped each tick

    async def start_drift_service(self, client) -> None:
        port = free_port()
        command = [
            sys.executable,
            "-m",
            "monitoring.drift",
            "--port",
            str(port),
            "--tracking-uri",
            self.tracking_uri,
            "--feature-repo",
            self.feature_repo,
        ]
        process = children.spawn(command, self.dir / "logs" / "drift.log", REPO_ROOT)
        started = Revision("drift", "", "", "drift", port, process)
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the drift service exited; see {self.dir / 'logs' / 'drift.log'}")
            with contextlib.suppress(Exception):
                if (await client.get(f"{started.url}/healthz", timeout=1)).status_code == 200:
                    self.drift = started  # routes and payload logs follow it from now on
                    return
            await asyncio.sleep(0.25)
        await children.stop(process)
        raise RuntimeError(f"the drift service did not answer within {READY_TIMEOUT_SECONDS} s")

    async def supervise(self, client, every_seconds: float = SUPERVISE_SECONDS) -> None:
        """Restart the drift service and any revision whose process has exited (as a kubelet restarts a
        container), so a crash costs one restart, not the rest of the plane's life. A restarted revision
        keeps its port (its URL in the status stays valid) and is a Warning event in `shepherd history`.
        Runs until cancelled."""
        while True:
            await asyncio.sleep(every_seconds)
            await self._restart_dead_revisions(client)
            self.run_due_schedules(time.time())
            if self.drift is None or self.drift.process.poll() is None:
                continue
            code = self.drift.process.returncode
            self.drift_restarts += 1
            self.metrics.restarts.labels(component="drift").inc()
            logger.error("the drift service exited (code %s); restarting it (restart %d)", code, self.drift_restarts)
            try:
                await self.start_drift_service(client)
            except RuntimeError as exc:  # tried again at the next tick
                logger.error("restarting the drift service failed: %s", exc)

    def run_due_schedules(self, now: float) -> None:
        """Start `shepherd retrain` for each due schedule (it starts nothing while the model's last run is
        still going: one run at a time), and reap the launchers that finished."""
        self._retrain_launchers = [p for p in self._retrain_launchers if p.poll() is None]
        for schedule in self.schedules.due(now):
            reason = f"schedule: every {describe(schedule.every_seconds)}"
            command = [sys.executable, "-m", "pipelines.cli", "retrain", schedule.model, "--reason", reason]
            command += ["--home", str(self.dir.parent), "--tracking-uri", self.tracking_uri]
            command += ["--namespace", schedule.namespace]
            logger.info("retraining %s on its schedule (every %ss)", schedule.model, schedule.every_seconds)
            with open(self.dir / "logs" / "schedules.log", "a") as log:
                self._retrain_launchers.append(
                    subprocess.Popen(
                        command,
                        cwd=REPO_ROOT,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env={**os.environ, "SHEPHERD_FEATURE_REPO": self.feature_repo},
                    )
                )

    async def _restart_dead_revisions(self, client) -> None:
        """Start again every revision whose process exited, backing off (1, 2, 4 ... 60 s) when it keeps
        crashing, as a kubelet does. Only the start holds the lock; readiness is awaited without it, so
        a slow or hanging restart never delays a rollback or any other write."""
        restarted = []
        async with self.lock:  # not while `apply` replaces revisions: it starts what it needs itself
            for key, deployment in self.deployments.items():
                for revision in (deployment.champion, deployment.canary):
                    if revision is None or revision.process is None or revision.process.poll() is None:
                        continue
                    if time.monotonic() < revision.next_restart:
                        continue
                    code = revision.process.returncode
                    if time.monotonic() - revision.next_restart > STABLE_SECONDS:  # it had run fine a while
                        revision.restarts = 0
                    revision.restarts += 1
                    revision.next_restart = time.monotonic() + min(60.0, 2.0 ** (revision.restarts - 1))
                    self.metrics.restarts.labels(component=revision.name).inc()
                    logger.error("revision %s exited (code %s); restarting it", revision.name, code)
                    namespace, name = key.split("/", 1)
                    self.record_event(
                        namespace,
                        name,
                        "RevisionRestarted",
                        f"the {revision.role} {revision.name} exited (code {code}); the plane restarted it. "
                        "Requests it could not answer meanwhile got a 503 and count as its errors",
                        "Warning",
                    )
                    revision.restarting = True
                    self._spawn(revision)
                    restarted.append(revision)

        async def ready(revision: Revision) -> None:
            try:
                await self._wait_ready(revision, client)
                revision.restarting = False
            except RuntimeError as exc:  # exited again: restarted after its back-off
                logger.error("restarting %s failed: %s", revision.name, exc)

        for revision in restarted:  # awaited in the background: the drift service is checked meanwhile
            task = asyncio.create_task(ready(revision))
            self._readiness_waits.add(task)
            task.add_done_callback(self._readiness_waits.discard)

    def record_event(self, namespace: str, name: str, reason: str, message: str, kind: str = "Normal") -> dict:
        """Append an event to the object's history (`shepherd history`), as Kubernetes Events do."""
        entry = {"time": time.time(), "namespace": namespace, "name": name, "reason": reason, "message": message}
        entry["type"] = kind
        with open(self.dir / "events.jsonl", "a") as handle:
            handle.write(json.dumps(entry) + "\n")
        return entry

    def health(self) -> dict:
        """What `/healthz` reports: each part of the plane, and `degraded` when one is down."""
        drift_up = self.drift is not None and self.drift.process.poll() is None
        revisions = {r.name: r.up for d in self.deployments.values() for r in (d.champion, d.canary) if r is not None}
        return {
            "status": "ok" if drift_up and all(revisions.values()) else "degraded",
            "deployments": len(self.deployments),
            "drift": {"url": f"{self.url}/drift/", "up": drift_up, "restarts": self.drift_restarts},
            "revisions": {name: "up" if up else "down" for name, up in revisions.items()},
        }

    def drift_batch_target(self, logger_url: str) -> Callable[[], str] | None:
        """The plane's own drift service (`<plane>/drift/`, what the deploy step writes) gets its payload
        logs in batch mode, straight from the plane; any other logger URL gets KServe's binary mode."""
        url, own = urlsplit(logger_url), urlsplit(self.url)
        if url.hostname in LOOPBACK and url.port == own.port and url.path.rstrip("/") == "/drift":
            return lambda: f"{self.drift.url}/"
        return None

    def running_revisions(self) -> list[Revision]:
        return [
            r
            for d in self.deployments.values()
            for r in (d.champion, d.canary)
            if r is not None and r.process is not None and r.process.poll() is None
        ]

    # -- persistence --------------------------------------------------------------------------
    def _save(self) -> None:
        objects = {key: d.obj for key, d in self.deployments.items()}
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(objects, indent=2))
        tmp.replace(self.state_file)  # atomic: a crash never leaves half a state file

    async def restore(self) -> None:
        """Re-apply the objects of the previous run (the plane survives a restart)."""
        if not self.state_file.exists():
            return
        for obj in json.loads(self.state_file.read_text()).values():
            try:
                await self.apply(obj, restoring=True)  # keeps its resourceVersion: readers stay valid
            except Exception as exc:  # one broken object must not keep the others down
                logger.error("could not restore %s: %s", obj["metadata"]["name"], exc)

    # -- revisions ----------------------------------------------------------------------------
    def _start(self, isvc: str, model_uri: str, version: str, role: str, env: dict[str, str]) -> Revision:
        revision = Revision(f"{isvc}-v{version}", model_uri, version, role, free_port(), env=env)
        self._spawn(revision)
        return revision

    def _spawn(self, revision: Revision) -> None:
        """Start (or restart) the revision's predictor process on its port."""
        from serving.predictor import LOOPBACK, predictor_command

        isvc = revision.name.rsplit("-v", 1)[0]
        revision.process = children.spawn(  # on loopback: only this machine's plane talks to a revision
            predictor_command(isvc, revision.model_uri, self.tracking_uri, revision.port, revision.role, host=LOOPBACK),
            self.dir / "logs" / f"{revision.name}.log",
            REPO_ROOT,
            env={**os.environ, **revision.env},
        )

    async def _wait_ready(self, revision: Revision, client) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if revision.process.poll() is not None:
                log = (self.dir / "logs" / f"{revision.name}.log").read_text().strip().splitlines()
                raise RuntimeError(f"revision {revision.name} exited: {log[-1] if log else 'no output'}")
            try:
                if (await client.get(f"{revision.url}/v2/health/ready", timeout=1)).status_code == 200:
                    return
            except Exception:  # not listening yet
                pass
            await asyncio.sleep(0.25)
        raise RuntimeError(f"revision {revision.name} not ready after {READY_TIMEOUT_SECONDS} s")

    @staticmethod
    async def _stop(revision: Revision | None) -> None:
        """Stop a revision's process; the event loop keeps serving meanwhile."""
        if revision is not None:
            await children.stop(revision.process)

    async def apply(self, obj: dict, restoring: bool = False, force: bool = False) -> Deployment:
        """Create or update a deployment, reusing revisions that serve the same model URI.

        Like the API server, every write gets a new `metadata.resourceVersion`, and an object that
        carries one is written only over that version (`StaleWrite` otherwise): the rollout loop and
        the webhook decide from what they read, and neither may undo the other's write. Replacing an
        existing object needs the version it was read at, as the API server requires for custom
        resources, unless `force` (a blind replace, for an operator who means it)."""
        import httpx

        meta = obj["metadata"]
        key = f"{meta.get('namespace', 'default')}/{meta['name']}"
        view = InferenceServiceView(obj)
        served, percent = view.served(), view.canary_percent or 0
        async with self.lock, httpx.AsyncClient() as client:
            current = self.deployments.get(key)
            if not restoring:
                current_version = current.obj["metadata"].get("resourceVersion", "0") if current else "0"
                read_version = meta.get("resourceVersion")
                if current is not None and not read_version and not force:
                    raise StaleWrite(
                        f"metadata.resourceVersion: required to replace inferenceservice {key} (now at "
                        f"{current_version}): read it and write over that version, or force a blind replace"
                    )
                if read_version and read_version != current_version and not force:
                    raise StaleWrite(
                        f"inferenceservice {key} changed since it was read (resourceVersion {read_version}, "
                        f"now {current_version}); read it again"
                    )
                meta["resourceVersion"] = str(int(current_version) + 1)
            running = {}
            if current is not None:
                for rev in (current.champion, current.canary):
                    if rev is not None:
                        running[rev.model_uri] = rev
            revisions = {}
            for uri, version, role in ((m.model_uri, m.version, m.role) for m in served):
                env = view.env(role)
                rev = running.pop(uri, None)
                if rev is not None and (rev.env != env or rev.role != role):
                    # Other settings, or a promoted canary whose metrics must now say `champion`:
                    running[uri] = rev  # a new revision replaces it once ready
                    rev = None
                if rev is None or rev.process is None or rev.process.poll() is not None:
                    rev = self._start(meta["name"], uri, version, role, env)
                    await self._wait_ready(rev, client)
                elif rev.restarting:  # the supervisor restarted it: served again once it is ready
                    await self._wait_ready(rev, client)
                    rev.restarting = False
                revisions[role] = rev
            deployment = Deployment(
                obj, revisions["champion"], revisions.get("canary"), percent, current.events if current else []
            )
            deployment.events.append(
                {
                    "time": time.time(),
                    "champion": served[0].version,
                    "canary": served[1].version if len(served) > 1 else None,
                    "canaryPercent": percent,
                }
            )
            self.deployments[key] = deployment
            self._save()
            # Only now that requests go to the new revisions: a request still on an old one completes
            # (SIGTERM is a graceful stop) or is retried on its successor.
            await asyncio.gather(*(self._stop(leftover) for leftover in running.values()))
        return deployment

    async def shutdown(self) -> None:
        revisions = [r for d in self.deployments.values() for r in (d.champion, d.canary)]
        await asyncio.gather(*(self._stop(r) for r in (self.drift, *revisions)))

    # -- status -------------------------------------------------------------------------------
    def with_status(self, deployment: Deployment) -> dict:
        """The object with `status` in KServe's shape."""
        obj = json.loads(json.dumps(deployment.obj))
        name = obj["metadata"]["name"]
        url = f"{self.url}/v1/models/{name}"
        champion, canary = deployment.champion, deployment.canary
        traffic = [
            {
                "revisionName": champion.name,
                "percent": 100 - deployment.canary_percent,
                "latestRevision": canary is None,
                "tag": "prev" if canary else "latest",
                "url": champion.url,
            }
        ]
        if canary is not None:
            traffic.append(
                {
                    "revisionName": canary.name,
                    "percent": deployment.canary_percent,
                    "latestRevision": True,
                    "tag": "latest",
                    "url": canary.url,
                }
            )
        predictor = {
            "url": url,
            "restUrl": url,
            "traffic": traffic,
            "latestCreatedRevision": (canary or champion).name,
            "latestReadyRevision": (canary or champion).name,
            "latestRolledoutRevision": champion.name,
        }
        previous = [e for e in deployment.events if e["champion"] != champion.version]
        if previous:
            predictor["previousRolledoutRevision"] = f"{name}-v{previous[-1]['champion']}"
        ready = all(r.up for r in (champion, canary) if r)
        status = {
            "url": url,
            "deploymentMode": obj["metadata"].get("annotations", {}).get("serving.kserve.io/deploymentMode"),
            "components": {"predictor": predictor},
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        }
        if canary is not None and obj["spec"].get("canary"):
            status["canaryStatuses"] = [
                {"name": canary.name, "ready": ready, "trafficPercent": deployment.canary_percent}
            ]
        obj["status"] = status
        return obj


def upstream_headers(request_headers, infer_v2: bool) -> dict[str, str]:
    """The client's headers a revision gets. An Open Inference Protocol body without the binary tensor
    extension's `inference-header-content-length` is JSON whatever its content type says; clients such
    as tritonclient send none, and the predictor's FastAPI reads a body without one as bytes."""
    headers = {k: v for k, v in request_headers.items() if k in FORWARDED_REQUEST_HEADERS}
    if infer_v2 and "content-type" not in headers and "inference-header-content-length" not in headers:
        headers["content-type"] = "application/json"
    return headers


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _server_version() -> str:
    """Shepherd's version: the installed package's, or a checkout's pyproject.toml."""
    try:
        return version("shepherd")
    except PackageNotFoundError:
        import tomllib

        with contextlib.suppress(OSError, KeyError, ValueError):
            return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
        return "unknown"


def create_app(plane: Plane, payload_queue_size: int = DEFAULT_QUEUE_SIZE, token: str | None = None):
    """The FastAPI app: router for predictions (V1 and Open Inference Protocol), admin API for objects.
    Changes (applying objects, recording events, posting payload logs) need the plane's bearer token
    (`serving.plane_auth`); predictions and reads do not."""
    import httpx

    from serving.plane_auth import ENV_PLANE_TOKEN, authorized, issue_token, token_file

    token = token or issue_token(plane.url)

    def _refused(request: Request) -> JSONResponse | None:
        """None when the request carries the token; else the 401 that says where the token is."""
        if authorized(request.headers.get("authorization"), token):
            return None
        return JSONResponse(
            {
                "error": "authorization: changing what this plane serves needs its bearer token "
                f"(kept in {token_file(plane.url)} for the user who started it; others: {ENV_PLANE_TOKEN})"
            },
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )

    client = httpx.AsyncClient(timeout=UPSTREAM_TIMEOUT_SECONDS)  # the plane's own calls: health, drift, metrics
    upstream_pool = Upstream(UPSTREAM_TIMEOUT_SECONDS)  # predictions and model routes, the hot path
    metrics = plane.metrics
    payload_logger = PayloadLogger(metrics.registry, payload_queue_size, plane.drift_batch_target)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        await plane.start_drift_service(client)
        await plane.restore()  # objects applied before a restart are served again
        supervisor = asyncio.create_task(plane.supervise(client))
        yield
        supervisor.cancel()
        # Here, not after uvicorn.run(): uvicorn re-raises SIGTERM once it has shut down.
        await payload_logger.close()
        await plane.shutdown()
        await client.aclose()
        await upstream_pool.close()

    app = FastAPI(title="Shepherd local serving plane", lifespan=lifespan)

    def _find(name: str) -> Deployment | None:
        return next((d for d in plane.deployments.values() if d.obj["metadata"]["name"] == name), None)

    def _not_deployed(name: str) -> JSONResponse:
        return _error(f"model {name!r} is not deployed on this plane", 404)

    def _pinned(deployment: Deployment, version: str) -> Revision | None:
        return next((r for r in (deployment.champion, deployment.canary) if r and r.version == version), None)

    async def _forward(revision: Revision, path: str, request: Request, body: bytes, headers: dict, successor):
        """(revision that answered, upstream response) or (revision, error response): retried once on
        the same revision, then on `successor()` if the revision was replaced meanwhile."""
        try:
            return revision, await upstream_pool.send(request.method, f"{revision.url}{path}", body, headers)
        except UpstreamTimeout:
            return revision, _error(f"revision {revision.name} did not answer in {UPSTREAM_TIMEOUT_SECONDS} s", 504)
        except UpstreamUnavailable as exc:
            failure = exc
        replacement = successor()
        if replacement is not None and replacement.url != revision.url:
            revision = replacement
            try:
                return revision, await upstream_pool.send(request.method, f"{revision.url}{path}", body, headers)
            except (UpstreamUnavailable, UpstreamTimeout) as exc:
                failure = exc
        return revision, _error(f"revision {revision.name} is unavailable ({failure}); try again", 503)

    async def _proxy(name: str, path: str, request: Request, version: str | None = None) -> Response:
        """Forward to the champion, the canary by the split (predictions) or the revision serving `version`."""
        deployment = _find(name)
        if deployment is None:
            return _not_deployed(name)
        predicting = request.method == "POST"
        if version is not None:
            revision = _pinned(deployment, version)
            if revision is None:
                serving = ", ".join(r.version for r in (deployment.champion, deployment.canary) if r)
                return _error(f"model {name!r} has no version {version!r} on this plane (serving: {serving})", 404)
        elif predicting and deployment.canary is not None and random.random() * 100 < deployment.canary_percent:
            revision = deployment.canary
        else:
            revision = deployment.champion
        role = revision.role
        body = await request.body() if predicting else b""
        headers = upstream_headers(request.headers, infer_v2=predicting and path.startswith("/v2/"))
        if predicting:  # decided here, so the payload log and the predictor's answer carry the same id
            headers[prediction_ids.HEADER] = prediction_ids.request_id(headers)

        def successor() -> Revision | None:
            current = _find(name)
            if current is None:
                return None
            return _pinned(current, version) if version is not None else getattr(current, role)

        revision, upstream = await _forward(revision, path, request, body, headers, successor)
        if isinstance(upstream, Response):  # the plane's own answer: no revision answered
            status, content, answer = upstream.status_code, upstream.body, {"content-type": "application/json"}
            if predicting:
                answer[prediction_ids.HEADER] = headers[prediction_ids.HEADER]
        else:
            status, content = upstream.status_code, upstream.content
            answer = {k: v for k, v in upstream.headers.items() if k in FORWARDED_RESPONSE_HEADERS}  # lower-case
        if predicting:
            metrics.count(name, revision.version, role, status, answered=not isinstance(upstream, Response))
            _log_payload(deployment, revision, body, headers, status, content, answer)
        answer.update({"x-shepherd-revision": revision.name, "x-shepherd-role": revision.role})
        return Response(content, status_code=status, headers=answer)

    def _log_payload(deployment, revision, body, request_headers, status, content, response_headers) -> None:
        logger_spec = deployment.obj["spec"]["predictor"].get("logger")
        if not logger_spec or not logger_spec.get("url"):
            return
        meta = deployment.obj["metadata"]
        events = inference_events(
            logger_spec.get("mode", "all"),
            event_id=request_headers[prediction_ids.HEADER],
            source=f"http://localhost/{revision.name}",
            inference_service=meta["name"],
            namespace=meta.get("namespace", "default"),
            endpoint="canary" if revision.role == "canary" else "default",
            model_id=revision.version,
            request=Body(
                body, request_headers.get("content-type"), request_headers.get("inference-header-content-length")
            ),
            response=Body(
                content, response_headers.get("content-type"), response_headers.get("inference-header-content-length")
            ),
            status=status,
        )
        payload_logger.submit(logger_spec["url"], events)  # never waits

    # -- inference: V1 ------------------------------------------------------------------------------
    @app.post("/v1/models/{name}:predict")
    async def predict_v1(name: str, request: Request) -> Response:
        return await _proxy(name, f"/v1/models/{name}:predict", request)

    @app.get("/v1/models")
    async def list_models_v1() -> Response:
        return JSONResponse({"models": sorted(d.obj["metadata"]["name"] for d in plane.deployments.values())})

    @app.get("/v1/models/{name}")
    async def model_ready_v1(name: str, request: Request) -> Response:
        return await _proxy(name, f"/v1/models/{name}", request)

    # -- inference: Open Inference Protocol (V2) ----------------------------------------------------
    @app.post("/v2/models/{name}/infer")
    async def infer_v2(name: str, request: Request) -> Response:
        return await _proxy(name, f"/v2/models/{name}/infer", request)

    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer_v2_version(name: str, version: str, request: Request) -> Response:
        return await _proxy(name, f"/v2/models/{name}/infer", request, version)

    @app.get("/v2")
    async def server_metadata() -> Response:
        return JSONResponse(
            {"name": "shepherd-local-plane", "version": _server_version(), "extensions": ["binary_tensor_data"]}
        )

    @app.get("/v2/health/live")
    async def server_live() -> Response:
        return JSONResponse({"live": True})

    @app.get("/v2/health/ready")
    async def server_ready() -> Response:
        revisions = [r for d in plane.deployments.values() for r in (d.champion, d.canary) if r is not None]

        async def ready(revision: Revision) -> bool:
            if revision.process is None or revision.process.poll() is not None:
                return False
            try:
                return (await client.get(f"{revision.url}/v2/health/ready", timeout=2)).status_code == 200
            except httpx.TransportError:
                return False

        answers = await asyncio.gather(*(ready(r) for r in revisions))
        not_ready = [r.name for r, ok in zip(revisions, answers, strict=True) if not ok]
        if not_ready:
            return _error(f"revisions not ready: {', '.join(not_ready)}", 503)
        return JSONResponse({"ready": True})

    @app.get("/v2/models")
    async def list_models_v2() -> Response:
        return await list_models_v1()

    @app.get("/v2/models/{name}")
    async def model_metadata(name: str, request: Request) -> Response:
        return await _proxy(name, f"/v2/models/{name}", request)

    @app.get("/v2/models/{name}/ready")
    async def model_ready(name: str, request: Request) -> Response:
        return await _proxy(name, f"/v2/models/{name}/ready", request)

    @app.get("/v2/models/{name}/versions/{version}")
    async def model_version_metadata(name: str, version: str, request: Request) -> Response:
        return await _proxy(name, f"/v2/models/{name}", request, version)

    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_version_ready(name: str, version: str, request: Request) -> Response:
        return await _proxy(name, f"/v2/models/{name}/ready", request, version)

    @app.get("/router/metrics")
    async def router_metrics() -> Response:
        """The plane's own series only: what its router answered for each revision."""
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.router_exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/metrics")
    async def plane_metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        targets = {r.name: r.url for r in plane.running_revisions()}
        return Response(await exposition(metrics, client, targets), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/models/{name}/feedback")
    async def feedback(name: str, request: Request) -> Response:
        """Labels for this model's predictions, recorded by the drift service in the outcome ledger."""
        if (refused := _refused(request)) is not None:
            return refused  # forged labels would move the quality gate
        return await _to_drift_service(f"models/{name}/feedback", request)

    @app.api_route("/drift/{path:path}", methods=["GET", "POST"])
    async def drift(path: str, request: Request) -> Response:
        if request.method == "POST" and (refused := _refused(request)) is not None:
            return refused  # forged payload logs would move the drift gates
        return await _to_drift_service(path, request)

    async def _to_drift_service(path: str, request: Request) -> Response:
        headers = {
            k: v for k, v in request.headers.items() if k.lower().startswith("ce-") or k.lower() == "content-type"
        }
        try:
            upstream = await client.request(
                request.method,
                f"{plane.drift.url}/{path}",
                content=await request.body(),
                headers=headers,
                params=request.query_params,
                timeout=120,
            )
        except httpx.TransportError as exc:
            return _error(f"the drift service is unavailable ({type(exc).__name__})", 503)
        return Response(upstream.content, upstream.status_code, media_type=upstream.headers.get("content-type"))

    @app.put(API + "/namespaces/{namespace}/inferenceservices/{name}")
    async def apply(namespace: str, name: str, request: Request) -> Response:
        if (refused := _refused(request)) is not None:
            return refused
        try:
            obj = await request.json()
            if obj.get("kind") != "InferenceService":
                raise ValueError(f"kind: expected InferenceService, got {obj.get('kind')!r}")
            if obj.get("metadata", {}).get("name") != name:
                raise ValueError(f"metadata.name: must equal the name in the path ({name!r})")
            obj["metadata"]["namespace"] = namespace
            InferenceServiceView(obj).served()
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            return JSONResponse({"error": f"invalid InferenceService: {exc}"}, status_code=400)
        try:
            deployment = await plane.apply(obj, force=request.query_params.get("force") == "true")
        except StaleWrite as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)
        except RuntimeError as exc:
            return JSONResponse({"error": str(exc)}, status_code=502)
        return JSONResponse(plane.with_status(deployment))

    @app.post(API + "/namespaces/{namespace}/inferenceservices/{name}/events")
    async def record_event(namespace: str, name: str, request: Request) -> Response:
        if (refused := _refused(request)) is not None:
            return refused
        try:
            event = await request.json()
            missing = [f for f in ("reason", "message", "type") if not isinstance(event.get(f), str)]
            if missing:
                raise ValueError(f"{', '.join(missing)}: required strings")
        except ValueError as exc:
            return JSONResponse({"error": f"invalid event: {exc}"}, status_code=400)
        entry = plane.record_event(namespace, name, event["reason"], event["message"], event["type"])
        return JSONResponse(entry, status_code=201)

    @app.get(API + "/namespaces/{namespace}/inferenceservices/{name}/events")
    async def list_events(namespace: str, name: str) -> Response:
        path = plane.dir / "events.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        items = [e for e in map(json.loads, lines) if e["namespace"] == namespace and e["name"] == name]
        return JSONResponse({"items": items})

    @app.get(API + "/namespaces/{namespace}/inferenceservices/{name}")
    async def get(namespace: str, name: str) -> Response:
        deployment = plane.deployments.get(f"{namespace}/{name}")
        if deployment is None:
            return JSONResponse({"error": f"inferenceservice {namespace}/{name} not found"}, status_code=404)
        return JSONResponse(plane.with_status(deployment))

    @app.get(API + "/inferenceservices")
    async def list_all() -> Response:
        return JSONResponse({"items": [plane.with_status(d) for d in plane.deployments.values()]})

    @app.get("/sd/predictors")
    async def service_discovery() -> list[dict]:
        """Prometheus HTTP service discovery (`http_sd_configs`): every running revision, as the
        predictor PodMonitor finds the pods on a cluster. Revisions come and go with their ports."""
        groups = []
        for deployment in plane.deployments.values():
            meta = deployment.obj["metadata"]
            for revision in (deployment.champion, deployment.canary):
                if revision is not None:
                    labels = {"namespace": meta.get("namespace", "default"), "revision": revision.name}
                    groups.append({"targets": [f"127.0.0.1:{revision.port}"], "labels": labels})
        return groups

    @app.get(SCHEDULES)
    async def list_schedules() -> Response:
        return JSONResponse({"items": [s.to_json() for s in plane.schedules.all()]})

    @app.put(SCHEDULES + "/{name}")
    async def set_schedule(name: str, request: Request) -> Response:
        """Retrain `name` every `everySeconds` (the embedded counterpart of a KFP recurring run)."""
        if (refused := _refused(request)) is not None:
            return refused
        try:
            body = await request.json()
        except ValueError as exc:
            return JSONResponse({"error": f"body: not JSON ({exc})"}, status_code=400)
        every = body.get("everySeconds") if isinstance(body, dict) else None
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            return JSONResponse({"error": "everySeconds: required, an integer of at least 1"}, status_code=400)
        namespace = body.get("namespace", "models")
        if not any(key == f"{namespace}/{name}" for key in plane.deployments):
            return JSONResponse({"error": f"name: no InferenceService {namespace}/{name} on this plane"}, 404)
        schedule = plane.schedules.set(name, every, time.time(), namespace)
        return JSONResponse(schedule.to_json())

    @app.delete(SCHEDULES + "/{name}")
    async def delete_schedule(name: str, request: Request) -> Response:
        if (refused := _refused(request)) is not None:
            return refused
        if not plane.schedules.delete(name):
            return JSONResponse({"error": f"name: no schedule for {name!r}"}, status_code=404)
        return JSONResponse({"deleted": name})

    @app.get("/healthz")
    async def healthz() -> dict:
        """200 while the plane answers (`shepherd up` finds a running plane by it); the body says which
        part is down (`status: degraded`)."""
        return plane.health()

    return app


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument(
        "--feature-repo", default=None, help="where the outcome ledger lives (default: <home>/feature_repo)"
    )
    parser.add_argument(
        "--payload-queue-size",
        type=int,
        default=int(os.environ.get(ENV_QUEUE_SIZE) or DEFAULT_QUEUE_SIZE),
        help=f"payload-log events waiting per logger URL; more are dropped and counted [env: {ENV_QUEUE_SIZE}]",
    )
    args = parser.parse_args(argv)
    if args.payload_queue_size < 1:
        parser.error(f"--payload-queue-size must be at least 1, got {args.payload_queue_size}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per proxied request is noise
    plane = Plane(args.home.resolve(), args.tracking_uri, f"http://127.0.0.1:{args.port}", args.feature_repo)
    app = create_app(plane, args.payload_queue_size)
    # uvicorn turns SIGTERM/SIGINT into a graceful exit; the predictors are stopped after it.
    try:
        uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
    finally:
        asyncio.run(plane.shutdown())  # a no-op if the lifespan already stopped them
    return 0


if __name__ == "__main__":
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    raise SystemExit(main())
