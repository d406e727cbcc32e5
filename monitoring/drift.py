"""The drift service: KServe payload-log CloudEvents in, Evidently drift per revision out.

Each predictor revision's logged requests (the features) and responses (the predicted probability)
are paired by event id and kept in a bounded window per (model, role). Every `compute_interval`
seconds the windows that changed are compared with Evidently's DataDriftPreset, using PSI for every
column so that one score means one thing (0 = same distribution; 0.1 moderate; 0.25 large):
- each revision's inputs against the training reference stored with its model version
  (`reference="training"`; a sample of the content-addressed training snapshot), and
- the canary's inputs and predictions against the champion's live window (`reference="champion"`).

Results are Prometheus gauges (names in `monitoring/metrics.py`), JSON at `/models/<model>`, and the
Evidently HTML report at `/models/<model>/report?role=canary&reference=champion`
(`shepherd drift report` saves it). The local serving plane runs one and serves it under `/drift/`.

HTTP API:
  POST /                          a CloudEvent in binary mode (ce-* headers, JSON body), as KServe's logger sends
  GET  /metrics                   Prometheus exposition
  GET  /models/<model>            latest results per revision and reference
  GET  /models/<model>/report     Evidently HTML (query: role, reference)
  GET  /healthz
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import tempfile
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

# Module level: FastAPI resolves the handlers' (string) annotations in this module's globals.
from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from prometheus_client import CollectorRegistry, Counter, Gauge

from monitoring.metrics import (
    DRIFT_DETECTED,
    DRIFT_EVENTS_TOTAL,
    DRIFT_FEATURE_SCORE,
    DRIFT_SHARE,
    DRIFT_WINDOW_ROWS,
)

logger = logging.getLogger("shepherd.drift")

REQUEST_EVENT = "org.kubeflow.serving.inference.request"
RESPONSE_EVENT = "org.kubeflow.serving.inference.response"
PREDICTION_COLUMN = "prediction"
METHOD = "psi"
COLUMN_THRESHOLD = 0.1  # PSI above which Evidently calls one column drifted
DATASET_DRIFT_SHARE = 0.5  # share of drifted columns above which the whole dataset has drifted
REFERENCE_ROWS = 2000
PENDING_LIMIT = 10_000  # requests waiting for their response event; the oldest are dropped beyond it


class BadEvent(ValueError):
    """A CloudEvent the service cannot use; the message names the header or field."""


@dataclass
class DriftResult:
    model: str
    version: str
    role: str
    reference: str  # training | champion
    rows: int
    reference_rows: int
    share: float
    detected: bool
    scores: dict[str, float]
    drifted: list[str]
    computed_at: float

    def summary(self) -> str:
        top = ", ".join(f"{c} {self.scores[c]:.2f}" for c in self.drifted[:3])
        state = "DRIFT" if self.detected else "no drift"
        return (
            f"{self.model} v{self.version} ({self.role}) vs {self.reference}: {state}, "
            f"{len(self.drifted)}/{len(self.scores)} columns drifted ({self.share:.0%})" + (f": {top}" if top else "")
        )


@dataclass
class Window:
    """The latest rows one revision served: features plus the predicted probability."""

    version: str
    rows: deque = field(default_factory=deque)
    pending: dict[str, list[dict]] = field(default_factory=dict)  # event id -> request rows
    changed: bool = False

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(list(self.rows))


@dataclass(frozen=True)
class Features:
    numerical: list[str]
    categorical: list[str]

    @property
    def names(self) -> list[str]:
        return self.numerical + self.categorical


def rows_from_request(body: object) -> list[dict]:
    """Feature rows from a V1 (`instances`) or V2 (`inputs`) request body."""
    if not isinstance(body, dict):
        raise BadEvent("body: expected a JSON object with 'instances' (V1) or 'inputs' (V2)")
    if "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list) or not all(isinstance(r, dict) for r in instances):
            raise BadEvent("body.instances: expected a list of objects (one per row)")
        return [dict(r) for r in instances]
    if "inputs" in body:
        inputs = body["inputs"]
        if not isinstance(inputs, list) or not all(isinstance(i, dict) and "name" in i for i in inputs):
            raise BadEvent("body.inputs: expected a list of named tensors")
        columns = {i["name"]: list(i.get("data") or []) for i in inputs}
        lengths = {len(v) for v in columns.values()}
        if len(lengths) > 1:
            raise BadEvent(f"body.inputs: tensors of different lengths {sorted(lengths)}")
        n = lengths.pop() if lengths else 0
        return [{name: values[i] for name, values in columns.items()} for i in range(n)]
    raise BadEvent("body: neither 'instances' (V1) nor 'inputs' (V2)")


def scores_from_response(body: object) -> list[float]:
    """Predicted probabilities from a V1 (`predictions`) or V2 (`outputs`) response body."""
    if isinstance(body, dict) and isinstance(body.get("predictions"), list):
        out = []
        for p in body["predictions"]:
            out.append(float(p["probability"]) if isinstance(p, dict) else float(p))
        return out
    if isinstance(body, dict) and isinstance(body.get("outputs"), list):
        for tensor in body["outputs"]:
            if tensor.get("name") == "probability":
                return [float(v) for v in tensor.get("data") or []]
    raise BadEvent("body: a response needs 'predictions' (V1) or an 'outputs' tensor named 'probability' (V2)")


def psi_drift(current: pd.DataFrame, reference: pd.DataFrame, features: Features):
    """Evidently's DataDriftPreset with PSI on every column: (report, share, detected, scores, drifted)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    numerical = [c for c in features.numerical if c in current and c in reference]
    categorical = [c for c in features.categorical if c in current and c in reference]
    columns = numerical + categorical
    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical)
    preset = DataDriftPreset(
        columns=columns, method=METHOD, threshold=COLUMN_THRESHOLD, drift_share=DATASET_DRIFT_SHARE
    )
    report = Report([preset]).run(
        Dataset.from_pandas(current[columns].reset_index(drop=True), data_definition=definition),
        Dataset.from_pandas(reference[columns].reset_index(drop=True), data_definition=definition),
    )
    scores: dict[str, float] = {}
    share = 0.0
    for metric in report.dict()["metrics"]:
        config = metric["config"]
        if config["type"].endswith("ValueDrift"):
            scores[config["column"]] = float(metric["value"])
        elif config["type"].endswith("DriftedColumnsCount"):
            share = float(metric["value"]["share"])
    drifted = sorted((c for c, s in scores.items() if s >= COLUMN_THRESHOLD), key=lambda c: -scores[c])
    return report, share, share >= DATASET_DRIFT_SHARE, scores, drifted


