"""Training: a scikit-learn pipeline (preprocessing + estimator) built from the spec.

`fit` is deterministic for a given training set and spec (fixed seed, stable holdout split), which
is what lets `shepherd reproduce` retrain a version and get the recorded metrics back.
"""

import importlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from kfp import dsl
from sklearn.base import is_classifier, is_regressor
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.utils import get_tags

from components.adapter import step
from components.data import holdout_mask, labels, recent_holdout_mask
from components.errors import SpecError
from components.metrics import task_metrics
from components.model_input import feature_frame
from components.model_output import predict, training_deciles
from components.spec import EVENT_TIMESTAMP, ModelSpec

HEADLINE_METRICS = {"binary": ("roc_auc", "f1"), "multiclass": ("accuracy", "macro_f1"), "regression": ("rmse", "r2")}

SCALE_SENSITIVE = frozenset({"logistic_regression", "linear_regression"})

CLASSIFIERS = {
    "logistic_regression": LogisticRegression,
    "hist_gradient_boosting": HistGradientBoostingClassifier,
    "random_forest": RandomForestClassifier,
}
REGRESSORS = {
    "linear_regression": Ridge,  # L2-regularised least squares: `alpha` in params (0 for plain least squares)
    "hist_gradient_boosting": HistGradientBoostingRegressor,
    "random_forest": RandomForestRegressor,
}


def build_pipeline(spec: ModelSpec) -> Pipeline:
    """Imputation, scaling and one-hot encoding per the spec's feature types, then the estimator.

    The one-hot block is sparse only for scikit-learn's own estimators that accept sparse input: with many
    categories (density under the ColumnTransformer's `sparse_threshold`) the whole output would turn
    sparse, which e.g. HistGradientBoostingClassifier refuses. A dense one-hot block keeps it dense. Other
    estimators always get dense input: XGBoost and LightGBM read a sparse matrix's absent entries as
    *missing*, not 0, so a model fitted on it takes other branches than its ONNX twin fed dense zeros
    (found on the ames example: relative error 1.7, not parity).
    """
    estimator = _estimator(spec)
    dense = not (_accepts_sparse(estimator) and type(estimator).__module__.startswith("sklearn."))
    numeric = [f.name for f in spec.features if f.type != "category"]
    categorical = [f for f in spec.features if f.type == "category"]
    numeric_steps = [("impute", SimpleImputer(strategy="median"))]
    if spec.training.algorithm in SCALE_SENSITIVE:
        # Trees split on raw values; scaling them only adds float32 rounding in the ONNX export.
        numeric_steps.append(("scale", StandardScaler()))
    preprocess = ColumnTransformer(
        [
            (
                "numeric",
                Pipeline(numeric_steps),
                numeric,
            ),
            (
                "categorical",
                # Missing categories arrive as MISSING_CATEGORY, which no spec lists: one-hot all zeros.
                # (No imputer here: skl2onnx converts string imputation only for string sentinels.)
                OneHotEncoder(
                    categories=[f.categories for f in categorical], handle_unknown="ignore", sparse_output=not dense
                ),
                [f.name for f in categorical],
            ),
        ]
    )
    return Pipeline([("preprocess", preprocess), ("model", estimator)])


class EstimatorNotImportable(SpecError):
    """`training.estimator` names a module or class this Python cannot import."""


def estimator_class(spec: ModelSpec) -> type:
    """The class the spec names: a built-in algorithm, or `training.estimator` imported ("module:Class")."""
    if spec.training.algorithm is not None:
        return (REGRESSORS if spec.task == "regression" else CLASSIFIERS)[spec.training.algorithm]
    module_name, _, class_name = spec.training.estimator.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise EstimatorNotImportable(
            f"training.estimator: cannot import {module_name!r} ({exc}); install the package where the pipeline "
            "runs (the venv, or the image the steps run in) or fix the module path"
        ) from exc
    found = getattr(module, class_name, None)
    if not isinstance(found, type):
        raise EstimatorNotImportable(f"training.estimator: module {module_name!r} has no class {class_name!r}")
    return found


