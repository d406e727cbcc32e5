"""Metric names, defined once: the predictor exports them; alert rules, dashboards and rollout gates
query them. Base units, `_total` / `_seconds` suffixes, labels with small fixed value sets.

Labels: `model` (registered model name), `version` (registered version being served), `role`
(`champion` | `canary`), `outcome` (`ok` | `invalid` (a 4xx: the client's mistake) | `error` (a 5xx)).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

REQUESTS_TOTAL = "shepherd_predictor_requests_total"
REQUEST_DURATION_SECONDS = "shepherd_predictor_request_duration_seconds"
PREDICTION_SCORE = "shepherd_predictor_prediction_score"
ROWS_TOTAL = "shepherd_predictor_rows_total"

OUTCOMES = ("ok", "invalid", "error")
ROLES = ("champion", "canary")
LABELS = ("model", "version", "role")

# The drift service (monitoring/drift.py): Evidently over each revision's logged payloads.
# Labels: model, version, role, and `reference` (`training`: the sample stored with the model;
# `champion`: the champion's live window, for the canary only); per-feature scores add `feature`.
DRIFT_SHARE = "shepherd_drift_share"  # share of features whose drift test fired, 0..1
DRIFT_DETECTED = "shepherd_drift_detected"  # 1 when Evidently's dataset drift fires, else 0
DRIFT_FEATURE_SCORE = "shepherd_drift_feature_score"  # Evidently's per-column drift score
DRIFT_WINDOW_ROWS = "shepherd_drift_window_rows"  # rows in the revision's current window
DRIFT_EVENTS_TOTAL = "shepherd_drift_events_total"  # CloudEvents received, by `outcome`
# Request events still waiting for their response (and responses that came before their request).
DRIFT_PENDING_REQUESTS = "shepherd_drift_pending_requests"
# Request events dropped before their response paired them, by `reason`: `error_response` (the request was
# answered with an error: nothing to compare), `expired` (no response within the TTL, or a response whose request
# never came), `overflow` (limits).
DRIFT_PENDING_DISCARDED_TOTAL = "shepherd_drift_pending_discarded_total"
DRIFT_PENDING_REASONS = ("error_response", "expired", "overflow")
DRIFT_REFERENCES = ("training", "champion")

# Live model quality (monitoring/quality.py): logged predictions joined with the labels fed back. Labels: model,
# version, role, and `metric` (a name of components.spec.METRICS, or `positive_rate` (observed share of positive
# labels), `predicted_positive_rate`); a metric the window cannot define (ROC AUC with one class) is absent.
QUALITY = "shepherd_model_quality"
QUALITY_LABELLED_ROWS = "shepherd_model_quality_labelled_rows"  # labelled predictions in the revision's window
QUALITY_LABEL_DELAY_SECONDS = "shepherd_model_label_delay_seconds"  # median prediction -> label time in the window
QUALITY_MINIMUM = "shepherd_model_quality_minimum"  # {model, metric}: the champion spec's evaluation.minimum
QUALITY_MAXIMUM = "shepherd_model_quality_maximum"  # {model, metric}: the champion spec's evaluation.maximum
FEEDBACK_LABELS_TOTAL = "shepherd_feedback_labels_total"  # {model, outcome}: labels received
FEEDBACK_OUTCOMES = ("accepted", "duplicate", "skipped", "rejected")
OUTCOME_LEDGER_FAILURES_TOTAL = "shepherd_outcome_ledger_failures_total"  # predictions the ledger could not record

# The local serving plane (serving/local_plane.py): its router and its payload logger. Its `/metrics` also
# carries every running revision's series, each with a `revision` label added.
PLANE_REQUESTS_TOTAL = "shepherd_plane_requests_total"  # {model, role, outcome}: requests the router answered
PLANE_REVISION_UP = "shepherd_plane_revision_up"  # {revision}: 1 if the revision's /metrics answered this scrape
# {model, version, role}: prediction requests no revision answered (its process was gone or silent), so the
# plane answered 503/504 itself. The rollout's error-rate gate counts them against that revision.
PLANE_UNAVAILABLE_TOTAL = "shepherd_plane_unavailable_total"
PLANE_RESTARTS_TOTAL = "shepherd_plane_restarts_total"  # {component}: a revision or `drift` the plane restarted
# Payload-log CloudEvents the plane did not deliver, by `reason`: `queue_full` (dropped at once: logging
# never slows a prediction) or `undelivered` (the logger URL refused or did not answer).
PLANE_PAYLOAD_EVENTS_DROPPED_TOTAL = "shepherd_plane_payload_events_dropped_total"
PLANE_PAYLOAD_EVENTS_DELIVERED_TOTAL = "shepherd_plane_payload_events_delivered_total"
PLANE_PAYLOAD_DROP_REASONS = ("queue_full", "undelivered")

# The rollout controller (serving/rollout): what each InferenceService's rollout is doing.
ROLLOUT_CANARY_PERCENT = "shepherd_rollout_canary_percent"  # {model}
ROLLOUT_PHASE = "shepherd_rollout_phase"  # {model, phase}: 1 for the current phase, 0 otherwise
ROLLOUT_GATE_VERDICT = "shepherd_rollout_gate_verdict"  # {model, gate, verdict}: 1 for the last verdict
ROLLOUT_TRANSITIONS_TOTAL = "shepherd_rollout_transitions_total"  # {model, action}: step|promote|rollback|...
ROLLOUT_BACKEND_UP = "shepherd_rollout_backend_up"  # 1 if the controller's last call to the serving backend worked
ROLLOUT_BACKEND_FAILURES_TOTAL = "shepherd_rollout_backend_failures_total"  # reconcile passes the backend refused

# Alerts (monitoring/rules.py) carry `shepherd_action`, which the webhook (monitoring/webhook.py) acts on.
ALERT_ACTION_LABEL = "shepherd_action"
ALERT_ACTIONS = ("rollback", "retrain", "none")

# Sub-millisecond ONNX calls up to slow scikit-learn fallbacks.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SCORE_BUCKETS = tuple(round(0.1 * i, 1) for i in range(1, 11))  # probabilities (components.model_output)


class BatchHistogram(Collector):
    """A Prometheus histogram that takes a whole batch of values in one call.

    prometheus-client's Histogram takes one value per `observe` (about 1.5 µs each: 49 µs for the 32
    rows of one request here); this one counts a batch with numpy (about 5 µs) and exports the same
    `_bucket{le}` (cumulative), `_count` and `_sum` series as that Histogram (no `_created`)."""

    def __init__(self, name: str, documentation: str, labelnames, buckets, registry: CollectorRegistry):
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self.bounds = np.array([*buckets, math.inf], dtype=np.float64)
        self._children: dict[tuple[str, ...], _BatchHistogramChild] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def labels(self, **labels: str) -> _BatchHistogramChild:
        key = tuple(str(labels[n]) for n in self.labelnames)
        with self._lock:
            return self._children.setdefault(key, _BatchHistogramChild(self.bounds))

    def describe(self):
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self):
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        with self._lock:
            children = list(self._children.items())
        for key, child in children:
            counts, total = child.snapshot()
            cumulative = np.cumsum(counts).tolist()
            buckets = [(floatToGoString(b), c) for b, c in zip(self.bounds.tolist(), cumulative, strict=True)]
            family.add_metric(list(key), buckets, total)
        yield family


class _BatchHistogramChild:
    def __init__(self, bounds: np.ndarray):
        self._bounds = bounds
        self._counts = np.zeros(len(bounds), dtype=np.int64)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe_many(self, values) -> None:
        """Count every value: a value on a bucket's upper bound belongs to it (`le`)."""
        values = np.asarray(values, dtype=np.float64)
        counts = np.bincount(np.searchsorted(self._bounds, values, side="left"), minlength=len(self._bounds))
        with self._lock:
            self._counts += counts
            self._sum += float(values.sum())

    def observe(self, value: float) -> None:
        self.observe_many([value])

    def snapshot(self) -> tuple[np.ndarray, float]:
        with self._lock:
            return self._counts.copy(), self._sum


@dataclass
class PredictorMetrics:
    """The predictor's metrics for one served model version, registered in `registry`."""

    requests: Counter
    duration: Histogram
    score: BatchHistogram
    rows: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry, score_buckets: tuple[float, ...] = SCORE_BUCKETS) -> PredictorMetrics:
        """`score_buckets`: the served model's (components.model_output.score_buckets; probabilities by default)."""
        # prometheus-client appends `_total` to counters itself; names above are the exported ones.
        return cls(
            requests=Counter(
                REQUESTS_TOTAL.removesuffix("_total"),
                "Prediction requests by outcome.",
                [*LABELS, "outcome"],
                registry=registry,
            ),
            duration=Histogram(
                REQUEST_DURATION_SECONDS,
                "Time to validate and score one request.",
                LABELS,
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            score=BatchHistogram(
                PREDICTION_SCORE,
                "Per row: the positive-class probability (binary), the predicted class's index in "
                "target.classes (multiclass) or the predicted value (regression).",
                LABELS,
                buckets=score_buckets,
                registry=registry,
            ),
            rows=Counter(ROWS_TOTAL.removesuffix("_total"), "Rows scored.", LABELS, registry=registry),
        )
