"""The alert webhook: Alertmanager calls it, Shepherd acts.

Alerts carry `shepherd_action` (see `monitoring/rules.py`):
- `rollback` (canary error rate, latency, drift): the canary goes to 0 % at once, the aliases stay
  with the champion, the version is tagged with the alert as the reason;
- `retrain` (drift on the champion): a training run of the model's stored spec starts — a local run,
  or a KFP run on a cluster — at most one per model per `cooldown` (an alert storm starts one run);
- anything else is acknowledged and logged.

Every request needs `Authorization: Bearer <token>`; without a configured token the webhook does not
start. A malformed body is a 400 naming the field, a body over `MAX_BODY_BYTES` a 413, and an alert for
a model Shepherd does not know is acknowledged as ignored (200): nothing here answers a sender's mistake
with a 5xx, so Alertmanager never retries one forever. A 503 means our side failed (the registry, the
serving backend or KFP) and a redelivery may succeed.

  POST /alerts     Alertmanager webhook payload (version 4)
  GET  /healthz
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# Module level: FastAPI resolves the handlers' (string) annotations in this module's globals.
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from components.errors import RegistryError, ShepherdError
from components.run_arguments import IMAGE_FEATURE_REPO, PipelineArguments
from monitoring.metrics import ALERT_ACTION_LABEL

logger = logging.getLogger("shepherd.webhook")

ENV_TOKEN = "SHEPHERD_WEBHOOK_TOKEN"
ENV_NAMESPACE = "SHEPHERD_NAMESPACE"
ENV_KFP_HOST = "SHEPHERD_KFP_HOST"
ENV_FEATURE_REPO = "SHEPHERD_FEATURE_REPO"
ENV_DRIFT_URL = "SHEPHERD_DRIFT_URL"
# Alertmanager's payload for one group: a few KB per alert, so this holds hundreds of alerts.
MAX_BODY_BYTES = 4 * 1024 * 1024
REPO_ROOT = Path(__file__).resolve().parent.parent


class BadPayload(ValueError):
    """The body is not an Alertmanager webhook payload; the message names the field."""


class BodyTooLarge(BadPayload):
    """The body is over MAX_BODY_BYTES: answered with a 413 before it is read in full."""


class UnknownModel(RegistryError, LookupError):
    """The alert (or `shepherd retrain`, a schedule) names a model with no @champion in the registry:
    nothing to retrain from."""

    hint = "train one first: shepherd run --spec <its spec>"


async def read_capped(request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, refused (BodyTooLarge) as soon as it is known to exceed `limit` bytes,
    whether the sender declared its length or streams it in chunks."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"body: {int(declared)} bytes, at most {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"body: more than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass(frozen=True)
class Alert:
    name: str
    status: str  # firing | resolved
    action: str
    model: str | None
    namespace: str | None
    summary: str


def parse_alerts(body: object) -> list[Alert]:
    """The alerts of an Alertmanager webhook payload (version 4)."""
    if not isinstance(body, dict):
        raise BadPayload("body: expected a JSON object (Alertmanager webhook payload)")
    alerts = body.get("alerts")
    if not isinstance(alerts, list):
        raise BadPayload("alerts: required, a list")
    out = []
    for i, alert in enumerate(alerts):
        if not isinstance(alert, dict) or not isinstance(alert.get("labels"), dict):
            raise BadPayload(f"alerts[{i}].labels: required, an object")
        labels, annotations = alert["labels"], alert.get("annotations") or {}
        if "alertname" not in labels:
            raise BadPayload(f"alerts[{i}].labels.alertname: required")
        status = alert.get("status", body.get("status"))
        if status not in ("firing", "resolved"):
            raise BadPayload(f"alerts[{i}].status: {status!r}; expected firing or resolved")
        out.append(
            Alert(
                name=labels["alertname"],
                status=status,
                action=labels.get(ALERT_ACTION_LABEL, "none"),
                model=labels.get("model"),
                namespace=labels.get("namespace"),
                summary=annotations.get("summary", ""),
            )
        )
    return out


class LocalRetrainer:
    """A training run on this machine: `shepherd run` of the champion's stored spec, in the background.

    One at a time per model (one storm, one run): while a run it started is alive (its pid in
    `<home>/retrain/<model>.pid`), asking again starts nothing and says which run is going."""

    def __init__(self, home: Path, tracking_uri: str):
        self.home = home  # the run deploys to the plane serving this home, if one is up
        self.tracking_uri = tracking_uri

    def command(self, model: str) -> list[str]:
        """`shepherd run` of the champion's stored spec, on this home and registry."""
        spec_path = _champion_spec(self.tracking_uri, model, self.home / "retrain")
        command = [sys.executable, "-m", "pipelines.cli", "run", "--spec", str(spec_path), "--home", str(self.home)]
        return [*command, "--tracking-uri", self.tracking_uri]

    def _pid_file(self, model: str) -> Path:
        return self.home / "retrain" / f"{model}.pid"

    @contextlib.contextmanager
    def _starting(self, model: str):
        """Held from "is one running?" until the new run's pid is written: two triggers at once (a
        schedule's ticks, an alert and a schedule) are separate processes, and without it both would find
        nothing running and start a run each."""
        import fcntl

        lock_path = self.home / "retrain" / f"{model}.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def running(self, model: str) -> int | None:
        """The pid of this model's retraining run if one is still going."""
        try:
            pid = int(self._pid_file(model).read_text().split()[0])
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            return None
        return pid if state not in ("Z", "X") and b"pipelines.cli" in cmdline else None

    def foreground(self, model: str) -> int:
        """Run it here, its progress on this terminal; returns its exit code (1 if one is already going)."""
        with self._starting(model):
            if (pid := self.running(model)) is not None:
                logger.warning("a retraining run of %s is already going (pid %d): one at a time", model, pid)
                return 1
            command = self.command(model)
            env = {**os.environ, "MLFLOW_TRACKING_URI": self.tracking_uri}
            process = subprocess.Popen(command, cwd=REPO_ROOT, env=env)
            self._pid_file(model).write_text(str(process.pid))
        return process.wait()

    def __call__(self, model: str, reason: str) -> str:
        with self._starting(model):
            if (pid := self.running(model)) is not None:
                return f"already running: pid {pid} (one retraining run per model at a time)"
            command = self.command(model)
            log = self.home / "retrain" / f"{model}-{int(time.time())}.log"
            with open(log, "w") as handle:
                handle.write(f"# retraining {model}: {reason}\n")
            process = subprocess.Popen(
                command,
                cwd=REPO_ROOT,
                stdout=open(log, "a"),  # noqa: SIM115 (owned by the child)
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "MLFLOW_TRACKING_URI": self.tracking_uri},
            )
            self._pid_file(model).write_text(str(process.pid))
        return f"local run pid {process.pid}, log {log}"


