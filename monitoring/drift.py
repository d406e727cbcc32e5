"""The drift service: KServe payload-log CloudEvents in, Evidently drift per revision out.

Each predictor revision's logged requests (the features) and responses (the predicted probability)
are paired by event id and kept in a bounded window per (model, role). Every `compute_interval`
seconds the windows that changed are compared with Evidently's column drift calculation (the one its
DataDriftPreset runs, without building the report's charts), using PSI for every column so that one score
means one thing (0 = same distribution; 0.1 moderate; 0.25 large):
- each revision's inputs against the training reference stored with its model version
  (`reference="training"`; a sample of the content-addressed training snapshot), and
- the canary's inputs and predictions against the champion's live window (`reference="champion"`).

Results are Prometheus gauges (names in `monitoring/metrics.py`), JSON at `/models/<model>`, and the
Evidently HTML report at `/models/<model>/report?role=canary&reference=champion`
(`shepherd drift report` saves it). The local serving plane runs one and serves it under `/drift/`.

Payload logs are accepted in three CloudEvents forms (contract in `monitoring/payload_log.py`): binary mode
(ce-* headers, one event per POST: what KServe's logger sends), one structured event
(`application/cloudevents+json`), and batch mode (`application/cloudevents-batch+json`, a JSON array of
structured events: what the local plane sends). A request waits in `pending` for its response (or, sent one
by one, a response for its request: KServe's agent posts the two from concurrent workers; a batch comes in
order, and a response there without its request is dropped at once): a response
with an error status (the `statuscode` attribute) drops it at once, and a request whose response never comes
(KServe's logger logs no error responses) is dropped after `--pending-ttl` seconds, so memory stays flat
whatever the traffic. Binary tensor bodies (the `inferenceheaderlength` attribute) are decoded with KServe's
own parser.

HTTP API:
  POST /                          CloudEvents: binary mode (KServe's logger), structured, or batch mode;
                                  ?role=&version= name the revision when the events do not (KServe's Standard mode)
  GET  /metrics                   Prometheus exposition
  GET  /models/<model>            latest results per revision and reference
  GET  /models/<model>/report     Evidently HTML (query: role, reference)
  POST /models/<model>/feedback   labels for logged predictions (`monitoring/quality.py`; with --feature-repo)
  GET  /models/<model>/quality    live quality per revision from the labelled predictions
  GET  /healthz

With `--feature-repo` every paired prediction is also recorded in the outcome ledger that lives with the
feature store (`components/outcomes.py`), labels come back through the feedback route, and live quality
is computed with the drift (`monitoring/quality.py`). Feedback needs `Authorization: Bearer <token>` when
a token is configured (--feedback-token-file or SHEPHERD_FEEDBACK_TOKEN); without one the service only
takes feedback when it listens on loopback (behind the local plane, which checks its own token).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import concurrent.futures
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
from types import MappingProxyType

import numpy as np
import orjson
import pandas as pd

# Module level: FastAPI resolves the handlers' (string) annotations in this module's globals.
from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse
from fastapi.responses import JSONResponse as _JSONResponse
from prometheus_client import CollectorRegistry, Counter, Gauge

from components.outcomes import OutcomeLedger, Prediction
from monitoring.metrics import (
    DRIFT_DETECTED,
    DRIFT_EVENTS_TOTAL,
    DRIFT_FEATURE_SCORE,
    DRIFT_PENDING_DISCARDED_TOTAL,
    DRIFT_PENDING_REASONS,
    DRIFT_PENDING_REQUESTS,
    DRIFT_SHARE,
    DRIFT_WINDOW_ROWS,
    OUTCOME_LEDGER_FAILURES_TOTAL,
)
from monitoring.payload_log import (
    BATCH_CONTENT_TYPE,
    HEADER_LENGTH_ATTRIBUTE,
    MODEL_ID_ATTRIBUTE,
    REQUEST_EVENT,
    RESPONSE_EVENT,
    REVISION_ROLE_PARAMETER,
    REVISION_VERSION_PARAMETER,
    STATUS_ATTRIBUTE,
    STRUCTURED_CONTENT_TYPE,
)
from monitoring.quality import QualityMonitor, add_routes
from serving.prediction_ids import prediction_ids  # the contract: row i of request r is prediction "r-i"

logger = logging.getLogger("shepherd.drift")


class JSONResponse(_JSONResponse):
    """JSON with non-ASCII escaped: an error that quotes a client's text (a lone surrogate, say) is still
    encodable, where Starlette's UTF-8 rendering would answer a 500 and lose the batch."""

    def render(self, content) -> bytes:
        return json.dumps(content, separators=(",", ":")).encode()


