"""Where InferenceServices go: one interface, a backend per way to run.

`LocalBackend` talks to the local serving plane (`shepherd up`), which honours the very same objects
a cluster would. `KubernetesBackend` creates and replaces InferenceServices through the API server
(in-cluster config or a kubeconfig), retrying optimistic-concurrency conflicts, and reads the status
KServe's controller writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from components.errors import ShepherdError

API = "/apis/serving.kserve.io/v1beta1"


class ServingError(ShepherdError):
    """The serving backend refused or failed an operation."""

    http_status = 502
    exit_code = 9


class ConflictError(ServingError):
    """The object changed since it was read (optimistic concurrency): read it again and re-decide."""

    http_status = 409


def retry_on_conflict(read_modify_write, attempts: int = 4):
    """Run `read_modify_write()` again while a concurrent write makes it fail with ConflictError: each
    attempt reads afresh, so the change is applied over the newest object, never over a stale one.
    The last attempt's ConflictError reaches the caller."""
    for _ in range(attempts - 1):
        try:
            return read_modify_write()
        except ConflictError:
            continue
    return read_modify_write()


class ServingBackend(Protocol):
    def apply(self, obj: dict) -> dict:
        """Create or update an InferenceService; returns it with its status."""

    def get(self, namespace: str, name: str) -> dict | None:
        """The InferenceService with its status, or None."""

    def list(self, namespace: str | None = None) -> list[dict]:
        """Every InferenceService (in `namespace`, if given) with its status."""

    def record_event(self, obj: dict, reason: str, message: str, warning: bool = False) -> None:
        """Record what happened to the object (rollout transitions): Kubernetes Events on a cluster."""

    def events(self, namespace: str, name: str) -> list[dict]:
        """The recorded events of one object, oldest first: {time, reason, message, type}."""


class LocalBackend:
    """The local serving plane's admin API."""

    def __init__(self, url: str, timeout: float = 180, token: str | None = None):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.token = token  # None: SHEPHERD_PLANE_TOKEN, or the one the plane keeps for its user
        self.drift_metrics_url = f"{self.url}/drift/metrics"  # the plane's drift service
        self.router_metrics_url = f"{self.url}/router/metrics"  # what the plane answered for each revision

    def _call(self, method: str, path: str, body: dict | None = None):
        import httpx

        from serving.plane_auth import ENV_PLANE_TOKEN, token_for

        token = self.token or token_for(self.url)  # read each time: a plane started later issues it then
        headers = {"authorization": f"Bearer {token}"} if token else {}
        try:
            response = httpx.request(method, f"{self.url}{path}", json=body, headers=headers, timeout=self.timeout)
        except httpx.TransportError as exc:
            raise ServingError(
                f"the local serving plane at {self.url} is not answering ({exc})", hint="start it with `shepherd up`"
            ) from exc
        if response.status_code == 401:
            raise ServingError(
                f"the local serving plane at {self.url} refused the change: {response.json().get('error')}",
                hint=f"run as the user who started it, or set {ENV_PLANE_TOKEN} to its token",
            )
        return response

    def apply(self, obj: dict) -> dict:
        """Create, or replace, the object. One carrying `metadata.resourceVersion` (a decision made from
        what was read) is written only over that version (`ConflictError` otherwise); one without is
        written over the version read just before (as `KubernetesBackend` and `kubectl apply` do),
        again if a concurrent write came in between."""
        if obj["metadata"].get("resourceVersion"):
            return self._put(obj)

        def over_current() -> dict:
            current = self.get(obj["metadata"]["namespace"], obj["metadata"]["name"])
            version = current["metadata"].get("resourceVersion") if current else None
            return self._put({**obj, "metadata": {**obj["metadata"], "resourceVersion": version}})

        return retry_on_conflict(over_current)

    def _put(self, obj: dict) -> dict:
        meta = obj["metadata"]
        if not meta.get("resourceVersion"):
            meta = {k: v for k, v in meta.items() if k != "resourceVersion"}
            obj = {**obj, "metadata": meta}
        response = self._call("PUT", f"{API}/namespaces/{meta['namespace']}/inferenceservices/{meta['name']}", obj)
        if response.status_code == 409:
            raise ConflictError(response.json().get("error", response.text))
        if response.status_code != 200:
            raise ServingError(f"applying {meta['name']}: {response.json().get('error', response.text)}")
        return response.json()

    def schedules(self) -> list[dict]:
        """The plane's retraining schedules (serving/schedules.py)."""
        from serving.schedules import SCHEDULES

        return self._call("GET", SCHEDULES).json()["items"]

    def set_schedule(self, model: str, every_seconds: int, namespace: str = "models") -> dict:
        from serving.schedules import SCHEDULES

        response = self._call("PUT", f"{SCHEDULES}/{model}", {"everySeconds": every_seconds, "namespace": namespace})
        if response.status_code != 200:
            raise ServingError(f"scheduling {model}: {response.json().get('error', response.text)}")
        return response.json()

    def delete_schedule(self, model: str) -> None:
        from serving.schedules import SCHEDULES

        response = self._call("DELETE", f"{SCHEDULES}/{model}")
        if response.status_code != 200:
            raise ServingError(f"unscheduling {model}: {response.json().get('error', response.text)}")

    def get(self, namespace: str, name: str) -> dict | None:
        response = self._call("GET", f"{API}/namespaces/{namespace}/inferenceservices/{name}")
        return response.json() if response.status_code == 200 else None

    def list(self, namespace: str | None = None) -> list[dict]:
        items = self._call("GET", f"{API}/inferenceservices").json()["items"]
        return [o for o in items if namespace is None or o["metadata"].get("namespace") == namespace]

    def record_event(self, obj: dict, reason: str, message: str, warning: bool = False) -> None:
        meta = obj["metadata"]
        event = {"reason": reason, "message": message, "type": "Warning" if warning else "Normal"}
        self._call("POST", f"{API}/namespaces/{meta['namespace']}/inferenceservices/{meta['name']}/events", event)

    def events(self, namespace: str, name: str) -> list[dict]:
        response = self._call("GET", f"{API}/namespaces/{namespace}/inferenceservices/{name}/events")
        return response.json()["items"] if response.status_code == 200 else []