class ReferenceStore:
    """Per model version: its feature types (from the stored spec) and a sample of its training
    snapshot, verified by sha256 as `shepherd reproduce` does. Loaded once, then cached."""

    def __init__(self, tracking_uri: str):
        self.tracking_uri = tracking_uri
        self._cache: dict[tuple[str, str], tuple[Features, pd.DataFrame]] = {}
        self._lock = threading.Lock()

    def get(self, model: str, version: str) -> tuple[Features, pd.DataFrame]:
        with self._lock:
            if (model, version) not in self._cache:
                self._cache[(model, version)] = self._load(model, version)
            return self._cache[(model, version)]

    def resolve_version(self, model: str, role: str) -> str:
        """The version behind a role when the logger does not say (KServe's ce-modelid is the model name)."""
        from components import registry

        alias = registry.CHALLENGER if role == "canary" else registry.CHAMPION
        client = registry.connect(self.tracking_uri)
        return str(client.get_model_version_by_alias(model, alias).version)

    def _load(self, model: str, version: str) -> tuple[Features, pd.DataFrame]:
        from components import registry
        from components.spec import parse_spec

        client = registry.connect(self.tracking_uri)
        model_version = registry.get_version(client, model, version)
        run = client.get_run(model_version.run_id)
        with tempfile.TemporaryDirectory() as tmp:
            spec_path = client.download_artifacts(run.info.run_id, registry.SPEC_ARTIFACT, tmp)
            spec = parse_spec(Path(spec_path).read_text(), origin=f"{model} v{version} spec")
            frame = registry.download_snapshot(
                client, run.info.run_id, run.data.tags[registry.TAG_SNAPSHOT_SHA256], Path(tmp)
            )
        features = Features(
            numerical=[f.name for f in spec.features if f.type != "category"],
            categorical=[f.name for f in spec.features if f.type == "category"],
        )
        sample = frame[features.names].sample(min(REFERENCE_ROWS, len(frame)), random_state=0)
        return features, sample


