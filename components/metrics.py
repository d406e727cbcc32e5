"""The metrics the evaluate gates speak in, per task (names listed in `components.spec.TASK_METRICS`)."""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    brier_score_loss,
    f1_score,
    log_loss,
    mean_absolute_error,
    mean_absolute_percentage_error,
    precision_score,
    r2_score,
    recall_score,
    roc_auc_score,
    root_mean_squared_error,
)

from components.spec import CLASS_RECALL, ModelSpec, class_metric_name

CALIBRATION_BINS = 10


def expected_calibration_error(y_true: np.ndarray, proba: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    """Mean |observed rate - predicted probability| over equal-width bins, weighted by bin size."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(proba, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            total += in_bin.sum() * abs(y_true[in_bin].mean() - proba[in_bin].mean())
    return float(total / len(proba))


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, threshold: float) -> dict[str, float]:
    """Every metric of `components.spec.METRICS` for positive-class probabilities `proba`. ROC AUC is NaN
    when `y_true` holds one class only (it ranks positives against negatives: undefined without both)."""
    y_true = np.asarray(y_true)
    proba = np.clip(np.asarray(proba, dtype=float), 1e-15, 1 - 1e-15)
    predicted = (proba >= threshold).astype(int)
    return {
        "roc_auc": float(roc_auc_score(y_true, proba)) if len(np.unique(y_true)) == 2 else math.nan,
        "f1": float(f1_score(y_true, predicted, zero_division=0)),
        "accuracy": float(accuracy_score(y_true, predicted)),
        "precision": float(precision_score(y_true, predicted, zero_division=0)),
        "recall": float(recall_score(y_true, predicted, zero_division=0)),
        "log_loss": float(log_loss(y_true, proba, labels=[0, 1])),
        "brier": float(brier_score_loss(y_true, proba)),
        "ece": expected_calibration_error(y_true, proba),
    }


def multiclass_metrics(y_true: np.ndarray, proba: np.ndarray, classes: list[str]) -> dict[str, float]:
    """Accuracy, macro F1, balanced accuracy, log loss and `recall.<class>` per class, for class indices
    `y_true` and per-class probabilities `proba` (one column per class of `classes`, in that order). A
    class absent from `y_true` has no recall (NaN)."""
    proba = np.asarray(proba, dtype=float)
    metrics = class_choice_metrics(y_true, proba.argmax(axis=1), classes)
    metrics["log_loss"] = float(log_loss(y_true, np.clip(proba, 1e-15, 1.0), labels=list(range(len(classes)))))
    return metrics


def class_choice_metrics(y_true: np.ndarray, predicted: np.ndarray, classes: list[str]) -> dict[str, float]:
    """The multiclass metrics that need only the predicted classes (indices): all but the log loss."""
    y_true, predicted = np.asarray(y_true, dtype=int), np.asarray(predicted, dtype=int)
    indices = list(range(len(classes)))
    recalls = recall_score(y_true, predicted, labels=indices, average=None, zero_division=0)
    present = np.isin(indices, y_true)
    metrics = {
        "accuracy": float(accuracy_score(y_true, predicted)),
        "macro_f1": float(f1_score(y_true, predicted, labels=indices, average="macro", zero_division=0)),
        "balanced_accuracy": float(recalls[present].mean()) if present.any() else math.nan,
    }
    for index, name in enumerate(classes):
        metrics[CLASS_RECALL + class_metric_name(name)] = float(recalls[index]) if present[index] else math.nan
    return metrics


def regression_metrics(y_true: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """RMSE, MAE, R² and MAPE (NaN where a true value is 0: undefined there) for predicted values."""
    y_true = np.asarray(y_true, dtype=float)
    predicted = np.asarray(predicted, dtype=float)
    return {
        "rmse": float(root_mean_squared_error(y_true, predicted)),
        "mae": float(mean_absolute_error(y_true, predicted)),
        "r2": float(r2_score(y_true, predicted)) if len(y_true) > 1 else math.nan,
        "mape": float(mean_absolute_percentage_error(y_true, predicted)) if np.all(y_true != 0) else math.nan,
    }


def task_metrics(spec: ModelSpec, y_true: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """Every metric of the spec's task for `predictions` as `components.train.predict` gives them
    (binary: positive-class probabilities; multiclass: per-class probabilities; regression: values)."""
    if spec.task == "binary":
        return classification_metrics(y_true, predictions, spec.evaluation.decision_threshold)
    if spec.task == "multiclass":
        return multiclass_metrics(y_true, predictions, spec.target.classes)
    return regression_metrics(y_true, predictions)