PREDICTION_COLUMN = "prediction"
METHOD = "psi"
COLUMN_THRESHOLD = 0.1  # PSI above which Evidently calls one column drifted
DATASET_DRIFT_SHARE = 0.5  # share of drifted columns above which the whole dataset has drifted
REFERENCE_ROWS = 2000
PENDING_LIMIT = 10_000  # requests waiting for their response event, per window; the oldest are dropped beyond it
PENDING_ROWS_LIMIT = 100_000  # rows of those requests, per window; the oldest are dropped beyond it
DEFAULT_PENDING_TTL_SECONDS = 60.0  # a request whose response has not come by then never will
ENV_PENDING_TTL = "SHEPHERD_DRIFT_PENDING_TTL"
ENV_FEATURE_REPO = "SHEPHERD_FEATURE_REPO"
SPEC_RETRY_SECONDS = 60  # a spec the registry could not give is asked for again after this
SPEC_WAIT_SECONDS = 2.0  # the first event of a version waits this long for its spec (entity key), no more
ENV_FEEDBACK_TOKEN = "SHEPHERD_FEEDBACK_TOKEN"
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
DEFAULT_UNLABELLED_RETENTION_DAYS = 30.0  # predictions whose label never came, kept this long for a late one
PRUNE_INTERVAL_SECONDS = 3600.0


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
class Pending:
    """Half a prediction waiting for the other half: a request's rows, or a response that came before its
    request (KServe's agent posts a prediction's two events from concurrent workers, so either may come first)."""

    received: float  # time.monotonic()
    rows: list[dict] | None = None  # a request's feature rows
    status: int = 0  # a response's HTTP status
    scores: list | None = None  # a 2xx response's predictions

    @property
    def size(self) -> int:
        return len(self.rows) if self.rows is not None else 0


@dataclass
class Window:
    """The latest rows one revision served: features plus the predicted probability."""

    version: str
    rows: deque = field(default_factory=deque)
    pending: dict[str, Pending] = field(default_factory=dict)  # event id -> half a prediction, oldest first
    pending_rows: int = 0
    changed: bool = False

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(list(self.rows))

    def wait(self, event_id: str, half: Pending) -> int:
        """Keep half a prediction until the other half comes; returns how many older ones the limits dropped."""
        self.take(event_id)  # a repeated id moves to the end: the dict stays in arrival order
        self.pending[event_id] = half
        self.pending_rows += half.size
        dropped = 0
        while len(self.pending) > 1 and (len(self.pending) > PENDING_LIMIT or self.pending_rows > PENDING_ROWS_LIMIT):
            self.take(next(iter(self.pending)))
            dropped += 1
        return dropped

    def take(self, event_id: str) -> Pending | None:
        """The half prediction waiting under `event_id` (no longer waiting), or None."""
        entry = self.pending.pop(event_id, None)
        if entry is not None:
            self.pending_rows -= entry.size
        return entry

    def expire(self, older_than: float) -> int:
        """Drop the halves received before `older_than`; returns how many."""
        expired = 0
        while self.pending:
            oldest = next(iter(self.pending))
            if self.pending[oldest].received >= older_than:
                break
            self.take(oldest)
            expired += 1
        return expired


@dataclass(frozen=True)
class LoggedEvent:
    """One payload-log CloudEvent, whatever form it came in."""

    kind: str  # REQUEST_EVENT | RESPONSE_EVENT
    event_id: str
    model: str  # the InferenceService
    role: str  # champion | canary
    version: str  # the `modelid` attribute; may be a name rather than a version (KServe)
    status: int  # of the response; 200 when the logger does not say (KServe logs only 200s)
    payload: object  # the decoded body


def _attribute(attributes: Mapping, name: str, where: str) -> str:
    value = attributes.get(name)
    if value is None or value == "":
        raise BadEvent(f"{where}{name}: required (KServe's payload logger sets it)")
    if not isinstance(value, str):
        raise BadEvent(f"{where}{name}: expected a string, got {type(value).__name__}")
    return value


def _event(attributes: Mapping, where: str, decode, revision: Mapping) -> LoggedEvent:
    """A LoggedEvent from its attributes (`where` prefixes each name: `header ce-` or `events[3].`); `revision`:
    the query parameters of the URL it was posted to."""
    kind = _attribute(attributes, "type", where)
    event_id = _attribute(attributes, "id", where)
    model = _attribute(attributes, "inferenceservicename", where)
    if kind not in (REQUEST_EVENT, RESPONSE_EVENT):
        raise BadEvent(f"{where}type: {kind!r} is neither {REQUEST_EVENT!r} nor {RESPONSE_EVENT!r}")
    status = attributes.get(STATUS_ATTRIBUTE, 200)
    try:
        status = int(status)
    except (TypeError, ValueError):
        raise BadEvent(f"{where}{STATUS_ATTRIBUTE}: expected an HTTP status code, got {status!r}") from None
    version = attributes.get(MODEL_ID_ATTRIBUTE) or ""
    endpoint = attributes.get("endpoint") or ""
    role = "canary" if endpoint == "canary" else "champion"
    if not endpoint:  # KServe's Standard mode: the logger URL names the revision (`revision`)
        role = "canary" if revision.get(REVISION_ROLE_PARAMETER) == "canary" else "champion"
        version = version or revision.get(REVISION_VERSION_PARAMETER) or ""
    payload = decode(kind, attributes.get(HEADER_LENGTH_ATTRIBUTE)) if 200 <= status < 300 else None
    return LoggedEvent(kind, event_id, model, role, str(version), status, payload)