class DriftService:
    """Windows per revision, Evidently per window, gauges for Prometheus."""

    def __init__(
        self,
        references: ReferenceStore,
        registry: CollectorRegistry,
        window_rows: int = 500,
        min_rows: int = 200,
    ):
        self.references = references
        self.registry = registry
        self.window_rows = window_rows
        self.min_rows = min_rows
        self.windows: dict[tuple[str, str], Window] = {}  # (model, role)
        self.results: dict[tuple[str, str, str], DriftResult] = {}  # (model, role, reference)
        self._lock = threading.Lock()
        labels = ["model", "version", "role", "reference"]
        self.share = Gauge(DRIFT_SHARE, "Share of columns whose PSI drift test fired.", labels, registry=registry)
        self.detected = Gauge(
            DRIFT_DETECTED, "1 when the share reaches the dataset-drift share.", labels, registry=registry
        )
        self.feature_score = Gauge(
            DRIFT_FEATURE_SCORE, "PSI of one column against the reference.", [*labels, "feature"], registry=registry
        )
        self.window_rows_gauge = Gauge(
            DRIFT_WINDOW_ROWS, "Rows in the revision's current window.", ["model", "version", "role"], registry=registry
        )
        events = Counter(
            DRIFT_EVENTS_TOTAL.removesuffix("_total"), "CloudEvents received.", ["outcome"], registry=registry
        )
        self.events = {o: events.labels(outcome=o) for o in ("ok", "invalid")}

    # -- ingestion ------------------------------------------------------------------------------
    def ingest(self, headers: Mapping[str, str], body: bytes) -> int:
        """Take one CloudEvent; returns the rows it completed (0 for a request still awaiting its response)."""
        try:
            rows = self._ingest(headers, body)
        except BadEvent:
            self.events["invalid"].inc()
            raise
        self.events["ok"].inc()
        return rows

    def _ingest(self, headers: Mapping[str, str], body: bytes) -> int:
        def header(name: str) -> str:
            value = headers.get(name)
            if not value:
                raise BadEvent(f"header {name}: required (KServe's payload logger sets it)")
            return value

        kind, event_id, model = header("ce-type"), header("ce-id"), header("ce-inferenceservicename")
        if kind not in (REQUEST_EVENT, RESPONSE_EVENT):
            raise BadEvent(f"header ce-type: {kind!r} is neither {REQUEST_EVENT!r} nor {RESPONSE_EVENT!r}")
        role = "canary" if headers.get("ce-endpoint") == "canary" else "champion"
        try:
            payload = json.loads(body)
        except ValueError as exc:
            raise BadEvent(f"body: not JSON ({exc})") from exc
        version = headers.get("ce-modelid", "")
        if not version.isdigit():
            version = self.references.resolve_version(model, role)
        with self._lock:
            window = self.windows.get((model, role))
            if window is None or window.version != version:
                if window is not None:
                    self._forget(model, role, window.version)
                window = self.windows[(model, role)] = Window(version, deque(maxlen=self.window_rows))
            if kind == REQUEST_EVENT:
                window.pending[event_id] = rows_from_request(payload)
                while len(window.pending) > PENDING_LIMIT:
                    window.pending.pop(next(iter(window.pending)))
                return 0
            scores = scores_from_response(payload)
            rows = window.pending.pop(event_id, None)
            if rows is None:
                return 0  # the request event was lost or dropped: nothing to pair
            if len(rows) != len(scores):
                raise BadEvent(f"body: {len(scores)} predictions for a request of {len(rows)} rows (ce-id {event_id})")
            for row, score in zip(rows, scores, strict=True):
                window.rows.append({**row, PREDICTION_COLUMN: score})
            window.changed = True
            self.window_rows_gauge.labels(model, version, role).set(len(window.rows))
            return len(rows)

    def _forget(self, model: str, role: str, version: str) -> None:
        """A role moved to another version: its old series go away rather than linger stale."""
        with contextlib.suppress(KeyError):
            self.window_rows_gauge.remove(model, version, role)
        for reference in ("training", "champion"):
            result = self.results.pop((model, role, reference), None)
            if result is None:
                continue
            with contextlib.suppress(KeyError):
                self.share.remove(model, version, role, reference)
                self.detected.remove(model, version, role, reference)
            for feature in result.scores:
                with contextlib.suppress(KeyError):
                    self.feature_score.remove(model, version, role, reference, feature)

    # -- computation ----------------------------------------------------------------------------
    def compute(self, force: bool = False) -> list[DriftResult]:
        """Recompute drift for every window that changed (all with `force`) and has enough rows."""
        with self._lock:
            todo = [
                (model, role, window.version, window.frame())
                for (model, role), window in self.windows.items()
                if (window.changed or force) and len(window.rows) >= self.min_rows
            ]
            for model, role, _, _ in todo:
                self.windows[(model, role)].changed = False
            champions = {m: w.frame() for (m, r), w in self.windows.items() if r == "champion"}
        results = []
        for model, role, version, frame in todo:
            features, reference = self.references.get(model, version)
            results.append(self._compare(model, version, role, "training", frame, reference, features))
            champion = champions.get(model)
            if role == "canary" and champion is not None and len(champion) >= self.min_rows:
                with_prediction = Features([*features.numerical, PREDICTION_COLUMN], features.categorical)
                results.append(self._compare(model, version, role, "champion", frame, champion, with_prediction))
        return results

    def _compare(self, model, version, role, reference_name, frame, reference, features) -> DriftResult:
        _, share, detected, scores, drifted = psi_drift(frame, reference, features)
        result = DriftResult(
            model,
            version,
            role,
            reference_name,
            len(frame),
            len(reference),
            share,
            detected,
            scores,
            drifted,
            time.time(),
        )
        labels = (model, version, role, reference_name)
        self.share.labels(*labels).set(share)
        self.detected.labels(*labels).set(1.0 if detected else 0.0)
        for column, score in scores.items():
            self.feature_score.labels(*labels, column).set(score)
        self.results[(model, role, reference_name)] = result
        logger.info("%s", result.summary())
        return result

    def report_html(self, model: str, role: str, reference: str) -> str:
        """Evidently's HTML report for one revision against one reference, from the current windows."""
        with self._lock:
            window = self.windows.get((model, role))
            champion = self.windows.get((model, "champion"))
            if window is None or not window.rows:
                raise LookupError(f"no logged traffic for {model} ({role}) yet")
            frame = window.frame()
            champion_frame = champion.frame() if champion is not None else None
        features, training = self.references.get(model, window.version)
        if reference == "champion":
            if role != "canary" or champion_frame is None or champion_frame.empty:
                raise LookupError("the champion reference needs a canary window and a champion window")
            features, base = Features([*features.numerical, PREDICTION_COLUMN], features.categorical), champion_frame
        else:
            base = training
        report, *_ = psi_drift(frame, base, features)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "report.html"
            report.save_html(str(path))
            return path.read_text()


