"""What the rollout tests share: a spec whose rollout moves in one-second steps, a fresh registry holding
version 1 (@champion) and a challenger version 2 trained from it, and on a cluster without Prometheus, the
answers Prometheus would give."""

from __future__ import annotations

from pathlib import Path

import yaml

from components.spec import ModelSpec, parse_spec
from pipelines.direct import train_and_register
from serving.rollout.gates import Window
from serving.rollout.providers import DriftReading, Measurement


def fast_rollout_spec(spec: ModelSpec, gates: dict | None = None, **deployment) -> ModelSpec:
    """`spec` with steps 10 -> 50 -> 100 %, one-second intervals and `deployment` overrides (steps too); `gates`
    replaces the spec's gates when given."""
    data = yaml.safe_load(spec.to_yaml())
    data["deployment"].update({"canary_steps": [10, 50, 100], "interval_seconds": 1, **deployment})
    if gates is not None:
        data["deployment"]["gates"] = gates
    return parse_spec(yaml.safe_dump(data))


def champion_and_challenger(spec: ModelSpec, frame, home: Path) -> str:
    """A registry under `home` with v1 @champion and v2 (C=0.5) @challenger; its tracking URI."""
    uri = f"sqlite:///{home / 'mlflow.db'}"
    assert train_and_register(spec, frame, uri, home).alias == "champion"
    data = yaml.safe_load(spec.to_yaml())
    data["training"]["params"]["C"] = 0.5
    assert train_and_register(parse_spec(yaml.safe_dump(data)), frame, uri, home, "v2").alias == "challenger"
    return uri


BUCKETS = ((0.005, 90.0), (0.01, 100.0), (float("inf"), 100.0))


class PrometheusAnswers:
    """What Prometheus would answer for the interval (the process edge the test controls)."""

    def __init__(self):
        self.errors = 0.0

    def measure(self, model, revisions, interval_seconds, baseline):
        return Measurement(Window(100.0, self.errors, BUCKETS), Window(900.0, 0.0, BUCKETS))

    def drift(self, model, canary_version):
        return DriftReading(0.05, 0.01)
