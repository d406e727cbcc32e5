"""Metric names, defined once: the predictor exports them; alert rules, dashboards and rollout gates
query them. Base units, `_total` / `_seconds` suffixes, labels with small fixed value sets.

Labels: `model` (registered model name), `version` (registered version being served), `role`
(`champion` | `canary`), `outcome` (`ok` | `invalid` (a 4xx: the client's mistake) | `error` (a 5xx)).
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

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
DRIFT_REFERENCES = ("training", "champion")

# The rollout controller (serving/rollout): what each InferenceService's rollout is doing.
ROLLOUT_CANARY_PERCENT = "shepherd_rollout_canary_percent"  # {model}
ROLLOUT_PHASE = "shepherd_rollout_phase"  # {model, phase}: 1 for the current phase, 0 otherwise
ROLLOUT_GATE_VERDICT = "shepherd_rollout_gate_verdict"  # {model, gate, verdict}: 1 for the last verdict
ROLLOUT_TRANSITIONS_TOTAL = "shepherd_rollout_transitions_total"  # {model, action}: step|promote|rollback|...

# Alerts (monitoring/rules.py) carry `shepherd_action`, which the webhook (monitoring/webhook.py) acts on.
ALERT_ACTION_LABEL = "shepherd_action"
ALERT_ACTIONS = ("rollback", "retrain", "none")

# Sub-millisecond ONNX calls up to slow scikit-learn fallbacks.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SCORE_BUCKETS = tuple(round(0.1 * i, 1) for i in range(1, 11))


@dataclass
class PredictorMetrics:
    """The predictor's metrics for one served model version, registered in `registry`."""

    requests: Counter
    duration: Histogram
    score: Histogram
    rows: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> PredictorMetrics:
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
            score=Histogram(
                PREDICTION_SCORE,
                "Predicted probability of the positive class, per row.",
                LABELS,
                buckets=SCORE_BUCKETS,
                registry=registry,
            ),
            rows=Counter(ROWS_TOTAL.removesuffix("_total"), "Rows scored.", LABELS, registry=registry),
        )