class KubernetesBackend:
    """InferenceServices on a cluster through the `kubernetes` client."""

    GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"

    def __init__(self, api_client=None, conflict_retries: int = 5):
        from kubernetes import client, config

        if api_client is None:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                # Read KUBECONFIG now: the client library reads it once, at import time.
                config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
            api_client = client.ApiClient()
        self.api = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.conflict_retries = conflict_retries
        self.conflicts_retried = 0

    def _error(self, action: str, name: str, exc) -> ServingError:
        try:
            message = json.loads(exc.body).get("message", exc.reason)
        except (TypeError, ValueError):
            message = exc.reason
        return ServingError(f"{action} inferenceservice {name}: HTTP {exc.status}: {message}")

    def get(self, namespace: str, name: str) -> dict | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.api.get_namespaced_custom_object(self.GROUP, self.VERSION, namespace, self.PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise self._error("reading", name, exc) from exc

    def list(self, namespace: str | None = None) -> list[dict]:
        """In `namespace` (what a namespaced Role allows), or across the cluster."""
        if namespace:
            return self.api.list_namespaced_custom_object(self.GROUP, self.VERSION, namespace, self.PLURAL)["items"]
        return self.api.list_cluster_custom_object(self.GROUP, self.VERSION, self.PLURAL)["items"]

    def apply(self, obj: dict) -> dict:
        """Create, or replace the spec of, the object; a write that lost a race is re-read and retried.

        An object carrying `metadata.resourceVersion` (the rollout loop's writes: decisions made from
        what it read) is written only over that version; a conflict raises `ConflictError` instead."""
        from kubernetes.client.exceptions import ApiException

        namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        if obj["metadata"].get("resourceVersion"):
            try:
                return self.api.replace_namespaced_custom_object(
                    self.GROUP, self.VERSION, namespace, self.PLURAL, name, obj
                )
            except ApiException as exc:
                if exc.status == 409:
                    self.conflicts_retried += 1
                    raise ConflictError(f"inferenceservice {namespace}/{name} changed since it was read") from exc
                raise self._error("applying", name, exc) from exc
        for _ in range(self.conflict_retries + 1):
            current = self.get(namespace, name)
            try:
                if current is None:
                    return self.api.create_namespaced_custom_object(
                        self.GROUP, self.VERSION, namespace, self.PLURAL, obj
                    )
                body = {
                    **obj,
                    "metadata": {**obj["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]},
                }
                return self.api.replace_namespaced_custom_object(
                    self.GROUP, self.VERSION, namespace, self.PLURAL, name, body
                )
            except ApiException as exc:
                if exc.status != 409:  # 409: someone else wrote first (or created it meanwhile)
                    raise self._error("applying", name, exc) from exc
                self.conflicts_retried += 1
        raise ServingError(f"applying inferenceservice {name}: still conflicting after {self.conflict_retries} retries")

    def record_event(self, obj: dict, reason: str, message: str, warning: bool = False) -> None:
        from datetime import UTC, datetime

        from kubernetes import client

        meta = obj["metadata"]
        now = datetime.now(UTC)
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{meta['name']}.", namespace=meta["namespace"]),
            involved_object=client.V1ObjectReference(
                api_version=f"{self.GROUP}/{self.VERSION}",
                kind="InferenceService",
                name=meta["name"],
                namespace=meta["namespace"],
                uid=meta.get("uid"),
            ),
            reason=reason,
            message=message[:1024],
            type="Warning" if warning else "Normal",
            source=client.V1EventSource(component="shepherd-rollout"),
            first_timestamp=now,
            last_timestamp=now,
            count=1,
        )
        self.core.create_namespaced_event(meta["namespace"], event)

    def events(self, namespace: str, name: str) -> list[dict]:
        items = self.core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={name},involvedObject.kind=InferenceService"
        ).items
        # Timestamps have one-second resolution; the resourceVersion orders events within a second.
        items = sorted(
            items,
            key=lambda e: (
                (e.last_timestamp or e.metadata.creation_timestamp).timestamp(),
                int(e.metadata.resource_version),
            ),
        )
        return [
            {
                "time": (e.last_timestamp or e.metadata.creation_timestamp).timestamp(),
                "reason": e.reason,
                "message": e.message,
                "type": e.type,
            }
            for e in items
        ]


def backend_for(target: str) -> ServingBackend:
    """The backend a deploy target names: `kubernetes` (in-cluster config, else the kubeconfig) or
    the URL of a local serving plane (`http://127.0.0.1:8080`)."""
    if target == "kubernetes":
        return KubernetesBackend()
    if target.startswith(("http://", "https://")):
        return LocalBackend(target)
    raise ServingError(
        f"serving target {target!r}: expected 'kubernetes' or the URL of a local serving plane",
        hint="leave it empty to only render the InferenceService",
    )


@dataclass
class PlaneProcess:
    """A running local plane, as recorded in `<home>/serving/plane.json`."""

    pid: int
    url: str

    @staticmethod
    def record(home: Path) -> Path:
        return home / "serving" / "plane.json"

    @classmethod
    def find(cls, home: Path) -> PlaneProcess | None:
        """The plane serving this home, if it is up and answering."""
        import httpx

        path = cls.record(home)
        if not path.exists():
            return None
        plane = cls(**json.loads(path.read_text()))
        try:
            os.kill(plane.pid, 0)
            httpx.get(f"{plane.url}/healthz", timeout=2).raise_for_status()
        except (OSError, httpx.HTTPError):
            return None
        return plane


def start_plane(
    home: Path, tracking_uri: str, port: int, wait_seconds: float = 300, feature_repo: str | None = None
) -> PlaneProcess:
    """Start the plane in the background (it outlives this command) and wait until it answers.
    `feature_repo` is where its outcome ledger lives (default: the home's feature repo)."""
    import httpx

    running = PlaneProcess.find(home)
    if running is not None:
        return running
    # A record left behind: the last plane of this home did not stop through `shepherd down` (crash, kill).
    record = PlaneProcess.record(home)
    crashed_pid = json.loads(record.read_text())["pid"] if record.exists() else None
    (home / "serving").mkdir(parents=True, exist_ok=True)
    log = open(home / "serving" / "plane.log", "a")  # noqa: SIM115 (owned by the child)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "serving.local_plane",
            "--home",
            str(home),
            "--tracking-uri",
            tracking_uri,
            "--port",
            str(port),
            *(["--feature-repo", feature_repo] if feature_repo else []),
        ],
        cwd=Path(__file__).resolve().parent.parent,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    plane = PlaneProcess(process.pid, f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = (home / "serving" / "plane.log").read_text().strip().splitlines()[-3:]
            raise ServingError(
                f"the local serving plane exited: {' | '.join(tail)}",
                hint=f"is port {port} free? try `shepherd up --port {port + 1}`",
            )
        try:
            if httpx.get(f"{plane.url}/healthz", timeout=1).status_code == 200:
                PlaneProcess.record(home).write_text(json.dumps({"pid": plane.pid, "url": plane.url}))
                if crashed_pid is not None:
                    _record_recovery(plane, crashed_pid)
                return plane
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    process.terminate()
    raise ServingError(f"the local serving plane did not answer within {wait_seconds:.0f} s")


def _record_recovery(plane: PlaneProcess, crashed_pid: int) -> None:
    """A Warning event on every object the restarted plane restored, so `shepherd history` shows the
    outage next to the rollout it interrupted."""
    backend = LocalBackend(plane.url)
    try:
        for obj in backend.list():
            annotations = obj["metadata"].get("annotations", {})
            serving = f"v{annotations.get('shepherd.io/model-version', '?')}"
            message = (
                f"the local plane (pid {crashed_pid}) stopped without `shepherd down`; restarted, {serving} "
                "restored with its traffic split and rollout state"
            )
            backend.record_event(obj, reason="PlaneRecovered", message=message, warning=True)
    except ServingError as exc:  # the plane is up; a lost event must not fail `shepherd up`
        print(f"warning: could not record the plane's recovery: {exc}", file=sys.stderr)


def stop_plane(home: Path) -> bool:
    """Stop the plane (and its predictors); False if none was running."""
    plane = PlaneProcess.find(home)
    PlaneProcess.record(home).unlink(missing_ok=True)
    if plane is None:
        return False
    os.kill(plane.pid, 15)
    for _ in range(100):
        with contextlib.suppress(ChildProcessError):  # reap it if this process started it (no zombie)
            os.waitpid(plane.pid, os.WNOHANG)
        try:
            os.kill(plane.pid, 0)
        except OSError:
            return True
        time.sleep(0.2)
    os.kill(plane.pid, 9)
    return True