class KfpRetrainer:
    """A run of the compiled training pipeline on a KFP server, with the champion's stored spec."""

    def __init__(
        self,
        host: str,
        tracking_uri: str,
        pipeline_package: Path,
        drift_url: str = "",
        feature_repo: str = IMAGE_FEATURE_REPO,
    ):
        self.host = host
        self.tracking_uri = tracking_uri
        self.package = pipeline_package
        self.drift_url = drift_url
        self.feature_repo = feature_repo

    def __call__(self, model: str, reason: str) -> str:
        import kfp

        with tempfile.TemporaryDirectory() as tmp:
            spec_yaml = _champion_spec(self.tracking_uri, model, Path(tmp)).read_text()
        arguments = PipelineArguments(
            spec_yaml=spec_yaml,
            tracking_uri=self.tracking_uri,
            feature_repo=self.feature_repo,
            serving_target="kubernetes",
            drift_url=self.drift_url,
        ).for_package(self.package)
        run = kfp.Client(host=self.host).create_run_from_pipeline_package(
            str(self.package),
            arguments=arguments,
            run_name=f"{model}-retrain-{int(time.time())}",
            service_account="shepherd-pipeline-runner",  # manifests/base/pipeline-runner
        )
        return f"KFP run {run.run_id}"


def record_retraining(backend, namespace: str, model: str, message: str) -> None:
    """An event on the model's InferenceService, so `shepherd history` shows why a run started."""
    if not hasattr(backend, "record_event"):
        return
    try:
        obj = backend.get(namespace, model)
        if obj is None:
            return
        from serving.inference_service_view import InferenceServiceView

        champion = InferenceServiceView(obj).champion.version  # not the object's newest version: a canary's
        backend.record_event(obj, reason="RetrainStarted", message=f"v{champion}: {message}", warning=True)
    except Exception as exc:  # the run has started; a lost event must not turn that into a failure
        logger.warning("could not record the retraining event for %s: %s", model, exc)


