"""The model's output contract, per task, in one place: what a model answers, whoever asks it.

- `predict`: a table -> the trained pipeline's answers as the metrics take them: binary the positive
  class's probability per row, multiclass the per-class probabilities (one column per class of
  `target.classes`, in that order), regression the predicted value.
- `output_name` / `graph_answers`: the same answers from the ONNX twin's output.
- `Answers` / `answers`: the answers as served: the predicted class and its probabilities, or the value,
  plus the one number per row that monitoring watches (`score`: the positive-class probability, the
  predicted class's index in `target.classes`, or the predicted value).
- `score_buckets`: the histogram buckets that number is counted in.

Light on imports on purpose (numpy and pandas only): the predictor imports it and must start fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from components.model_input import feature_frame
from components.spec import ModelSpec

if TYPE_CHECKING:
    import pandas as pd

PROBABILITIES_OUTPUT = "probabilities"  # skl2onnx's name for a classifier's per-class probabilities
VALUES_OUTPUT = "variable"  # ... and for a regressor's values
# Buckets of the positive-class probability (binary).
PROBABILITY_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def pipeline_answers(model, rows: pd.DataFrame, spec: ModelSpec) -> np.ndarray:
    """A fitted pipeline's (or a pyfunc-loaded model's) answers for rows already in its input form."""
    if spec.task == "regression":
        return np.asarray(model.predict(rows), dtype=float).reshape(-1)
    proba = np.asarray(model.predict_proba(rows))
    return proba[:, 1] if spec.task == "binary" else proba


def predict(model, frame: pd.DataFrame, spec: ModelSpec) -> np.ndarray:
    """The model's answers for the rows of a table (see the module's docstring)."""
    return pipeline_answers(model, feature_frame(frame, spec), spec)


def output_name(spec: ModelSpec) -> str:
    """The ONNX graph output that holds the answers."""
    return VALUES_OUTPUT if spec.task == "regression" else PROBABILITIES_OUTPUT


def graph_answers(spec: ModelSpec, raw: np.ndarray) -> np.ndarray:
    """The ONNX graph's output -> what `predict` gives for the same rows."""
    if spec.task == "regression":
        return np.asarray(raw).reshape(-1)
    return raw[:, 1] if spec.task == "binary" else raw


@dataclass(frozen=True)
class Answers:
    """A batch's answers as served, one entry per row."""

    score: np.ndarray  # what monitoring watches: P(positive) | index of the predicted class | the value
    labels: list[str] | None = None  # the predicted class (classification)
    probabilities: np.ndarray | None = None  # (rows, classes): a multiclass task's per-class probabilities


def answers(spec: ModelSpec, predictions: np.ndarray) -> Answers:
    """`predict`'s (or `graph_answers`') output -> the served answers."""
    if spec.task == "regression":
        return Answers(np.asarray(predictions, dtype=float))
    if spec.task == "binary":
        threshold = spec.evaluation.decision_threshold
        positive, negative = spec.target.positive, spec.target.negative
        return Answers(predictions, [positive if p >= threshold else negative for p in predictions.tolist()])
    chosen = np.asarray(predictions).argmax(axis=1)
    classes = spec.target.classes
    return Answers(chosen.astype(float), [classes[i] for i in chosen.tolist()], np.asarray(predictions))


def score_of_label(spec: ModelSpec, label: str) -> float | None:
    """A multiclass answer's predicted class -> its score (the class's index), None if not a class."""
    try:
        return float(spec.target.classes.index(label))
    except ValueError:
        return None


def score_buckets(spec: ModelSpec, values: list[float] | None = None) -> tuple[float, ...]:
    """Upper bounds of the score histogram's buckets: probabilities in tenths (binary), one bucket per
    class (multiclass: class i is counted in (i - 0.5, i + 0.5]), and for regression the deciles of the
    training target (`values`, recorded on the version), else ten equal steps over target.min..max."""
    if spec.task == "binary":
        return PROBABILITY_BUCKETS
    if spec.task == "multiclass":
        return tuple(i + 0.5 for i in range(len(spec.target.classes)))
    if values:
        return tuple(sorted({float(v) for v in values}))
    low, high = spec.target.min, spec.target.max
    if low is not None and high is not None and high > low:
        return tuple(float(low + (high - low) * i / 10) for i in range(1, 11))
    return tuple(float(10**e) for e in range(-3, 10))  # no scale known: decades


def training_deciles(values: np.ndarray) -> list[float]:
    """The deciles of a regression target's training values (the score buckets of its versions)."""
    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    if not finite.size:
        return []
    return sorted({round(float(q), 6) for q in np.quantile(finite, np.linspace(0.1, 1.0, 10))})
