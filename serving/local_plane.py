"""The local serving plane: KServe's InferenceService semantics on one machine.

One process holds the applied InferenceService objects (persisted, so the plane survives a restart),
runs one predictor process (`serving.predictor`, a real `kserve.ModelServer`) per revision, and
routes `/v1/models/<name>:predict` and `/v2/models/<name>/infer` to the champion or the canary in the
proportion the object sets (Standard `spec.canary[].trafficPercent` or Knative
`spec.predictor.canaryTrafficPercent`). Status is reported in KServe's shape. When the object names a
payload logger (`spec.predictor.logger.url`), each request and response is posted there as a CloudEvent
in KServe's logger format.

Admin API (what the `local` ServingBackend and `shepherd status` use):
  PUT  /apis/serving.kserve.io/v1beta1/namespaces/<ns>/inferenceservices/<name>   apply an object
  GET  /apis/serving.kserve.io/v1beta1/namespaces/<ns>/inferenceservices/<name>   object + status
  GET  /apis/serving.kserve.io/v1beta1/inferenceservices                          every object
  GET  /healthz

The plane also runs the drift service (`monitoring.drift`) as a child process and serves it under
`/drift/`: `POST /drift/` is the payload-logger URL the deploy step writes into objects it applies
here, `GET /drift/metrics` its Prometheus metrics, `GET /drift/models/<name>[/report]` its results.
`GET /sd/predictors` lists the running revisions for Prometheus' HTTP service discovery.
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
import uuid
from dataclasses import dataclass, field
from pathlib import Path

# Module level: FastAPI resolves the handlers' (string) annotations in this module's globals.
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

logger = logging.getLogger("shepherd.plane")

API = "/apis/serving.kserve.io/v1beta1"
READY_TIMEOUT_SECONDS = 120
REPO_ROOT = Path(__file__).resolve().parent.parent


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


def _model_uri(predictor: dict) -> str:
    for arg in predictor["containers"][0].get("args", []):
        if arg.startswith("--model_uri="):
            return arg.split("=", 1)[1]
    raise ValueError("spec.predictor.containers[0].args: no --model_uri=... argument")


def _version_of(model_uri: str) -> str:
    return model_uri.rsplit("/", 1)[-1].split("@")[-1]


def desired_revisions(obj: dict) -> tuple[tuple[str, str], tuple[str, str] | None, int]:
    """(champion model_uri, version), (canary model_uri, version) or None, canary percent."""
    spec = obj["spec"]
    predictor_uri = _model_uri(spec["predictor"])
    if spec.get("canary"):  # Standard mode: spec.predictor is the champion
        canary = spec["canary"][0]
        canary_uri = _model_uri(canary["predictor"])
        return (
            (predictor_uri, _version_of(predictor_uri)),
            (canary_uri, _version_of(canary_uri)),
            int(canary["trafficPercent"]),
        )
    if "canaryTrafficPercent" in spec["predictor"]:  # Knative: the predictor is the new revision
        annotations = obj["metadata"].get("annotations", {})
        champion_version = annotations.get("shepherd.io/champion-version")
        if champion_version is None:
            raise ValueError("a Knative canary needs the shepherd.io/champion-version annotation")
        name = predictor_uri.removeprefix("models:/").split("/")[0].split("@")[0]
        champion_uri = f"models:/{name}/{champion_version}"
        return (
            (champion_uri, champion_version),
            (predictor_uri, _version_of(predictor_uri)),
            int(spec["predictor"]["canaryTrafficPercent"]),
        )
    return (predictor_uri, _version_of(predictor_uri)), None, 0


def revision_env(obj: dict, role: str) -> dict[str, str]:
    """The SHEPHERD_* environment the object sets on `role`'s predictor container (e.g. fault injection).
    In Knative mode the object only describes the newest revision (the canary)."""
    spec = obj["spec"]
    if role == "canary":
        predictor = spec["canary"][0]["predictor"] if spec.get("canary") else spec["predictor"]
    elif spec.get("canary") or "canaryTrafficPercent" not in spec["predictor"]:
        predictor = spec["predictor"]
    else:
        return {}
    env = predictor["containers"][0].get("env") or []
    return {e["name"]: str(e.get("value", "")) for e in env if e["name"].startswith("SHEPHERD_")}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Plane:
    """Holds deployments, starts and stops predictor processes, persists objects."""

    def __init__(self, home: Path, tracking_uri: str, url: str):
        self.dir = home / "serving"
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "logs").mkdir(exist_ok=True)
        self.state_file = self.dir / "objects.json"
        self.tracking_uri = tracking_uri
        self.url = url
        self.deployments: dict[str, Deployment] = {}
        self.lock = asyncio.Lock()
        self.drift: Revision | None = None  # the drift service child process

    async def start_drift_service(self, client) -> None:
        port = free_port()
        log = open(self.dir / "logs" / "drift.log", "a")  # noqa: SIM115 (owned by the child)
        command = [sys.executable, "-m", "monitoring.drift", "--port", str(port), "--tracking-uri", self.tracking_uri]
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.drift = Revision("drift", "", "", "drift", port, process)
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the drift service exited; see {self.dir / 'logs' / 'drift.log'}")
            with contextlib.suppress(Exception):
                if (await client.get(f"{self.drift.url}/healthz", timeout=1)).status_code == 200:
                    return
            await asyncio.sleep(0.25)
        raise RuntimeError(f"the drift service did not answer within {READY_TIMEOUT_SECONDS} s")

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
        log = open(self.dir / "logs" / f"{revision.name}.log", "a")  # noqa: SIM115 (owned by the child)
        from serving.predictor import predictor_command

        revision.process = subprocess.Popen(
            predictor_command(isvc, model_uri, self.tracking_uri, revision.port, role),
            cwd=REPO_ROOT,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return revision

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
    def _stop(revision: Revision | None) -> None:
        if revision is None or revision.process is None or revision.process.poll() is not None:
            return
        revision.process.terminate()
        try:
            revision.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            revision.process.kill()

    async def apply(self, obj: dict, restoring: bool = False) -> Deployment:
        """Create or update a deployment, reusing revisions that serve the same model URI.

        Like the API server, every write gets a new `metadata.resourceVersion`, and an object that
        carries one is written only over that version (`StaleWrite` otherwise): the rollout loop and
        the webhook decide from what they read, and neither may undo the other's write."""
        import httpx

        meta = obj["metadata"]
        key = f"{meta.get('namespace', 'default')}/{meta['name']}"
        (champion_uri, champion_v), canary, percent = desired_revisions(obj)
        async with self.lock, httpx.AsyncClient() as client:
            current = self.deployments.get(key)
            if not restoring:
                current_version = current.obj["metadata"].get("resourceVersion", "0") if current else "0"
                read_version = meta.get("resourceVersion")
                if read_version and read_version != current_version:
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
            wanted = [(champion_uri, champion_v, "champion")]
            if canary is not None:
                wanted.append((canary[0], canary[1], "canary"))
            revisions = {}
            for uri, version, role in wanted:
                env = revision_env(obj, role)
                rev = running.pop(uri, None)
                if rev is not None and (rev.env != env or rev.role != role):
                    # Other settings, or a promoted canary whose metrics must now say `champion`:
                    running[uri] = rev  # a new revision replaces it once ready
                    rev = None
                if rev is None or rev.process is None or rev.process.poll() is not None:
                    rev = self._start(meta["name"], uri, version, role, env)
                    await self._wait_ready(rev, client)
                revisions[role] = rev
            for leftover in running.values():
                self._stop(leftover)
            deployment = Deployment(
                obj, revisions["champion"], revisions.get("canary"), percent, current.events if current else []
            )
            deployment.events.append(
                {
                    "time": time.time(),
                    "champion": champion_v,
                    "canary": canary[1] if canary else None,
                    "canaryPercent": percent,
                }
            )
            self.deployments[key] = deployment
            self._save()
        return deployment

    def shutdown(self) -> None:
        self._stop(self.drift)
        for deployment in self.deployments.values():
            self._stop(deployment.champion)
            self._stop(deployment.canary)

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
        ready = all(r.process is not None and r.process.poll() is None for r in (champion, canary) if r)
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