def _estimator(spec: ModelSpec):
    """The spec's estimator with its params (and the spec's seed, where the estimator takes one); an own
    estimator must be a scikit-learn-compatible classifier with predict_proba, or a regressor for a
    regression task."""
    estimator_cls = estimator_class(spec)
    name = spec.training.estimator_name
    params = dict(spec.training.params)
    try:
        defaults = estimator_cls().get_params()
    except Exception as exc:  # an own class: anything may go wrong in its constructor
        raise SpecError(
            f"training.estimator: {name} is not a scikit-learn-compatible estimator (no get_params: "
            f"{type(exc).__name__}: {exc})"
        ) from exc
    if "random_state" in defaults:
        params.setdefault("random_state", spec.training.seed)
    try:
        estimator = estimator_cls(**params)
    except TypeError as exc:
        raise SpecError(
            f"training.params {sorted(spec.training.params)} do not fit {name}: {exc}; allowed: {sorted(defaults)}"
        ) from exc
    if spec.task == "regression":
        if not (is_regressor(estimator) and callable(getattr(estimator, "predict", None))):
            raise SpecError(
                f"training.estimator: {name} is not a regressor; a regression task needs predicted values "
                "(a scikit-learn regressor, e.g. xgboost:XGBRegressor)"
            )
    elif not (is_classifier(estimator) and callable(getattr(estimator, "predict_proba", None))):
        raise SpecError(
            f"training.estimator: {name} is not a classifier with predict_proba; a {spec.task} task needs "
            "class probabilities (a scikit-learn classifier, e.g. xgboost:XGBClassifier)"
        )
    return estimator


def _accepts_sparse(estimator) -> bool:
    try:
        return get_tags(estimator).input_tags.sparse
    except Exception:  # an estimator without scikit-learn's tags: give it dense input
        return False