def _decode(data: bytes, kind: str, header_length, model: str) -> object:
    """The body as JSON, or a binary tensor body (OIP extension) as the V2 JSON it stands for."""
    if header_length is None:
        try:
            return json.loads(data)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than json can parse
            raise BadEvent(f"body: not JSON ({exc})") from exc
    from kserve.protocol.infer_type import InferRequest, InferResponse

    try:
        length = int(header_length)
        if kind == REQUEST_EVENT:
            tensors = InferRequest.from_bytes(data, length, model).inputs
            return {"inputs": [{"name": t.name, "data": t.data} for t in tensors]}
        tensors = InferResponse.from_bytes(data, length).outputs
        return {"outputs": [{"name": t.name, "data": t.data} for t in tensors]}
    except Exception as exc:  # KServe's parser raises several kinds for a malformed body
        raise BadEvent(f"body: not a binary tensor body with a {header_length}-byte JSON header ({exc})") from exc


def event_from_binary(headers: Mapping[str, str], body: bytes, revision: Mapping = MappingProxyType({})) -> LoggedEvent:
    """An event in binary mode: attributes in ce-* headers, the payload as the body (KServe's logger)."""
    attributes = {k.lower()[3:]: v for k, v in headers.items() if k.lower().startswith("ce-")}
    model = attributes.get("inferenceservicename", "")
    return _event(attributes, "header ce-", lambda kind, length: _decode(body, kind, length, model), revision)


def event_from_structured(event: object, where: str = "", revision: Mapping = MappingProxyType({})) -> LoggedEvent:
    """An event in the JSON event format: attributes as members, `data` (JSON) or `data_base64`."""
    if not isinstance(event, dict):
        raise BadEvent(f"{where or 'body'}: expected a CloudEvent (a JSON object)")
    model = event.get("inferenceservicename", "")

    def decode(kind: str, length):
        if "data_base64" in event:
            try:
                data = base64.b64decode(event["data_base64"], validate=True)
            except (TypeError, ValueError) as exc:
                raise BadEvent(f"{where}data_base64: not base64 ({exc})") from exc
            return _decode(data, kind, length, model)
        if "data" not in event:
            raise BadEvent(f"{where}data: required (or data_base64)")
        return event["data"]

    return _event(event, where, decode, revision)


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
        return _scalar_rows([dict(r) for r in instances], "body.instances")
    if "inputs" in body:
        inputs = body["inputs"]
        if not isinstance(inputs, list) or not all(
            isinstance(i, dict) and isinstance(i.get("name"), str) for i in inputs
        ):
            raise BadEvent("body.inputs: expected a list of tensors, each with a string name")
        columns = {i["name"]: _tensor_data(i) for i in inputs}
        lengths = {len(v) for v in columns.values()}
        if len(lengths) > 1:
            raise BadEvent(f"body.inputs: tensors of different lengths {sorted(lengths)}")
        n = lengths.pop() if lengths else 0
        return _scalar_rows([{name: values[i] for name, values in columns.items()} for i in range(n)], "body.inputs")
    raise BadEvent("body: neither 'instances' (V1) nor 'inputs' (V2)")


SCALAR_TYPES = (str, int, float, bool, type(None))


def _tensor_data(tensor: dict) -> list:
    """A V2 tensor's values, flat: `[[v], [v], ...]` (shape [n, 1] sent row by row) is flattened as the
    predictor flattens it."""
    data = tensor.get("data")
    if data is None:
        return []
    if not isinstance(data, list):
        raise BadEvent(f"body.inputs[{tensor['name']}].data: expected a list, got {type(data).__name__}")
    if data and all(isinstance(v, list) and len(v) == 1 for v in data):
        return [v[0] for v in data]
    return data


def _scalar_rows(rows: list[dict], where: str) -> list[dict]:
    """`rows`, refused unless every value is a number, a string or null: a window column holding a list
    or an object would break every drift computation over it until the row left the window."""
    for j, row in enumerate(rows):
        for name, value in row.items():
            if not isinstance(value, SCALAR_TYPES):
                raise BadEvent(f"{where}[{j}].{name}: expected a number, a string or null, got {type(value).__name__}")
    return rows