def create_app(plane: Plane):
    """The FastAPI app: router for predictions, admin API for objects."""
    import httpx

    client = httpx.AsyncClient(timeout=30)
    payload_tasks: set[asyncio.Task] = set()

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        await plane.start_drift_service(client)
        await plane.restore()  # objects applied before a restart are served again
        yield
        # Here, not after uvicorn.run(): uvicorn re-raises SIGTERM once it has shut down.
        plane.shutdown()
        await client.aclose()

    app = FastAPI(title="Shepherd local serving plane", lifespan=lifespan)

    def _find(name: str) -> Deployment | None:
        return next((d for d in plane.deployments.values() if d.obj["metadata"]["name"] == name), None)

    async def _route(name: str, path: str, request: Request) -> Response:
        deployment = _find(name)
        if deployment is None:
            return JSONResponse({"error": f"model {name!r} is not deployed on this plane"}, status_code=404)
        use_canary = deployment.canary is not None and random.random() * 100 < deployment.canary_percent
        revision = deployment.canary if use_canary else deployment.champion
        body = await request.body()
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "x-request-id")}
        try:
            upstream = await client.post(f"{revision.url}{path}", content=body, headers=headers)
        except httpx.TransportError as exc:
            # The revision went away under this request (replaced by a newer one): ask its successor once.
            current = _find(name)
            successor = None if current is None else (current.canary if use_canary else current.champion)
            if successor is None or successor.url == revision.url:
                return JSONResponse(
                    {"error": f"revision {revision.name} is unavailable ({type(exc).__name__}); try again"},
                    status_code=503,
                )
            revision = successor
            upstream = await client.post(f"{revision.url}{path}", content=body, headers=headers)
        logger_spec = deployment.obj["spec"]["predictor"].get("logger")
        if logger_spec and logger_spec.get("url"):
            # Fire and forget, but keep a reference: the event loop holds tasks only weakly.
            task = asyncio.create_task(_log_payload(client, logger_spec, deployment, revision, body, upstream))
            payload_tasks.add(task)
            task.add_done_callback(payload_tasks.discard)
        return Response(
            upstream.content,
            status_code=upstream.status_code,
            media_type=upstream.headers.get("content-type"),
            headers={"x-shepherd-revision": revision.name, "x-shepherd-role": revision.role},
        )

    @app.post("/v1/models/{name}:predict")
    async def predict_v1(name: str, request: Request) -> Response:
        return await _route(name, f"/v1/models/{name}:predict", request)

    @app.post("/v2/models/{name}/infer")
    async def infer_v2(name: str, request: Request) -> Response:
        return await _route(name, f"/v2/models/{name}/infer", request)

    @app.api_route("/drift/{path:path}", methods=["GET", "POST"])
    async def drift(path: str, request: Request) -> Response:
        headers = {
            k: v for k, v in request.headers.items() if k.lower().startswith("ce-") or k.lower() == "content-type"
        }
        upstream = await client.request(
            request.method,
            f"{plane.drift.url}/{path}",
            content=await request.body(),
            headers=headers,
            params=request.query_params,
            timeout=120,
        )
        return Response(upstream.content, upstream.status_code, media_type=upstream.headers.get("content-type"))

    @app.put(API + "/namespaces/{namespace}/inferenceservices/{name}")
    async def apply(namespace: str, name: str, request: Request) -> Response:
        try:
            obj = await request.json()
            if obj.get("kind") != "InferenceService":
                raise ValueError(f"kind: expected InferenceService, got {obj.get('kind')!r}")
            if obj.get("metadata", {}).get("name") != name:
                raise ValueError(f"metadata.name: must equal the name in the path ({name!r})")
            obj["metadata"]["namespace"] = namespace
            desired_revisions(obj)
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            return JSONResponse({"error": f"invalid InferenceService: {exc}"}, status_code=400)
        try:
            deployment = await plane.apply(obj)
        except StaleWrite as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)
        except RuntimeError as exc:
            return JSONResponse({"error": str(exc)}, status_code=502)
        return JSONResponse(plane.with_status(deployment))

    @app.post(API + "/namespaces/{namespace}/inferenceservices/{name}/events")
    async def record_event(namespace: str, name: str, request: Request) -> Response:
        try:
            event = await request.json()
            missing = [f for f in ("reason", "message", "type") if not isinstance(event.get(f), str)]
            if missing:
                raise ValueError(f"{', '.join(missing)}: required strings")
        except ValueError as exc:
            return JSONResponse({"error": f"invalid event: {exc}"}, status_code=400)
        entry = {
            "time": time.time(),
            "namespace": namespace,
            "name": name,
            **{k: event[k] for k in ("reason", "message", "type")},
        }
        with open(plane.dir / "events.jsonl", "a") as handle:
            handle.write(json.dumps(entry) + "\n")
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

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok", "deployments": len(plane.deployments), "drift": f"{plane.url}/drift/"}

    return app