def split(frame: pd.DataFrame, spec: ModelSpec) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, holdout): the most recent rows (`holdout_by: time`, ties by the entity-key hash) or the
    stable entity-key hash alone (`holdout_by: entity`)."""
    rules = spec.training
    if rules.holdout_by == "time":
        # A frame without timestamps holds rows observed at one time: the hash orders them all.
        stamps = frame[EVENT_TIMESTAMP] if EVENT_TIMESTAMP in frame else pd.Series(0, index=frame.index)
        mask = recent_holdout_mask(stamps, frame[spec.entity.key], rules.holdout_fraction, rules.seed)
    else:
        mask = holdout_mask(frame[spec.entity.key], rules.holdout_fraction, rules.seed)
    return frame[~mask].reset_index(drop=True), frame[mask].reset_index(drop=True)


@dataclass
class TrainedModel:
    pipeline: Pipeline
    metrics: dict[str, float]
    train_rows: int
    holdout: pd.DataFrame

    @property
    def holdout_rows(self) -> int:
        return len(self.holdout)


def fit(frame: pd.DataFrame, spec: ModelSpec) -> TrainedModel:
    """Fit on the training side of the split and score the holdout."""
    train, holdout = split(frame, spec)
    pipeline = build_pipeline(spec)
    y = labels(train, spec)
    _check_labels(y, spec)
    try:
        pipeline.fit(feature_frame(train, spec), y)
    except (TypeError, ValueError) as exc:
        # The rows passed validation; what an estimator refuses here is almost always a parameter value.
        raise SpecError(
            f"training.params: {spec.training.estimator_name} failed to fit with {spec.training.params} "
            f"({type(exc).__name__}: {str(exc)[:300]})"
        ) from exc
    metrics = task_metrics(spec, labels(holdout, spec), predict(pipeline, holdout, spec))
    return TrainedModel(pipeline, metrics, len(train), holdout)


def _check_labels(y: np.ndarray, spec: ModelSpec) -> None:
    """The training rows' target must be usable (validation checks the source first; this guards a direct
    call): a number for regression; every listed class present for multiclass, since the model's
    probability columns are the classes it saw."""
    from components.errors import DataValidationError

    column = spec.target.column
    problem = None
    if spec.task == "regression":
        if not np.isfinite(y).all():
            problem = f"target.column {column!r}: {int((~np.isfinite(y)).sum())} values are not numbers"
    elif (y < 0).any():
        problem = f"target.column {column!r}: values outside {spec.target.values}"
    else:
        missing = [name for i, name in enumerate(spec.target.values) if not (y == i).any()]
        if missing:
            problem = (
                f"target.classes: {missing} have no rows in the training set ({len(y)} rows); every listed "
                "class needs training rows, or leave it out of target.classes"
            )
    if problem is not None:
        raise DataValidationError(problem, failures=[problem])


def predict_positive(model, frame: pd.DataFrame, spec: ModelSpec) -> np.ndarray:
    """Probability of the positive class for each row (a binary task)."""
    return np.asarray(model.predict_proba(feature_frame(frame, spec)))[:, 1]


@dataclass
class TrainingRun:
    run_id: str
    model_uri: str
    metrics: dict[str, float]
    serving_note: str
    onnx: bool


def train_and_log(spec: ModelSpec, training_set_path: Path, tracking_uri: str, lineage: dict[str, str]) -> TrainingRun:
    """Fit, then log params, holdout metrics, the model, the spec and the content-addressed training
    snapshot to one MLflow run."""
    import mlflow
    from mlflow.models import infer_signature

    from components import registry

    frame = pd.read_parquet(training_set_path)
    trained = fit(frame, spec)
    client = registry.connect(tracking_uri)
    experiment = registry.experiment_id(client, spec.name, tracking_uri)
    snapshot_sha = registry.sha256_file(training_set_path)
    inputs = feature_frame(frame.head(5), spec)
    with mlflow.start_run(experiment_id=experiment, tags=lineage) as run:
        mlflow.log_params(
            {
                "algorithm": spec.training.estimator_name,
                "seed": spec.training.seed,
                "holdout_fraction": spec.training.holdout_fraction,
                "train_rows": trained.train_rows,
                "holdout_rows": trained.holdout_rows,
                **{f"param.{k}": v for k, v in spec.training.params.items()},
            }
        )
        mlflow.log_metrics(trained.metrics)
        if spec.task == "regression":
            mlflow.set_tag(registry.TAG_SCORE_BUCKETS, json.dumps(training_deciles(labels(frame, spec))))
        mlflow.set_tag(registry.TAG_SNAPSHOT_SHA256, snapshot_sha)
        with tempfile.TemporaryDirectory() as tmp:
            # Content-addressed: the file's name is its sha256, so a reproduction can verify it.
            snapshot = Path(tmp) / f"{snapshot_sha}.parquet"
            shutil.copyfile(training_set_path, snapshot)
            mlflow.log_artifact(str(snapshot), registry.SNAPSHOT_DIR)
        mlflow.log_text(spec.to_yaml(), registry.SPEC_ARTIFACT)
        info = mlflow.sklearn.log_model(
            trained.pipeline,
            name=registry.MODEL_ARTIFACT,
            signature=infer_signature(inputs, predict(trained.pipeline, frame.head(5), spec)),
            serialization_format="cloudpickle",
        )
        mlflow.set_tag(registry.TAG_MODEL_URI, info.model_uri)
        onnx = _log_onnx_twin(trained.pipeline, spec, trained.holdout)
        return TrainingRun(run.info.run_id, info.model_uri, trained.metrics, onnx.reason, onnx.model is not None)


def _log_onnx_twin(pipeline: Pipeline, spec: ModelSpec, holdout: pd.DataFrame):
    """Export to ONNX with a holdout parity check; log it and how the model will be served."""
    import mlflow

    from components import registry
    from components.onnx_export import export

    result = export(pipeline, spec, holdout)
    tags = {
        registry.TAG_SERVING_FORMAT: "onnx" if result.model is not None else "sklearn",
        registry.TAG_ONNX_NOTE: result.reason,
    }
    if result.model is not None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / registry.ONNX_FILE
            path.write_bytes(result.model)
            mlflow.log_artifact(str(path), registry.ONNX_DIR)
            tags[registry.TAG_ONNX_SHA256] = registry.sha256_file(path)
    mlflow.set_tags(tags)
    return result


@step
def train_op(
    spec_yaml: str,
    tracking_uri: str,
    training_set: dsl.Input[dsl.Dataset],
    pipeline_run_id: str,
) -> NamedTuple("Outputs", [("run_id", str), ("model_uri", str)]):
    """Train the spec's model on the validated training set and log it all to MLflow."""
    from collections import namedtuple
    from pathlib import Path

    from components import registry
    from components.progress import say
    from components.spec import parse_spec
    from components.train import HEADLINE_METRICS, train_and_log

    spec = parse_spec(spec_yaml)
    lineage = {
        registry.TAG_FINGERPRINT: training_set.metadata["fingerprint"],
        registry.TAG_DATA_FINGERPRINT: training_set.metadata["data_fingerprint"],
        registry.TAG_SPEC_FINGERPRINT: spec.fingerprint(),
        registry.TAG_CODE_VERSION: training_set.metadata["code_version"],
        registry.TAG_PIPELINE_RUN: pipeline_run_id,
    }
    say(f"train: fitting {spec.training.estimator_name} on {int(training_set.metadata['rows'])} rows")
    run = train_and_log(spec, Path(training_set.path), tracking_uri, lineage)
    headline = ", ".join(f"{name} {run.metrics[name]:.4f}" for name in HEADLINE_METRICS[spec.task])
    say(f"train: run {run.run_id}, holdout {headline}")
    say(f"train: {run.serving_note}" if run.onnx else f"train: WARNING {run.serving_note}")
    return namedtuple("Outputs", ["run_id", "model_uri"])(run.run_id, run.model_uri)
