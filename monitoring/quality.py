"""Live model quality: logged predictions joined with the labels that came back, per model, version and role.

For each (model, role) the revision serving it now (the version of its latest labelled prediction) is
scored over its latest `window` labelled predictions with the evaluate step's own metrics
(`components/metrics.py`: ROC AUC, log loss, Brier, calibration error, F1, ...), plus the observed and
predicted positive rates, the number of labelled rows and the median label delay. Gauges (names in
`monitoring/metrics.py`) carry them to Prometheus, with the champion spec's `evaluation.minimum` and
`maximum` beside them so one alert rule compares every model with its own floors.

The feedback API lives here too (`add_routes`): `POST /models/<model>/feedback` records labels in the
outcome ledger (`components/outcomes.py`), `GET /models/<model>/quality` answers the latest scores.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

# Module level: FastAPI resolves the handlers' (string) annotations in this module's globals.
from fastapi import Request
from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy.exc import SQLAlchemyError

from components.metrics import class_choice_metrics, classification_metrics, regression_metrics
from components.outcomes import FeedbackRejected, OutcomeLedger, TargetValues, parse_feedback
from monitoring.metrics import (
    FEEDBACK_LABELS_TOTAL,
    QUALITY,
    QUALITY_LABEL_DELAY_SECONDS,
    QUALITY_LABELLED_ROWS,
    QUALITY_MAXIMUM,
    QUALITY_MINIMUM,
    ROLES,
)

logger = logging.getLogger("shepherd.quality")

DEFAULT_WINDOW = 1000  # labelled predictions per revision
DEFAULT_MAX_AGE_SECONDS = 7 * 24 * 3600  # predictions older than this are not live quality any more


@dataclass(frozen=True)
class SpecFacts:
    """What quality needs from a version's spec."""

    target: TargetValues
    decision_threshold: float
    minimum: dict[str, float]
    maximum: dict[str, float]

    @classmethod
    def of(cls, spec) -> SpecFacts:
        rules = spec.evaluation
        return cls(TargetValues.of(spec), rules.decision_threshold, dict(rules.minimum), dict(rules.maximum))


@dataclass(frozen=True)
class RevisionQuality:
    model: str
    version: str
    role: str
    labelled_rows: int
    metrics: dict[str, float]  # metric name -> value; a metric the window cannot define is absent
    label_delay_seconds: float
    computed_at: float
    minimum: dict[str, float] = field(default_factory=dict)  # the version's spec: evaluation.minimum
    maximum: dict[str, float] = field(default_factory=dict)  # ... and evaluation.maximum

    def broken_bounds(self) -> list[str]:
        """Each bound of the spec the live metrics break, in words (a metric the window lacks breaks none)."""
        broken = []
        for metric, bound in sorted(self.minimum.items()):
            if self.metrics.get(metric, bound) < bound:
                broken.append(f"{metric} {self.metrics[metric]:.3f} < minimum {bound:g}")
        for metric, bound in sorted(self.maximum.items()):
            if self.metrics.get(metric, bound) > bound:
                broken.append(f"{metric} {self.metrics[metric]:.3f} > maximum {bound:g}")
        return broken