def scores_from_response(body: object) -> list[float]:
    """The score of each answered row (`components.model_output.Answers.score`) from a V1 (`predictions`)
    or V2 (`outputs`) response body, whatever the task: the positive-class `probability` (binary), the
    predicted `value` (regression), or the index of the predicted class in `probabilities` (multiclass:
    V1 an object in the order of target.classes, V2 a [rows, classes] tensor)."""
    if isinstance(body, dict) and isinstance(body.get("predictions"), list):
        return [_v1_score(p, i) for i, p in enumerate(body["predictions"])]
    if isinstance(body, dict) and isinstance(body.get("outputs"), list):
        tensors = {t.get("name"): t for t in body["outputs"] if isinstance(t, dict)}
        for name in ("probability", "value"):
            if name in tensors:
                return [float(v) for v in tensors[name].get("data") or []]
        if "probabilities" in tensors:
            tensor = tensors["probabilities"]
            shape = tensor.get("shape") or []
            if len(shape) != 2 or not shape[1]:
                raise BadEvent(f"outputs[probabilities].shape: expected [rows, classes], got {shape}")
            rows = np.asarray(tensor.get("data") or [], dtype=float).reshape(-1, int(shape[1]))
            return rows.argmax(axis=1).astype(float).tolist()
    raise BadEvent(
        "body: a response needs 'predictions' (V1) or an 'outputs' tensor named 'probability', 'value' or "
        "'probabilities' (V2)"
    )


def _v1_score(prediction: object, row: int) -> float:
    if not isinstance(prediction, dict):
        return float(prediction)
    for name in ("probability", "value"):
        if name in prediction:
            return float(prediction[name])
    probabilities = prediction.get("probabilities")
    if isinstance(probabilities, dict) and probabilities:
        values = list(probabilities.values())
        return float(values.index(max(values)))
    raise BadEvent(f"body.predictions[{row}]: no 'probability', 'value' or 'probabilities'")


@dataclass(frozen=True)
class DriftScores:
    """One window against one reference: PSI per column and what they add up to."""

    share: float  # of the columns whose PSI reached COLUMN_THRESHOLD
    detected: bool  # share >= DATASET_DRIFT_SHARE
    scores: dict[str, float]
    drifted: list[str]  # the drifted columns, largest PSI first

    @classmethod
    def of(cls, scores: dict[str, float], share: float | None = None) -> DriftScores:
        """From the per-column scores; `share` when a report states it, else counted from them."""
        drifted = sorted((c for c, s in scores.items() if s >= COLUMN_THRESHOLD), key=lambda c: -scores[c])
        if share is None:
            share = len(drifted) / len(scores) if scores else 0.0
        return cls(share, share >= DATASET_DRIFT_SHARE, scores, drifted)


def _shared_columns(current: pd.DataFrame, reference: pd.DataFrame, features: Features) -> tuple[list, list]:
    numerical = [c for c in features.numerical if c in current and c in reference]
    categorical = [c for c in features.categorical if c in current and c in reference]
    return numerical, categorical


def psi_scores(current: pd.DataFrame, reference: pd.DataFrame, features: Features) -> DriftScores:
    """PSI per column from Evidently's own drift calculation (`get_one_column_drift`: what its ValueDrift
    metric and DataDriftPreset call), without the report. Building the report's plotly widgets is ~95 % of
    a preset run (36 vs 530-710 ms for 10 columns, 500 x 1,000 rows, measured 2026-12-03), and the service
    computes every few seconds on the cores that serve predictions. Same scores as `psi_report`'s (tested)."""
    from evidently.legacy.calculations.data_drift import get_one_column_drift
    from evidently.legacy.core import ColumnType
    from evidently.legacy.metric_results import DatasetColumns, DatasetUtilityColumns
    from evidently.legacy.options.data_drift import DataDriftOptions

    numerical, categorical = _shared_columns(current, reference, features)
    options = DataDriftOptions(all_features_stattest=METHOD, all_features_threshold=COLUMN_THRESHOLD)
    scores: dict[str, float] = {}
    for column, column_type in [(c, ColumnType.Numerical) for c in numerical] + [
        (c, ColumnType.Categorical) for c in categorical
    ]:
        numeric = column_type == ColumnType.Numerical
        result = get_one_column_drift(
            current_data=current[[column]].reset_index(drop=True),
            reference_data=reference[[column]].reset_index(drop=True),
            column_name=column,
            options=options,
            dataset_columns=DatasetColumns(
                utility_columns=DatasetUtilityColumns(date=None, id=None, target=None, prediction=None),
                target_type=None,
                task=None,
                num_feature_names=[column] if numeric else [],
                cat_feature_names=[] if numeric else [column],
                text_feature_names=[],
                datetime_feature_names=[],
                target_names=None,
            ),
            column_type=column_type,
            agg_data=True,
        )
        scores[column] = float(result.drift_score)
    return DriftScores.of(scores)


