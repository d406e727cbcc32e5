"""Evaluation: the challenger against the current `@champion` on the same holdout rows.

Gates, all from the spec: absolute minimums and maximums, the largest allowed regression against the
champion, and a fairness gap across one attribute. The very first model has no champion and is judged
on the absolute gates alone. The verdict carries one readable reason per gate.
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from kfp import dsl

from components.adapter import step
from components.data import labels
from components.metrics import task_metrics
from components.model_output import predict
from components.spec import EVENT_TIMESTAMP, ModelSpec, higher_is_better
from components.train import split


@dataclass
class Verdict:
    """Whether to promote, and why: one line per gate, failing ones first."""

    promote: bool
    reasons: list[str]
    challenger: dict[str, float]
    champion: dict[str, float] | None = None
    champion_version: str | None = None
    fairness_gap: float | None = None
    failed: list[str] = field(default_factory=list)
    holdout: str = ""  # which rows both models were scored on

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, text: str) -> "Verdict":
        return cls(**json.loads(text))

    @property
    def summary(self) -> str:
        if self.promote:
            return "promote: every gate passed"
        return "reject: " + "; ".join(self.failed)


def fairness_gap(spec: ModelSpec, holdout: pd.DataFrame, predictions: np.ndarray) -> float:
    """The spec's fairness metric across the groups of its fairness attribute: a fairlearn metric for a
    binary task; for the others the largest between-group difference (fairlearn's `MetricFrame`) of the
    MAE (regression), the accuracy, or each class's recall, the largest of them (multiclass)."""
    from fairlearn import metrics as fairlearn_metrics

    rule = spec.evaluation.fairness
    groups = holdout[rule.attribute].astype(str).fillna("<missing>")
    y = labels(holdout, spec)
    if spec.task == "binary":
        metric = getattr(fairlearn_metrics, rule.metric)
        predicted = (predictions >= spec.evaluation.decision_threshold).astype(int)
        return float(metric(y, predicted, sensitive_features=groups))
    if spec.task == "regression":
        from sklearn.metrics import mean_absolute_error

        frame = fairlearn_metrics.MetricFrame(
            metrics=mean_absolute_error, y_true=y, y_pred=predictions, sensitive_features=groups
        )
        return float(frame.difference())
    from sklearn.metrics import accuracy_score, recall_score

    chosen = np.asarray(predictions).argmax(axis=1)
    if rule.metric == "accuracy_difference":
        frame = fairlearn_metrics.MetricFrame(
            metrics=accuracy_score, y_true=y, y_pred=chosen, sensitive_features=groups
        )
        return float(frame.difference())
    gaps = []
    for index in range(len(spec.target.classes)):
        # One class's recall per group; groups without a row of the class have no recall and no gap.
        def recall(y_true, y_pred, index=index):
            hits = y_true == index
            return recall_score(hits, y_pred == index, zero_division=np.nan) if hits.any() else np.nan

        frame = fairlearn_metrics.MetricFrame(metrics=recall, y_true=y, y_pred=chosen, sensitive_features=groups)
        by_group = frame.by_group.dropna()
        if len(by_group) > 1:
            gaps.append(float(by_group.max() - by_group.min()))
    return max(gaps, default=0.0)


def judge(
    spec: ModelSpec,
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    gap: float | None,
    champion_version: str | None = None,
) -> Verdict:
    """Apply every gate of the spec to already computed metrics."""
    rules = spec.evaluation
    passed, failed = [], []

    def check(ok: bool, text: str) -> None:
        (passed if ok else failed).append(text)

    for metric, floor in sorted(rules.minimum.items()):
        value = challenger[metric]
        check(value >= floor, f"{metric} {value:.4f} {'≥' if value >= floor else '<'} minimum {floor:.4f}")
    for metric, ceiling in sorted(rules.maximum.items()):
        value = challenger[metric]
        check(value <= ceiling, f"{metric} {value:.4f} {'≤' if value <= ceiling else '>'} maximum {ceiling:.4f}")
    if champion is None:
        passed.append("no @champion yet: judged on absolute gates only")
    else:
        for metric, allowed in sorted(rules.max_regression.items()):
            worse_by = champion[metric] - challenger[metric]
            if not higher_is_better(metric):
                worse_by = -worse_by
            check(
                worse_by <= allowed,
                f"{metric} {challenger[metric]:.4f} vs champion v{champion_version} {champion[metric]:.4f}: "
                f"{'worse' if worse_by > 0 else 'not worse'} by {max(worse_by, 0.0) + 0.0:.4f} "
                f"({'within' if worse_by <= allowed else 'over'} the allowed {allowed:.4f})",
            )
    if rules.fairness is not None and gap is not None:
        f = rules.fairness
        check(
            gap <= f.max_gap,
            f"{f.metric} across {f.attribute} {gap:.4f} {'≤' if gap <= f.max_gap else '>'} max gap {f.max_gap:.4f}",
        )
    reasons = [f"FAIL {r}" for r in failed] + [f"pass {r}" for r in passed]
    return Verdict(
        promote=not failed,
        reasons=reasons,
        challenger=challenger,
        champion=champion,
        champion_version=champion_version,
        fairness_gap=gap,
        failed=failed,
    )


def evaluate(
    spec: ModelSpec,
    holdout: pd.DataFrame,
    challenger_model,
    champion_model=None,
    champion_version: str | None = None,
    champion_spec: ModelSpec | None = None,
) -> Verdict:
    """Score both models on the same holdout rows and judge the challenger. The champion reads the features of
    its own spec (`champion_spec`, default the challenger's): a challenger may add or reorder features."""
    y = labels(holdout, spec)
    predictions = predict(challenger_model, holdout, spec)
    challenger = task_metrics(spec, y, predictions)
    champion = None
    if champion_model is not None:
        champion = task_metrics(spec, y, predict(champion_model, holdout, champion_spec or spec))
    gap = fairness_gap(spec, holdout, predictions) if spec.evaluation.fairness else None
    return judge(spec, challenger, champion, gap, champion_version)


def evaluate_run(spec: ModelSpec, training_set_path: Path, tracking_uri: str, model_uri: str) -> Verdict:
    """Load the challenger and the current champion from MLflow and evaluate on the holdout."""
    import mlflow

    from components import registry

    client = registry.connect(tracking_uri)
    _, holdout = split(pd.read_parquet(training_set_path), spec)
    challenger = mlflow.sklearn.load_model(model_uri)
    champion = registry.champion_version(client, spec.name)
    champion_model = None
    if champion is not None:
        champion_spec = registry.version_spec(client, champion)
        comparable(spec, champion_spec, champion.version, holdout)
        champion_model = mlflow.sklearn.load_model(f"models:/{spec.name}/{champion.version}")
    verdict = evaluate(
        spec,
        holdout,
        challenger,
        champion_model,
        champion.version if champion else None,
        champion_spec if champion else None,
    )
    verdict.holdout = describe_holdout(holdout, spec)
    return verdict


def comparable(spec: ModelSpec, champion_spec: ModelSpec, champion_version: str, holdout: pd.DataFrame) -> None:
    """Refuse, naming what differs and what to do, a challenger the champion cannot be judged against on the same
    rows: another task or target (their metrics mean different things), or a champion whose features the
    challenger's training set no longer has."""
    from components.errors import SpecError

    fix = f"a different model needs its own `name` (or archive '{spec.name}' and start again)"
    if (spec.task, spec.target.column) != (champion_spec.task, champion_spec.target.column):
        raise SpecError(
            f"task: this spec trains a {spec.task} model of {spec.target.column!r}, but @champion "
            f"v{champion_version} of '{spec.name}' is a {champion_spec.task} model of "
            f"{champion_spec.target.column!r}: their metrics cannot be compared; {fix}"
        )
    if spec.task != "regression" and spec.target.values != champion_spec.target.values:
        raise SpecError(
            f"target: this spec's classes are {spec.target.values}, @champion v{champion_version}'s are "
            f"{champion_spec.target.values}: their probabilities cannot be compared; {fix}"
        )
    missing = [name for name in champion_spec.feature_names if name not in holdout.columns]
    if missing:
        raise SpecError(
            f"features: @champion v{champion_version} of '{spec.name}' reads {missing}, which this spec no longer "
            "extracts, so it cannot be scored on the challenger's holdout; keep them in the spec's features while "
            f"the champion needs them, or {fix}"
        )


def describe_holdout(holdout: pd.DataFrame, spec: ModelSpec) -> str:
    """Which rows judged the models, in words."""
    if spec.training.holdout_by == "entity" or EVENT_TIMESTAMP not in holdout:
        return f"{len(holdout)} rows chosen by the entity-key hash"
    stamps = holdout[EVENT_TIMESTAMP]
    first, last = stamps.min(), stamps.max()
    if first == last:
        return f"{len(holdout)} rows observed {first:%Y-%m-%d}, chosen among them by the entity-key hash"
    return f"the {len(holdout)} most recent rows (observed {first:%Y-%m-%d} .. {last:%Y-%m-%d})"


@step
def evaluate_op(
    spec_yaml: str,
    tracking_uri: str,
    training_set: dsl.Input[dsl.Dataset],
    model_uri: str,
    metrics: dsl.Output[dsl.Metrics],
    verdict: dsl.Output[dsl.Artifact],
) -> bool:
    """Challenger vs @champion on the same holdout; returns `promote`, which drives the deploy.

    The full verdict (reasons, both models' metrics) is the `verdict` artifact (JSON).
    """
    import json
    from pathlib import Path

    from components.evaluate import evaluate_run
    from components.progress import say
    from components.spec import parse_spec

    spec = parse_spec(spec_yaml)
    result = evaluate_run(spec, Path(training_set.path), tracking_uri, model_uri)
    for name, value in result.challenger.items():
        metrics.log_metric(name, value)
    for name, value in (result.champion or {}).items():
        metrics.log_metric(f"champion_{name}", value)
    if result.fairness_gap is not None:
        metrics.log_metric("fairness_gap", result.fairness_gap)
    Path(verdict.path).write_text(json.dumps(result.to_dict(), indent=2))
    verdict.metadata.update({"promote": result.promote, "summary": result.summary})
    who = f"challenger and champion v{result.champion_version}" if result.champion else "the first model"
    say(f"evaluate: {who} scored on {result.holdout}")
    say(f"evaluate: {result.summary}")
    for reason in result.reasons:
        say(f"  {reason}")
    return result.promote