async def _log_payload(
    client, logger_spec: dict, deployment: Deployment, revision: Revision, request_body: bytes, upstream
) -> None:
    """Post the request and/or response as CloudEvents, as KServe's payload logger does."""
    mode = logger_spec.get("mode", "all")
    meta = deployment.obj["metadata"]
    event_id = str(uuid.uuid4())
    base = {
        "ce-specversion": "1.0",
        "ce-id": event_id,
        "ce-source": f"http://localhost/{revision.name}",
        "ce-inferenceservicename": meta["name"],
        "ce-namespace": meta.get("namespace", "default"),
        "ce-component": "predictor",
        "ce-endpoint": "canary" if revision.role == "canary" else "default",
        "ce-modelid": revision.version,
        "content-type": "application/json",
    }
    events = []
    if mode in ("all", "request"):
        events.append(({**base, "ce-type": "org.kubeflow.serving.inference.request"}, request_body))
    if mode in ("all", "response") and upstream.status_code == 200:
        events.append(({**base, "ce-type": "org.kubeflow.serving.inference.response"}, upstream.content))
    for headers, body in events:
        try:
            await client.post(logger_spec["url"], content=body, headers=headers, timeout=5)
        except Exception as exc:  # the logger is best effort: it must never fail a prediction
            logger.warning("payload logger %s: %r", logger_spec["url"], exc)


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per proxied request is noise
    plane = Plane(args.home.resolve(), args.tracking_uri, f"http://127.0.0.1:{args.port}")
    app = create_app(plane)
    # uvicorn turns SIGTERM/SIGINT into a graceful exit; the predictors are stopped after it.
    try:
        uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
    finally:
        plane.shutdown()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    raise SystemExit(main())
