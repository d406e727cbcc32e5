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