def _champion_spec(tracking_uri: str, model: str, directory: Path) -> Path:
    from components import registry

    directory.mkdir(parents=True, exist_ok=True)
    client = registry.connect(tracking_uri)
    champion = registry.champion_version(client, model)
    if champion is None:
        raise UnknownModel(f"model {model!r} has no @champion to retrain from")
    return Path(client.download_artifacts(champion.run_id, registry.SPEC_ARTIFACT, str(directory)))


@dataclass
class AlertActions:
    """What each alert makes Shepherd do, with de-duplication."""

    backend: object
    tracking_uri: str
    namespace: str
    retrain: Callable[[str, str], str]
    cooldown_seconds: float = 3600
    _retrained: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, alerts: list[Alert]) -> list[dict]:
        return [{"alert": a.name, "model": a.model, **self._one(a)} for a in alerts]

    def _one(self, alert: Alert) -> dict:
        from serving.rollout.loop import operate
        from serving.rollout.machine import Action

        if alert.status != "firing":
            return {"outcome": "ignored", "detail": "resolved"}
        if alert.action not in ("rollback", "retrain"):
            return {"outcome": "ignored", "detail": f"{ALERT_ACTION_LABEL}={alert.action!r} asks for no action"}
        if not alert.model:
            return {"outcome": "ignored", "detail": "the alert has no `model` label"}
        reason = f"alert {alert.name}" + (f": {alert.summary}" if alert.summary else "")
        if alert.action == "rollback":
            try:
                decision = operate(
                    self.backend, self.tracking_uri, alert.namespace or self.namespace, alert.model, "rollback", reason
                )
            except LookupError as exc:
                return {"outcome": "ignored", "detail": str(exc)}
            except ShepherdError as exc:  # the backend or registry failed: Alertmanager retries on a 5xx
                logger.error("rolling back %s failed: %s", alert.model, exc)
                return {"outcome": "failed", "detail": str(exc)}
            if decision.action is Action.ROLLBACK:
                logger.warning("rolled back %s v%s: %s", alert.model, decision.state.canary_version, reason)
                return {"outcome": "rolled-back", "version": decision.state.canary_version}
            return {"outcome": "ignored", "detail": decision.reason}
        with self._lock:
            last = self._retrained.get(alert.model)
            if last is not None and time.time() - last < self.cooldown_seconds:
                return {"outcome": "deduplicated", "detail": f"a retraining run started {time.time() - last:.0f} s ago"}
            self._retrained[alert.model] = time.time()
        try:
            started = self.retrain(alert.model, reason)
        except UnknownModel as exc:  # the sender's mistake: a redelivery cannot succeed
            with self._lock:
                self._retrained.pop(alert.model, None)
            logger.warning("retraining alert %s ignored: %s", alert.name, exc)
            return {"outcome": "ignored", "detail": str(exc)}
        except Exception as exc:
            with self._lock:
                self._retrained.pop(alert.model, None)  # let the next notification try again
            logger.error("retraining %s failed to start: %s", alert.model, exc)
            return {"outcome": "failed", "detail": str(exc)}
        logger.warning("retraining %s (%s): %s", alert.model, reason, started)
        record_retraining(self.backend, alert.namespace or self.namespace, alert.model, f"{reason}; {started}")
        return {"outcome": "retraining", "detail": started}


