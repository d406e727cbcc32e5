"""BatchHistogram exports what prometheus-client's Histogram exports for the same values."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from monitoring.metrics import LABELS, PREDICTION_SCORE, SCORE_BUCKETS, BatchHistogram, PredictorMetrics


def series(registry: CollectorRegistry) -> dict[tuple, float]:
    """(sample name, sorted labels) -> value, from the text exposition, without `_created`."""
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_batch_histogram_exports_the_same_series_as_prometheus_clients_histogram():
    rng = np.random.default_rng(7)
    # Random scores, and values exactly on bucket bounds (a value on a bound belongs to that bucket).
    batches = [rng.random(32), np.array([0.0, 0.1, 0.5, 1.0]), rng.random(1), np.array([0.3, 0.30000001, 0.7])]
    labels = {"model": "churn", "version": "3", "role": "canary"}

    reference_registry, batch_registry = CollectorRegistry(), CollectorRegistry()
    reference = Histogram(PREDICTION_SCORE, "doc", LABELS, buckets=SCORE_BUCKETS, registry=reference_registry)
    batched = BatchHistogram(PREDICTION_SCORE, "doc", LABELS, buckets=SCORE_BUCKETS, registry=batch_registry)
    for values in batches:
        for value in values:
            reference.labels(**labels).observe(float(value))
        batched.labels(**labels).observe_many(values)
    batched.labels(**labels).observe(0.25)
    reference.labels(**labels).observe(0.25)

    expected = series(reference_registry)
    assert series(batch_registry) == pytest.approx(expected)
    count = expected[(f"{PREDICTION_SCORE}_count", tuple(sorted(labels.items())))]
    assert count == 32 + 4 + 1 + 3 + 1


def test_batch_histogram_keeps_label_sets_apart_and_registers_once():
    registry = CollectorRegistry()
    metrics = PredictorMetrics.create(registry)
    metrics.score.labels(model="churn", version="1", role="champion").observe_many([0.2, 0.9])
    metrics.score.labels(model="churn", version="2", role="canary").observe_many([0.95])
    exported = series(registry)

    def sample(suffix: str, **labels: str) -> float:
        return exported[(f"{PREDICTION_SCORE}_{suffix}", tuple(sorted(labels.items())))]

    assert sample("count", model="churn", version="1", role="champion") == 2
    assert sample("count", model="churn", version="2", role="canary") == 1
    assert sample("bucket", model="churn", version="2", role="canary", le="0.9") == 0
    assert sample("bucket", model="churn", version="2", role="canary", le="1.0") == 1
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        BatchHistogram(PREDICTION_SCORE, "again", LABELS, buckets=SCORE_BUCKETS, registry=registry)