def psi_report(current: pd.DataFrame, reference: pd.DataFrame, features: Features):
    """Evidently's DataDriftPreset with PSI on every column: the report a person reads (HTML)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    numerical, categorical = _shared_columns(current, reference, features)
    columns = numerical + categorical
    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical)
    preset = DataDriftPreset(
        columns=columns, method=METHOD, threshold=COLUMN_THRESHOLD, drift_share=DATASET_DRIFT_SHARE
    )
    return Report([preset]).run(
        Dataset.from_pandas(current[columns].reset_index(drop=True), data_definition=definition),
        Dataset.from_pandas(reference[columns].reset_index(drop=True), data_definition=definition),
    )


def report_scores(report) -> DriftScores:
    """The scores a `psi_report` holds (the same figures `psi_scores` computes without it)."""
    scores: dict[str, float] = {}
    share = 0.0
    for metric in report.dict()["metrics"]:
        config = metric["config"]
        if config["type"].endswith("ValueDrift"):
            scores[config["column"]] = float(metric["value"])
        elif config["type"].endswith("DriftedColumnsCount"):
            share = float(metric["value"]["share"])
    return DriftScores.of(scores, share)


class ReferenceStore:
    """Per model version: its feature types (from the stored spec) and a sample of its training
    snapshot, verified by sha256 as `shepherd reproduce` does. Loaded once, then cached."""

    def __init__(self, tracking_uri: str):
        self.tracking_uri = tracking_uri
        self._cache: dict[tuple[str, str], tuple[Features, pd.DataFrame]] = {}
        self._specs: dict[tuple[str, str], object] = {}
        self._lock = threading.Lock()
        self._spec_lock = threading.Lock()

    def get(self, model: str, version: str) -> tuple[Features, pd.DataFrame]:
        with self._lock:
            if (model, version) not in self._cache:
                self._cache[(model, version)] = self._load(model, version)
            return self._cache[(model, version)]

    def spec(self, model: str, version: str):
        """The ModelSpec version `version` of `model` was trained from (cached)."""
        with self._spec_lock:
            if (model, version) not in self._specs:
                self._specs[(model, version)] = self._download_spec(model, version)
            return self._specs[(model, version)]

    def cached_spec(self, model: str, version: str):
        """The spec if it was loaded already, else None (never waits for the registry)."""
        return self._specs.get((model, version))

    def facts(self, model: str, version: str):
        """What live quality needs from the version's spec."""
        from monitoring.quality import SpecFacts

        return SpecFacts.of(self.spec(model, version))

    def _download_spec(self, model: str, version: str):
        from components import registry

        client = registry.connect(self.tracking_uri)
        return registry.version_spec(client, registry.get_version(client, model, version))

    def resolve_version(self, model: str, role: str) -> str:
        """The version behind a role when the logger does not say (KServe's ce-modelid is the model name)."""
        from components import registry

        alias = registry.CHALLENGER if role == "canary" else registry.CHAMPION
        client = registry.connect(self.tracking_uri)
        return str(client.get_model_version_by_alias(model, alias).version)

    def _load(self, model: str, version: str) -> tuple[Features, pd.DataFrame]:
        from components import registry

        spec = self.spec(model, version)
        client = registry.connect(self.tracking_uri)
        run = client.get_run(registry.get_version(client, model, version).run_id)
        with tempfile.TemporaryDirectory() as tmp:
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
        pending_ttl: float = DEFAULT_PENDING_TTL_SECONDS,
        ledger: OutcomeLedger | None = None,
    ):
        if pending_ttl <= 0:
            raise ValueError(f"pending_ttl: must be positive, got {pending_ttl}")
        self.references = references
        self.registry = registry
        self.window_rows = window_rows
        self.min_rows = min_rows
        self.pending_ttl = pending_ttl
        self.ledger = ledger  # where each predicted row is recorded for the labels that come back later
        self._spec_retry: dict[tuple[str, str], float] = {}  # (model, version) -> when to ask the registry again
        self._spec_fetches: dict[tuple[str, str], object] = {}  # (model, version) -> Future of its spec
        self._fetcher = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="spec")
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
        pending = Gauge(
            DRIFT_PENDING_REQUESTS,
            "Request events waiting for their response event (and responses that came before their request).",
            registry=registry,
        )
        # list(): a scrape must not iterate the dict while an ingesting thread changes it
        pending.set_function(lambda: sum(len(w.pending) for w in list(self.windows.values())))
        discarded = Counter(
            DRIFT_PENDING_DISCARDED_TOTAL.removesuffix("_total"),
            "Request events dropped before a response paired them.",
            ["reason"],
            registry=registry,
        )
        self.discarded = {r: discarded.labels(reason=r) for r in DRIFT_PENDING_REASONS}
        self.ledger_failures = Counter(
            OUTCOME_LEDGER_FAILURES_TOTAL.removesuffix("_total"),
            "Predicted rows the outcome ledger could not record (its database refused or was unreachable).",
            registry=registry,
        )

    # -- ingestion ------------------------------------------------------------------------------
    def ingest(self, headers: Mapping[str, str], body: bytes, revision: Mapping = MappingProxyType({})) -> int:
        """Take one CloudEvent in binary mode (KServe's logger); returns the rows it completed (0 for half a
        prediction still awaiting the other half). `revision`: the query parameters of the URL it was posted to."""
        predicted: list[Prediction] = []
        rows = self._counted(lambda: self._take(event_from_binary(headers, body, revision), predicted))
        self._record(predicted)
        return rows

    def ingest_structured(
        self,
        event: object,
        where: str = "",
        predicted: list[Prediction] | None = None,
        revision: Mapping = MappingProxyType({}),
        in_order: bool = False,
    ) -> int:
        """Take one CloudEvent in the JSON event format (its predictions are recorded at once, or added
        to `predicted` for the caller to record). `in_order`: a response never comes before its request."""
        batch: list[Prediction] = [] if predicted is None else predicted
        rows = self._counted(lambda: self._take(event_from_structured(event, where, revision), batch, in_order))
        if predicted is None:
            self._record(batch)
        return rows

    def ingest_batch(self, body: bytes, revision: Mapping = MappingProxyType({})) -> dict:
        """Take a batch (a JSON array of structured events: the plane's, which keeps a prediction's request
        before its response). A bad event is reported by its index and does not keep the others out."""
        try:
            events = orjson.loads(body)  # the plane's batches are strict JSON: orjson reads them about 2x faster
        except orjson.JSONDecodeError:
            try:  # another sender's batch may hold what only Python's json reads (NaN, 400-digit integers)
                events = json.loads(body)
            except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than json can parse
                raise BadEvent(f"body: not JSON ({exc})") from exc
        if not isinstance(events, list):
            raise BadEvent("body: expected a JSON array of CloudEvents (batch mode)")
        rows, invalid = 0, []
        predicted: list[Prediction] = []
        for index, event in enumerate(events):
            try:
                rows += self.ingest_structured(event, f"events[{index}].", predicted, revision, in_order=True)
            except (BadEvent, LookupError) as exc:
                invalid.append({"index": index, "error": str(exc)})
            except Exception as exc:  # a bug of ours on one event must not lose the rest of the batch
                logger.exception("ingesting events[%d] failed", index)
                invalid.append({"index": index, "error": f"events[{index}]: not ingested ({type(exc).__name__})"})
        self._record(predicted)  # one transaction per batch
        return {"events": len(events), "rows": rows, "invalid": invalid}

    def _record(self, predicted: list[Prediction]) -> None:
        """Write predicted rows to the outcome ledger. A ledger that cannot be written loses those rows'
        future labels, never the drift windows: counted and logged, not raised."""
        if self.ledger is None or not predicted:
            return
        try:
            self.ledger.record_predictions(predicted)
        except Exception:
            self.ledger_failures.inc(len(predicted))
            logger.exception("recording %d predictions in the outcome ledger failed", len(predicted))

    def _entity_key(self, model: str, version: str) -> str | None:
        """The spec's entity key column, to record with each row. The spec is fetched in the background:
        the first event of a version waits for it at most SPEC_WAIT_SECONDS, later ones never, so a slow or
        dead registry never holds ingestion up (rows recorded meanwhile have no entity key; a failed fetch
        is tried again after SPEC_RETRY_SECONDS)."""
        spec = self.references.cached_spec(model, version)
        if spec is not None:
            return spec.entity.key
        key = (model, version)
        with self._lock:
            future = self._spec_fetches.get(key)
            first = future is None
            if first:
                if time.monotonic() < self._spec_retry.get(key, 0.0):
                    return None
                future = self._spec_fetches[key] = self._fetcher.submit(self.references.spec, model, version)
        try:
            return future.result(timeout=SPEC_WAIT_SECONDS if first else 0).entity.key
        except concurrent.futures.TimeoutError:
            return None
        except Exception as exc:  # the registry is down: the row is still recorded, without its entity
            with self._lock:
                if self._spec_fetches.get(key) is future:
                    del self._spec_fetches[key]
                    self._spec_retry[key] = time.monotonic() + SPEC_RETRY_SECONDS
                    logger.warning(
                        "no entity key for %s v%s (asked again in %d s): %s", model, version, SPEC_RETRY_SECONDS, exc
                    )
            return None

    def _counted(self, take) -> int:
        try:
            rows = take()
        except BadEvent:
            self.events["invalid"].inc()
            raise
        self.events["ok"].inc()
        return rows

    def _take(self, event: LoggedEvent, predicted: list[Prediction], in_order: bool = False) -> int:
        """Pair the event with the other half of its prediction. A response may come before its request (KServe's
        agent posts both from concurrent workers) and then waits for it, unless the sender keeps them `in_order`
        (a batch: the plane queues a prediction's request before its response), where it has no request to wait
        for (dropped as a bad event, or expired)."""
        version = event.version
        if not version.isdigit():
            version = self.references.resolve_version(event.model, event.role)
        model, role = event.model, event.role
        now = time.monotonic()
        if event.kind == REQUEST_EVENT:
            request_rows = rows_from_request(event.payload)
        else:
            ok = 200 <= event.status < 300
            response = Pending(now, status=event.status, scores=scores_from_response(event.payload) if ok else None)
        with self._lock:
            self._expire(now)
            window = self.windows.get((model, role))
            if window is None or window.version != version:
                if window is not None:
                    self._forget(model, role, window.version)
                window = self.windows[(model, role)] = Window(version, deque(maxlen=self.window_rows))
            waiting = window.take(event.event_id)
            if event.kind == REQUEST_EVENT:
                if waiting is None or waiting.rows is not None:  # (a repeated request replaces the first)
                    self.discarded["overflow"].inc(window.wait(event.event_id, Pending(now, rows=request_rows)))
                    return 0
                rows, status, scores = request_rows, waiting.status, waiting.scores  # its response came first
            else:
                if waiting is None or waiting.rows is None:
                    if not in_order:  # the request is on its way (or was lost: the TTL)
                        self.discarded["overflow"].inc(window.wait(event.event_id, response))
                    return 0
                rows, status, scores = waiting.rows, response.status, response.scores
            if not 200 <= status < 300:
                self.discarded["error_response"].inc()  # rejected: no prediction to compare
                return 0
            if len(rows) != len(scores):
                raise BadEvent(
                    f"body: {len(scores)} predictions for a request of {len(rows)} rows (id {event.event_id})"
                )
            for row, score in zip(rows, scores, strict=True):
                window.rows.append({**row, PREDICTION_COLUMN: score})
            window.changed = True
            self.window_rows_gauge.labels(model, version, role).set(len(window.rows))
        if self.ledger is not None:
            key = self._entity_key(model, version)
            at = time.time()
            ids = prediction_ids(event.event_id, len(rows))
            for prediction_id, row, score in zip(ids, rows, scores, strict=True):
                entity = row.get(key) if key is not None else None
                predicted.append(
                    Prediction(
                        id=prediction_id,
                        model=model,
                        version=version,
                        role=role,
                        predicted_at=at,
                        score=score,
                        features=row,
                        entity_key=None if entity is None else str(entity),
                    )
                )
        return len(rows)

    def expire(self) -> int:
        """Drop requests whose response has not come within the TTL; returns how many."""
        with self._lock:
            return self._expire(time.monotonic())

    def _expire(self, now: float) -> int:
        expired = sum(w.expire(now - self.pending_ttl) for w in self.windows.values())
        self.discarded["expired"].inc(expired)
        return expired

    def pending(self, model: str) -> dict[str, int]:
        """Requests waiting for their response, per role."""
        return {role: len(w.pending) for (m, role), w in list(self.windows.items()) if m == model}

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
                with_prediction = self._with_prediction(features, model, version)
                results.append(self._compare(model, version, role, "champion", frame, champion, with_prediction))
        return results

    def _with_prediction(self, features: Features, model: str, version: str) -> Features:
        """The columns compared with the champion's window: the features and the prediction's score, a
        category for a multiclass model (the predicted class), else a number."""
        if self.references.spec(model, version).task == "multiclass":
            return Features(features.numerical, [*features.categorical, PREDICTION_COLUMN])
        return Features([*features.numerical, PREDICTION_COLUMN], features.categorical)

    def _compare(self, model, version, role, reference_name, frame, reference, features) -> DriftResult:
        found = psi_scores(frame, reference, features)
        share, detected, scores = found.share, found.detected, found.scores
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
            found.drifted,
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
            features, base = self._with_prediction(features, model, window.version), champion_frame
        else:
            base = training
        report = psi_report(frame, base, features)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "report.html"
            report.save_html(str(path))
            return path.read_text()


