"""Sending real rows to a served model: for the demo, smoke checks and watching a canary split."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from components.model_input import feature_frame
from components.spec import ModelSpec


def instances(spec: ModelSpec, frame: pd.DataFrame) -> list[dict]:
    """Rows as V1 instances: the spec's features, missing values as null."""
    rows = json.loads(feature_frame(frame, spec).to_json(orient="records"))
    for row in rows:
        for f in spec.features:
            value = row[f.name]
            if (value == "" and f.type == "category") or (isinstance(value, float) and np.isnan(value)):
                row[f.name] = None
    return rows


def v2_request(spec: ModelSpec, rows: list[dict]) -> dict:
    """V1 instances (as `instances` makes them) as one V2 request: a tensor of shape [n] per feature, BYTES for
    categories and FP64 for numbers, missing values as null."""
    inputs = [
        {
            "name": f.name,
            "shape": [len(rows)],
            "datatype": "BYTES" if f.type == "category" else "FP64",
            "data": [row[f.name] for row in rows],
        }
        for f in spec.features
    ]
    return {"inputs": inputs}


@dataclass
class TrafficReport:
    """What `send` saw: answers per revision and per status, and what was predicted."""

    by_revision: Counter = field(default_factory=Counter)
    by_status: Counter = field(default_factory=Counter)
    predicted: Counter = field(default_factory=Counter)  # classification: answers per predicted class
    values: list[float] = field(default_factory=list)  # regression: the predicted values
    answered: list[tuple[str, int]] = field(default_factory=list)  # (prediction id, index into the rows sent)


def send(url: str, spec: ModelSpec, rows: list[dict], requests: int, batch: int = 1) -> TrafficReport:
    """POST `requests` V1 requests of `batch` rows (cycling through `rows`) to `url`'s router."""
    import httpx

    report = TrafficReport()
    with httpx.Client(base_url=url, timeout=30) as client:
        for i in range(requests):
            start = (i * batch) % len(rows)
            body = {"instances": (rows[start:] + rows)[:batch]}
            response = client.post(f"/v1/models/{spec.name}:predict", json=body)
            report.by_status[response.status_code] += 1
            report.by_revision[response.headers.get("x-shepherd-revision", "?")] += 1
            if response.status_code == 200:
                predictions = response.json()["predictions"]
                if spec.task == "regression":
                    report.values += [p["value"] for p in predictions]
                else:
                    report.predicted.update(p["label"] for p in predictions)
                report.answered += [(p["id"], (start + j) % len(rows)) for j, p in enumerate(predictions)]
    return report


def describe_predictions(spec: ModelSpec, report: TrafficReport) -> str:
    """What the answers predicted, in words: counts per class, or the predicted values' range."""
    if spec.task == "regression":
        if not report.values:
            return "no predicted values"
        values = np.asarray(report.values)
        return f"predicted values: median {np.median(values):,.4g}, from {values.min():,.4g} to {values.max():,.4g}"
    order = spec.target.values if spec.task == "multiclass" else [spec.target.positive, spec.target.negative]
    return "predicted " + ", ".join(f"{name!r}: {report.predicted.get(name, 0)}" for name in order)