def score_window(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """The evaluate step's metrics over joined rows (labels 0/1, scores = predicted probabilities), plus
    the observed and predicted positive rates. ROC AUC needs both classes: absent otherwise."""
    labels = np.asarray(labels, dtype=int)
    scores = np.asarray(scores, dtype=float)
    if len(labels) == 0:
        return {}
    metrics = {k: v for k, v in classification_metrics(labels, scores, threshold).items() if math.isfinite(v)}
    metrics["positive_rate"] = float(labels.mean())
    metrics["predicted_positive_rate"] = float((scores >= threshold).mean())
    return metrics


def live_metrics(facts: SpecFacts, labels: pd.Series, scores: np.ndarray) -> dict[str, float]:
    """The live metrics of joined rows (labels as the ledger keeps them, scores as the predictor served
    them), per task: binary `score_window`; multiclass the metrics of the predicted classes (accuracy,
    macro F1, balanced accuracy, recall per class: the log loss needs probabilities the ledger does not
    keep); regression RMSE, MAE, R², MAPE. A metric the window cannot define is absent."""
    target = facts.target
    if target.numeric:
        metrics = regression_metrics(labels.astype(float).to_numpy(), scores)
    elif target.classes is not None:
        index = {name: i for i, name in enumerate(target.classes)}
        metrics = class_choice_metrics(labels.map(index).to_numpy(dtype=int), scores, list(target.classes))
    else:
        return score_window((labels == target.positive).to_numpy(dtype=int), scores, facts.decision_threshold)
    return {name: value for name, value in metrics.items() if math.isfinite(value)} if len(labels) else {}


class QualityMonitor:
    """Scores each served revision on its labelled predictions and exports the gauges."""

    def __init__(
        self,
        ledger: OutcomeLedger,
        spec_of: Callable[[str, str], SpecFacts],
        registry: CollectorRegistry,
        window: int = DEFAULT_WINDOW,
        max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS,
    ):
        if window < 1:
            raise ValueError(f"window: must be at least 1, got {window}")
        self.ledger = ledger
        self.spec_of = spec_of
        self.window = window
        self.max_age_seconds = max_age_seconds
        self.results: dict[tuple[str, str], RevisionQuality] = {}  # (model, role)
        self._bounds: dict[tuple[int, str], set[str]] = {}  # (gauge, model) -> metrics exported
        self._lock = threading.Lock()
        revision = ["model", "version", "role"]
        self.quality = Gauge(
            QUALITY,
            "Model quality over the revision's latest labelled predictions.",
            [*revision, "metric"],
            registry=registry,
        )
        self.labelled_rows = Gauge(
            QUALITY_LABELLED_ROWS, "Labelled predictions in the quality window.", revision, registry=registry
        )
        self.label_delay = Gauge(
            QUALITY_LABEL_DELAY_SECONDS,
            "Median time from prediction to label in the window.",
            revision,
            registry=registry,
        )
        self.minimum = Gauge(
            QUALITY_MINIMUM, "The champion spec's evaluation.minimum.", ["model", "metric"], registry=registry
        )
        self.maximum = Gauge(
            QUALITY_MAXIMUM, "The champion spec's evaluation.maximum.", ["model", "metric"], registry=registry
        )
        labels_total = Counter(
            FEEDBACK_LABELS_TOTAL.removesuffix("_total"),
            "Feedback labels received, by outcome.",
            ["model", "outcome"],
            registry=registry,
        )
        self.labels_total = labels_total

    # -- feedback -------------------------------------------------------------------------------
    def record_feedback(self, model: str, body: object, skip_unknown: bool = False):
        """Parse and record one feedback body (see `components.outcomes.parse_feedback`)."""
        try:
            items = parse_feedback(body)
            receipt = self.ledger.record_feedback(
                model, items, lambda version: self.spec_of(model, version).target, skip_unknown=skip_unknown
            )
        except FeedbackRejected as exc:
            self.labels_total.labels(model, "rejected").inc(max(len(exc.errors), 1))
            raise
        self.labels_total.labels(model, "accepted").inc(receipt.accepted)
        self.labels_total.labels(model, "duplicate").inc(receipt.duplicates)
        self.labels_total.labels(model, "skipped").inc(len(receipt.skipped))
        return receipt

    # -- computation ----------------------------------------------------------------------------
    def compute(self, now: float | None = None) -> list[RevisionQuality]:
        """Score every model's served revisions; returns the new results."""
        now = time.time() if now is None else now
        results = []
        for model in self.ledger.models():
            results.extend(self.compute_model(model, now))
        return results

    def compute_model(self, model: str, now: float | None = None) -> list[RevisionQuality]:
        """Score the version serving each role now (the version of the role's latest prediction, so a
        promotion moves the champion's series at once) on its latest labelled predictions; a role whose
        version has no labels yet has no series."""
        now = time.time() if now is None else now
        serving = self.ledger.serving_versions(model, ROLES)
        found: list[RevisionQuality] = []
        for role in ROLES:
            version = serving.get(role)
            rows = None
            if version is not None:
                rows = self.ledger.labelled(
                    model,
                    since=now - self.max_age_seconds,
                    versions=[version],
                    role=role,
                    latest=self.window,
                    features=False,
                )
            if rows is None or rows.empty:
                self._drop(model, role)
                continue
            facts = self.spec_of(model, version)
            metrics = live_metrics(facts, rows["label"], rows["score"].to_numpy(dtype=float))
            delay = float(np.median(rows["labelled_at"].to_numpy(float) - rows["predicted_at"].to_numpy(float)))
            result = RevisionQuality(
                model, version, role, len(rows), metrics, max(delay, 0.0), now, dict(facts.minimum), dict(facts.maximum)
            )
            self._export(result)
            if role == "champion":
                self._export_bounds(model, facts)
            found.append(result)
        return found

    def _drop(self, model: str, role: str) -> None:
        with self._lock:
            before = self.results.pop((model, role), None)
            if before is not None:
                self._remove(before, keep_version=False, now={})

    def _export(self, result: RevisionQuality) -> None:
        key = (result.model, result.role)
        with self._lock:
            before = self.results.get(key)
            if before is not None:
                self._remove(before, keep_version=before.version == result.version, now=result.metrics)
            self.results[key] = result
        labels = (result.model, result.version, result.role)
        for metric, value in result.metrics.items():
            if math.isfinite(value):
                self.quality.labels(*labels, metric).set(value)
        self.labelled_rows.labels(*labels).set(result.labelled_rows)
        self.label_delay.labels(*labels).set(result.label_delay_seconds)

    def _remove(self, before: RevisionQuality, keep_version: bool, now: dict[str, float]) -> None:
        """Drop the series a new result does not carry (another version, a metric no longer defined)."""
        labels = (before.model, before.version, before.role)
        for metric in before.metrics:
            if keep_version and metric in now:
                continue
            with contextlib.suppress(KeyError):
                self.quality.remove(*labels, metric)
        if not keep_version:
            for gauge in (self.labelled_rows, self.label_delay):
                with contextlib.suppress(KeyError):
                    gauge.remove(*labels)

    def _export_bounds(self, model: str, facts: SpecFacts) -> None:
        """The champion spec's bounds; a bound the new champion's spec dropped stops being enforced."""
        for gauge, bounds in ((self.minimum, facts.minimum), (self.maximum, facts.maximum)):
            exported = self._bounds.setdefault((id(gauge), model), set())
            for metric in exported - set(bounds):
                with contextlib.suppress(KeyError):
                    gauge.remove(model, metric)
            for metric, value in bounds.items():
                gauge.labels(model, metric).set(value)
            exported.clear()
            exported.update(bounds)

    def latest(self, model: str) -> list[dict]:
        with self._lock:
            return [asdict(r) for (m, _), r in self.results.items() if m == model]


def feedback_allowed(token: str | None, authorization: str | None) -> bool:
    """A configured token must be presented as `Authorization: Bearer <token>`."""
    if not token:
        return True
    return hmac.compare_digest((authorization or "").encode(), f"Bearer {token}".encode())


def add_routes(app, monitor: QualityMonitor | None, token: str | None, json_response) -> None:
    """`POST /models/<model>/feedback` and `GET /models/<model>/quality` on the monitoring service's app."""

    def unconfigured():
        return json_response(
            {"error": "feedback: this service has no outcome ledger; start it with --feature-repo"}, status_code=503
        )

    def _ledger_unavailable(exc: Exception, then: str):
        logger.error("the outcome ledger failed: %s", exc)
        return json_response(
            {"error": f"the outcome ledger is unavailable ({type(exc).__name__}); {then}"},
            status_code=503,
            headers={"Retry-After": "5"},
        )

    @app.post("/models/{model}/feedback")
    async def feedback(model: str, request: Request):
        if not feedback_allowed(token, request.headers.get("authorization")):
            return json_response(
                {"error": "authorization: a valid bearer token is required"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        if monitor is None:
            return unconfigured()
        try:
            body = json.loads(await request.body())
        except (ValueError, RecursionError) as exc:
            return json_response({"error": f"body: not JSON ({exc})"}, status_code=400)
        skip = request.query_params.get("skip_unknown", "false").lower() in ("1", "true", "yes")
        try:
            receipt = await asyncio.to_thread(monitor.record_feedback, model, body, skip)
        except FeedbackRejected as exc:
            return json_response({"error": str(exc), "errors": exc.errors, "hint": exc.hint}, status_code=422)
        except LookupError as exc:  # the model or its version is not in the registry
            return json_response({"error": f"model: {exc}"}, status_code=404)
        except SQLAlchemyError as exc:  # our database, not the client's mistake: send again later
            return _ledger_unavailable(exc, "nothing was recorded; send the labels again")
        return json_response(
            {"accepted": receipt.accepted, "duplicates": receipt.duplicates, "skipped": len(receipt.skipped)}
        )

    @app.get("/models/{model}/quality")
    async def quality(model: str):
        if monitor is None:
            return unconfigured()
        try:
            counts = await asyncio.to_thread(monitor.ledger.counts, model)
        except SQLAlchemyError as exc:
            return _ledger_unavailable(exc, "try again later")
        return json_response({"model": model, **counts, "window": monitor.window, "revisions": monitor.latest(model)})