def create_app(
    service: DriftService,
    compute_interval: float = 5.0,
    quality: QualityMonitor | None = None,
    feedback_token: str | None = None,
    unlabelled_retention_days: float = DEFAULT_UNLABELLED_RETENTION_DAYS,
) -> FastAPI:
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
                if quality is not None:
                    try:
                        await asyncio.to_thread(quality.compute)
                    except Exception:  # the ledger's database is down: drift goes on, quality waits
                        logger.exception("model quality computation failed")

        async def expire():  # also when no event arrives to trigger it
            while True:
                await asyncio.sleep(min(service.pending_ttl / 4, 5.0))
                service.expire()

        async def prune():  # the ledger keeps labelled predictions; unlabelled ones only for a while
            while True:
                cutoff = time.time() - unlabelled_retention_days * 86_400
                try:
                    deleted = await asyncio.to_thread(quality.ledger.prune_unlabelled, cutoff)
                    if deleted:
                        logger.info(
                            "ledger: deleted %d predictions older than %g days that never got a label",
                            deleted,
                            unlabelled_retention_days,
                        )
                except Exception:  # the ledger's database is down: try again next time
                    logger.exception("ledger retention failed")
                await asyncio.sleep(PRUNE_INTERVAL_SECONDS)

        tasks = [asyncio.create_task(recompute()), asyncio.create_task(expire())]
        if quality is not None and unlabelled_retention_days > 0:
            tasks.append(asyncio.create_task(prune()))
        yield
        for task in tasks:
            task.cancel()

    app = FastAPI(title="Shepherd drift service", lifespan=lifespan)

    @app.post("/")
    async def receive(request: Request) -> Response:
        body = await request.body()
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        revision = dict(request.query_params)  # a Standard-mode predictor's logger URL names its revision
        try:
            if content_type == BATCH_CONTENT_TYPE:
                return JSONResponse(await asyncio.to_thread(service.ingest_batch, body, revision), status_code=202)
            if content_type == STRUCTURED_CONTENT_TYPE:
                try:
                    event = json.loads(body)
                except (ValueError, RecursionError) as exc:
                    raise BadEvent(f"body: not JSON ({exc})") from exc
                rows = await asyncio.to_thread(service.ingest_structured, event, "", None, revision)
            else:
                rows = await asyncio.to_thread(service.ingest, request.headers, body, revision)
        except BadEvent as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        except LookupError as exc:  # no such model or alias in the registry
            return JSONResponse({"error": f"inferenceservicename: {exc}"}, status_code=404)
        return JSONResponse({"rows": rows}, status_code=202)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/models/{model}")
    async def results(model: str) -> Response:
        found = [asdict(r) for (m, _, _), r in service.results.items() if m == model]
        windows = {role: len(w.rows) for (m, role), w in service.windows.items() if m == model}
        body = {"model": model, "windows": windows, "pending": service.pending(model), "minRows": service.min_rows}
        return JSONResponse({**body, "results": found})

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

    add_routes(app, quality, feedback_token, JSONResponse)

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
    parser.add_argument(
        "--pending-ttl",
        type=float,
        default=float(os.environ.get(ENV_PENDING_TTL) or DEFAULT_PENDING_TTL_SECONDS),
        help=f"seconds a request waits for its response before it is dropped [env: {ENV_PENDING_TTL}]",
    )
    parser.add_argument(
        "--feature-repo",
        default=os.environ.get(ENV_FEATURE_REPO),
        help="the feature store's location (directory or postgresql:// URI): the outcome ledger lives with it; "
        f"without it there is no feedback and no live quality [env: {ENV_FEATURE_REPO}]",
    )
    parser.add_argument(
        "--feedback-token-file",
        type=Path,
        help=f"file holding the bearer token feedback must present [or env: {ENV_FEEDBACK_TOKEN}]",
    )
    parser.add_argument(
        "--quality-window", type=int, default=1000, help="labelled predictions scored per revision (default 1000)"
    )
    parser.add_argument(
        "--unlabelled-retention-days",
        type=float,
        default=DEFAULT_UNLABELLED_RETENTION_DAYS,
        help="delete recorded predictions no label came for after this many days, checked hourly; labelled "
        f"ones are kept (default {DEFAULT_UNLABELLED_RETENTION_DAYS:g}; 0 keeps everything)",
    )
    args = parser.parse_args(argv)
    if not args.tracking_uri:
        parser.error("--tracking-uri or MLFLOW_TRACKING_URI is required")
    if args.quality_window < 1:
        parser.error(f"--quality-window must be at least 1, got {args.quality_window}")
    if args.unlabelled_retention_days < 0:
        parser.error(f"--unlabelled-retention-days must be 0 (keep) or more, got {args.unlabelled_retention_days}")
    token = (
        args.feedback_token_file.read_text().strip() if args.feedback_token_file else os.environ.get(ENV_FEEDBACK_TOKEN)
    )
    if args.feature_repo and not token and args.host not in LOOPBACK_HOSTS:
        parser.error(
            f"feedback on {args.host} needs a bearer token: --feedback-token-file or {ENV_FEEDBACK_TOKEN} "
            "(only a loopback service may take unauthenticated feedback)"
        )
    if not 0 < args.min_rows <= args.window_rows:
        parser.error(f"--min-rows must be within 1..--window-rows ({args.window_rows}), got {args.min_rows}")
    if args.pending_ttl <= 0:
        parser.error(f"--pending-ttl must be positive, got {args.pending_ttl}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    references, registry = ReferenceStore(args.tracking_uri), CollectorRegistry()
    ledger = OutcomeLedger.at(args.feature_repo) if args.feature_repo else None
    service = DriftService(references, registry, args.window_rows, args.min_rows, args.pending_ttl, ledger)
    quality = None
    if ledger is not None:
        quality = QualityMonitor(ledger, references.facts, registry, window=args.quality_window)
    app = create_app(service, args.compute_interval, quality, token, args.unlabelled_retention_days)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    raise SystemExit(main())