def create_app(service: DriftService, compute_interval: float = 5.0) -> FastAPI:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    registry = service.registry

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        async def recompute():
            while True:
                await asyncio.sleep(compute_interval)
                try:
                    await asyncio.to_thread(service.compute)
                except Exception:  # one bad window must not stop the others' monitoring
                    logger.exception("drift computation failed")

        task = asyncio.create_task(recompute())
        yield
        task.cancel()

    app = FastAPI(title="Shepherd drift service", lifespan=lifespan)

    @app.post("/")
    async def receive(request: Request) -> Response:
        body = await request.body()
        try:
            rows = await asyncio.to_thread(service.ingest, request.headers, body)
        except BadEvent as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        except LookupError as exc:  # no such model or alias in the registry
            return JSONResponse({"error": f"header ce-inferenceservicename: {exc}"}, status_code=404)
        return JSONResponse({"rows": rows}, status_code=202)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/models/{model}")
    async def results(model: str) -> Response:
        found = [asdict(r) for (m, _, _), r in service.results.items() if m == model]
        windows = {role: len(w.rows) for (m, role), w in service.windows.items() if m == model}
        return JSONResponse({"model": model, "windows": windows, "minRows": service.min_rows, "results": found})

    @app.get("/models/{model}/report")
    async def report(model: str, role: str = "champion", reference: str = "training") -> Response:
        if role not in ("champion", "canary"):
            return JSONResponse({"error": f"role: {role!r}; expected champion or canary"}, status_code=400)
        if reference not in ("training", "champion"):
            return JSONResponse({"error": f"reference: {reference!r}; expected training or champion"}, status_code=400)
        try:
            html = await asyncio.to_thread(service.report_html, model, role, reference)
        except LookupError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        return HTMLResponse(html)

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok", "windows": len(service.windows)}

    return app


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 in a container")
    parser.add_argument(
        "--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"), help="[env: MLFLOW_TRACKING_URI]"
    )
    parser.add_argument("--window-rows", type=int, default=500, help="rows kept per revision (default 500)")
    parser.add_argument("--min-rows", type=int, default=200, help="rows needed before drift is computed (default 200)")
    parser.add_argument("--compute-interval", type=float, default=5.0, help="seconds between computations")
    args = parser.parse_args(argv)
    if not args.tracking_uri:
        parser.error("--tracking-uri or MLFLOW_TRACKING_URI is required")
    if not 0 < args.min_rows <= args.window_rows:
        parser.error(f"--min-rows must be within 1..--window-rows ({args.window_rows}), got {args.min_rows}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    service = DriftService(ReferenceStore(args.tracking_uri), CollectorRegistry(), args.window_rows, args.min_rows)
    uvicorn.run(create_app(service, args.compute_interval), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    raise SystemExit(main())