def webhook_command(port: int, token_file: Path, tracking_uri: str, backend: str, home: Path) -> list[str]:
    """The command line that runs the webhook against a backend (the tests, the benchmark)."""
    return [
        sys.executable,
        "-m",
        "monitoring.webhook",
        f"--port={port}",
        f"--token-file={token_file}",
        f"--tracking-uri={tracking_uri}",
        f"--backend={backend}",
        f"--home={home}",
    ]


def create_app(actions: AlertActions, token: str) -> FastAPI:
    if not token:
        raise ValueError("the webhook needs a bearer token; refusing to accept unauthenticated alerts")
    expected = f"Bearer {token}".encode()
    app = FastAPI(title="Shepherd alert webhook")

    @app.post("/alerts")
    async def alerts(request: Request) -> Response:
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            return JSONResponse(
                {"error": "authorization: a valid bearer token is required"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        try:
            parsed = parse_alerts(json.loads(await read_capped(request)))
        except BodyTooLarge as exc:
            return JSONResponse({"error": str(exc)}, status_code=413)
        except ValueError as exc:  # BadPayload, or a body that is not JSON (or not UTF-8)
            return JSONResponse({"error": str(exc) if isinstance(exc, BadPayload) else "body: not JSON"}, 400)
        results = await asyncio.to_thread(actions.handle, parsed)
        # A failed action is ours, not the sender's: 503 makes Alertmanager deliver the group again.
        failed = any(r["outcome"] == "failed" for r in results)
        return JSONResponse({"results": results}, status_code=503 if failed else 200)

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    return app


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    from serving.backends import backend_for

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 in a container")
    parser.add_argument("--token-file", type=Path, help=f"file holding the bearer token [or env: {ENV_TOKEN}]")
    parser.add_argument(
        "--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"), help="[env: MLFLOW_TRACKING_URI]"
    )
    parser.add_argument("--backend", default="kubernetes", help="'kubernetes' or the local serving plane's URL")
    parser.add_argument("--namespace", default=os.environ.get(ENV_NAMESPACE, "models"), help="for alerts without one")
    parser.add_argument(
        "--kfp-host", default=os.environ.get(ENV_KFP_HOST), help="retrain on KFP [env: SHEPHERD_KFP_HOST]"
    )
    parser.add_argument(
        "--drift-url", default=os.environ.get(ENV_DRIFT_URL, ""), help="for retraining runs [env: SHEPHERD_DRIFT_URL]"
    )
    parser.add_argument(
        "--feature-repo",
        default=os.environ.get(ENV_FEATURE_REPO) or IMAGE_FEATURE_REPO,
        help="for retraining runs on KFP: the Feast store (a postgresql:// URI every step pod shares; default: "
        f"the repo directory in the image) [env: {ENV_FEATURE_REPO}]",
    )
    parser.add_argument("--home", type=Path, default=Path(".shepherd"), help="local retraining runs' home")
    parser.add_argument("--cooldown-seconds", type=float, default=3600, help="at most one retraining per model per ...")
    args = parser.parse_args(argv)
    token = args.token_file.read_text().strip() if args.token_file else os.environ.get(ENV_TOKEN, "")
    if not token:
        parser.error(f"a bearer token is required: --token-file or {ENV_TOKEN}")
    if not args.tracking_uri:
        parser.error("--tracking-uri or MLFLOW_TRACKING_URI is required")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.kfp_host:
        package = REPO_ROOT / "pipelines" / "training_pipeline.yaml"
        retrain = KfpRetrainer(args.kfp_host, args.tracking_uri, package, args.drift_url, args.feature_repo)
    else:
        retrain = LocalRetrainer(args.home.resolve(), args.tracking_uri)
    actions = AlertActions(backend_for(args.backend), args.tracking_uri, args.namespace, retrain, args.cooldown_seconds)
    uvicorn.run(create_app(actions, token), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    raise SystemExit(main())
