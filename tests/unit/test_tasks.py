"""`task: binary | multiclass | regression`: the spec's rules per task (a binary spec dumps and fingerprints as
before tasks existed), the metrics per task equal scikit-learn's, the shipped examples train and export to ONNX
with parity (XGBoost and LightGBM too), bad specs and bad targets stop with the field named, and every reader of
a served answer (the drift service, the outcome ledger, live quality) understands each task's."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn import metrics as skm

from components import data, onnx_export, train
from components.errors import DataValidationError, SpecError
from components.metrics import multiclass_metrics, regression_metrics, task_metrics
from components.model_output import answers, graph_answers, output_name, predict, score_buckets
from components.outcomes import TargetValues
from components.spec import load_spec, parse_spec
from monitoring.drift import BadEvent, scores_from_response
from monitoring.quality import SpecFacts, live_metrics
from serving.predictor import answer_renderers, output_tensor_types

SPECS = Path(__file__).resolve().parents[2] / "specs"


@pytest.fixture(scope="module")
def examples():
    """The shipped regression and multiclass examples and their tables as the extract step shapes them."""
    found = {}
    for name in ("ames", "hpc"):
        spec = load_spec(SPECS / f"{name}.yaml")
        features, entities = data.split_source(data.load_source(spec), spec)
        found[name] = (spec, entities.merge(features, on=[spec.entity.key, "event_timestamp"]))
    return found


def _changed(spec, **sections):
    text = yaml.safe_load(spec.to_yaml())
    for section, value in sections.items():
        if section in ("evaluation", "training", "deployment") and isinstance(text.get(section), dict):
            text[section] = {**text[section], **value}
        else:
            text[section] = value
    return yaml.safe_dump(text)


def _with_estimator(spec, estimator: str, params: dict):
    text = yaml.safe_load(spec.to_yaml())
    text["training"] = {**text["training"], "estimator": estimator, "params": params}
    del text["training"]["algorithm"]
    return parse_spec(yaml.safe_dump(text))


def test_a_binary_spec_dumps_as_before_tasks_existed(churn_spec):
    dumped = yaml.safe_load(churn_spec.to_yaml())
    assert "task" not in dumped
    assert dumped["target"] == {"column": "churn", "positive": "Yes", "negative": "No"}
    assert churn_spec.task == "binary"
    # The fingerprint of the shipped churn spec, as registered versions recorded it before tasks existed.
    assert churn_spec.fingerprint().startswith("3e38c39d25bc")


def test_the_shipped_examples_name_their_tasks(examples):
    ames, hpc = examples["ames"][0], examples["hpc"][0]
    assert (ames.task, hpc.task) == ("regression", "multiclass")
    assert ames.metric_names == ["rmse", "mae", "r2", "mape"]
    assert hpc.metric_names[-4:] == ["recall.VF", "recall.F", "recall.M", "recall.L"]
    assert parse_spec(ames.to_yaml()) == ames and parse_spec(hpc.to_yaml()) == hpc


BAD_SPECS = [
    (
        "ames",
        {"target": {"column": "Sale_Price", "positive": "high", "negative": "low"}},
        "target: negative, positive do not apply to a regression task",
    ),
    ("hpc", {"target": {"column": "class"}}, "target: a multiclass task needs classes"),
    (
        "hpc",
        {"target": {"column": "class", "classes": ["VF", "F"]}},
        "target.classes: a multiclass task needs 3 or more classes",
    ),
    ("hpc", {"target": {"column": "class", "classes": ["VF", "F", "VF"]}}, "target.classes: listed twice: ['VF']"),
    ("ames", {"task": "binary"}, "target: a binary task needs negative and positive"),
    (
        "ames",
        {"training": {"algorithm": "logistic_regression"}},
        "training.algorithm: logistic_regression does not fit a regression task",
    ),
    (
        "hpc",
        {"training": {"algorithm": "linear_regression"}},
        "training.algorithm: linear_regression does not fit a multiclass task",
    ),
    (
        "ames",
        {"evaluation": {"minimum": {"roc_auc": 0.8}}},
        "evaluation.minimum: unknown metric(s) ['roc_auc'] for a regression task",
    ),
    (
        "hpc",
        {"evaluation": {"maximum": {"rmse": 3}}},
        "evaluation.maximum: unknown metric(s) ['rmse'] for a multiclass task",
    ),
    ("hpc", {"evaluation": {"minimum": {"recall.XL": 0.5}}}, "evaluation.minimum: unknown metric(s) ['recall.XL']"),
    (
        "ames",
        {
            "evaluation": {
                "fairness": {"attribute": "Central_Air", "metric": "equalized_odds_difference", "max_gap": 0.2}
            }
        },
        "evaluation.fairness.metric: equalized_odds_difference does not fit a regression task",
    ),
    ("ames", {"target": {"column": "Sale_Price", "min": 10, "max": 1}}, "target: min 10.0 is above max 1.0"),
    (
        "hpc",
        {"target": {"column": "class", "classes": ["VF", "F", "M", "L?", "L!"]}},
        "target.classes: ['VF', 'F', 'M', 'L?', 'L!'] give the same per-class metric name twice",
    ),
    (
        "hpc",
        {"deployment": {"quality_gate": {"min_labels": 50, "max_regression": {"log_loss": 0.1}}}},
        "deployment.quality_gate.max_regression: log_loss is not measured live for a multiclass task",
    ),
]


@pytest.mark.parametrize(("name", "change", "expected"), BAD_SPECS)
def test_a_spec_whose_rules_do_not_fit_its_task_is_refused_naming_the_field(examples, name, change, expected):
    with pytest.raises(SpecError) as info:
        parse_spec(_changed(examples[name][0], **change))
    assert expected in str(info.value)


def test_multiclass_and_regression_metrics_equal_scikit_learn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 500)
    proba = rng.dirichlet([1, 1, 1], 500)
    got = multiclass_metrics(y, proba, ["a", "b c", "d/é"])
    predicted = proba.argmax(axis=1)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, predicted))
    assert got["macro_f1"] == pytest.approx(skm.f1_score(y, predicted, average="macro"))
    assert got["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, predicted))
    assert got["log_loss"] == pytest.approx(skm.log_loss(y, proba))
    recalls = skm.recall_score(y, predicted, average=None)
    assert [got["recall.a"], got["recall.b c"], got["recall.d/_"]] == pytest.approx(list(recalls))
    truth, values = rng.normal(100, 20, 400), rng.normal(100, 20, 400)
    got = regression_metrics(truth, values)
    assert got["rmse"] == pytest.approx(math.sqrt(skm.mean_squared_error(truth, values)))
    assert got["mae"] == pytest.approx(skm.mean_absolute_error(truth, values))
    assert got["r2"] == pytest.approx(skm.r2_score(truth, values))
    assert got["mape"] == pytest.approx(skm.mean_absolute_percentage_error(truth, values))
    assert math.isnan(regression_metrics(np.array([0.0, 1.0]), np.array([0.5, 1.0]))["mape"])  # undefined at 0


@pytest.mark.parametrize("name", ["ames", "hpc"])
def test_the_examples_train_pass_their_gates_and_export_with_parity(examples, name):
    from components.evaluate import evaluate

    spec, frame = examples[name]
    trained = train.fit(frame, spec)
    assert set(trained.metrics) == set(spec.metric_names)
    verdict = evaluate(spec, trained.holdout, trained.pipeline)
    assert verdict.promote, verdict.reasons
    exported = onnx_export.export(trained.pipeline, spec, trained.holdout)
    assert exported.model is not None, exported.reason
    rows = trained.holdout.sample(200, random_state=5)
    raw = onnx_export.session(exported.model).run([output_name(spec)], onnx_export.onnx_inputs(spec, rows))[0]
    expected = predict(trained.pipeline, rows, spec)
    if spec.task == "regression":
        np.testing.assert_allclose(graph_answers(spec, raw), expected, rtol=1e-4)
    else:
        assert expected.shape == (200, 4)
        np.testing.assert_allclose(graph_answers(spec, raw), expected, atol=1e-5)


THIRD_PARTY = {
    ("ames", "xgboost:XGBRegressor"): {"n_estimators": 150, "max_depth": 4, "learning_rate": 0.1},
    ("ames", "lightgbm:LGBMRegressor"): {"n_estimators": 150, "num_leaves": 15, "verbose": -1},
    ("hpc", "xgboost:XGBClassifier"): {"n_estimators": 80, "max_depth": 4},
    ("hpc", "lightgbm:LGBMClassifier"): {"n_estimators": 80, "num_leaves": 15, "verbose": -1},
}


@pytest.mark.parametrize(("name", "estimator"), sorted(THIRD_PARTY))
def test_xgboost_and_lightgbm_serve_each_task_from_onnx(examples, name, estimator):
    spec, frame = examples[name]
    spec = _with_estimator(spec, estimator, THIRD_PARTY[(name, estimator)])
    trained = train.fit(frame, spec)
    exported = onnx_export.export(trained.pipeline, spec, trained.holdout)
    assert exported.model is not None, exported.reason
    assert exported.reason.startswith(f"ONNX parity on {len(trained.holdout)} holdout rows")


@pytest.mark.parametrize(
    ("name", "estimator", "expected"),
    [
        ("ames", "sklearn.linear_model:LogisticRegression", "is not a regressor; a regression task needs"),
        ("hpc", "sklearn.linear_model:Ridge", "is not a classifier with predict_proba; a multiclass task needs"),
    ],
)
def test_an_estimator_of_another_task_is_refused(examples, name, estimator, expected):
    spec = _with_estimator(examples[name][0], estimator, {})
    with pytest.raises(SpecError, match=r"training\.estimator") as info:
        train.build_pipeline(spec)
    assert expected in str(info.value)


def test_a_listed_class_without_training_rows_is_named(examples):
    spec, frame = examples["hpc"]
    with pytest.raises(DataValidationError, match=r"target.classes: \['L'\] have no rows in the training set"):
        train.fit(frame[frame["class"] != "L"], spec)


def test_served_answers_per_task(examples):
    ames, hpc = examples["ames"][0], examples["hpc"][0]
    served = answers(hpc, np.array([[0.1, 0.6, 0.2, 0.1], [0.7, 0.1, 0.1, 0.1]]))
    assert served.labels == ["F", "VF"] and served.score.tolist() == [1.0, 0.0]
    v1, v2 = answer_renderers(hpc)
    assert v1(served, ["r-0", "r-1"])[0] == {
        "id": "r-0",
        "label": "F",
        "probabilities": dict(zip(["VF", "F", "M", "L"], [0.1, 0.6, 0.2, 0.1], strict=True)),
    }
    assert [o["name"] for o in output_tensor_types(hpc)] == ["label", "probabilities", "prediction_id"]
    assert len(v2(served, ["r-0", "r-1"])[1]) == 8  # [rows, classes] row-major
    values = answers(ames, np.array([123456.5, 98000.0]))
    assert answer_renderers(ames)[0](values, ["a", "b"]) == [
        {"id": "a", "value": 123456.5},
        {"id": "b", "value": 98000.0},
    ]
    assert score_buckets(hpc) == (0.5, 1.5, 2.5, 3.5)
    assert score_buckets(ames, [100.0, 200.0]) == (100.0, 200.0)
    assert len(score_buckets(ames)) == 10  # no recorded deciles: ten steps over target.min..max


def test_the_drift_service_reads_each_tasks_answer():
    assert scores_from_response({"predictions": [{"label": "Yes", "probability": 0.7}]}) == [0.7]
    assert scores_from_response({"predictions": [{"id": "x", "value": 2.5e5}]}) == [2.5e5]
    multiclass = {"predictions": [{"label": "M", "probabilities": {"VF": 0.1, "F": 0.2, "M": 0.6, "L": 0.1}}]}
    assert scores_from_response(multiclass) == [2.0]
    probabilities = {"name": "probabilities", "shape": [2, 4], "data": [0.1, 0.7, 0.1, 0.1, 0, 0, 0.2, 0.8]}
    v2 = {"outputs": [{"name": "label", "data": ["F", "L"]}, probabilities]}
    assert scores_from_response(v2) == [1.0, 3.0]
    assert scores_from_response({"outputs": [{"name": "value", "data": [1.5, 2.5]}]}) == [1.5, 2.5]
    with pytest.raises(BadEvent, match=r"outputs\[probabilities\]\.shape"):
        scores_from_response({"outputs": [{"name": "probabilities", "shape": [8], "data": [0.1] * 8}]})


def test_labels_per_task_in_the_ledger_and_live_quality(examples):
    ames, hpc = examples["ames"][0], examples["hpc"][0]
    price, job = TargetValues.of(ames), TargetValues.of(hpc)
    assert [price.normalise(v) for v in (215000, "199500.5", True, "cheap", float("nan"), -5)] == [
        "215000.0", "199500.5", None, None, None, None,
    ]  # fmt: skip
    assert "a number >= 1" in price.expected
    assert [job.normalise(v) for v in ("VF", "L", "XL", 1)] == ["VF", "L", None, None]
    assert job.expected == "one of ['VF', 'F', 'M', 'L']"

    rng = np.random.default_rng(1)
    truth = pd.Series(rng.choice(["VF", "F", "M", "L"], 300))
    predicted = rng.integers(0, 4, 300).astype(float)
    got = live_metrics(SpecFacts.of(hpc), truth, predicted)
    y = truth.map({"VF": 0, "F": 1, "M": 2, "L": 3})
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, predicted))
    assert got["macro_f1"] == pytest.approx(skm.f1_score(y, predicted, average="macro"))
    prices = rng.normal(2e5, 4e4, 300)
    got = live_metrics(SpecFacts.of(ames), pd.Series([repr(float(p)) for p in prices]), prices * 1.1)
    assert got["mape"] == pytest.approx(0.1)
    assert got == pytest.approx(regression_metrics(prices, prices * 1.1))


def test_task_metrics_dispatch_on_the_spec(examples, churn_spec):
    y, proba = np.array([0, 1, 1, 0]), np.array([0.2, 0.8, 0.6, 0.4])
    assert set(task_metrics(churn_spec, y, proba)) == set(churn_spec.metric_names)
    assert set(task_metrics(examples["ames"][0], y * 1.0 + 1, proba)) == {"rmse", "mae", "r2", "mape"}


def test_the_live_quality_gate_reads_each_tasks_metrics_the_right_way_round():
    """Per-class recall and R² are better higher, RMSE lower: a canary worse on them fails the rollout's gate."""
    from serving.rollout.gates import QualityReading, Verdict, quality

    champion = QualityReading(200, {"recall.L": 0.80, "r2": 0.88, "rmse": 25000.0})
    for metric, canary_value in (("recall.L", 0.60), ("r2", 0.70), ("rmse", 40000.0)):
        canary = QualityReading(200, {**champion.metrics, metric: canary_value})
        assert quality(canary, champion, {metric: 0.05 if metric != "rmse" else 5000}, 100).verdict is Verdict.FAIL
        better = {"recall.L": 0.95, "r2": 0.95, "rmse": 15000.0}[metric]
        canary = QualityReading(200, {**champion.metrics, metric: better})
        assert quality(canary, champion, {metric: 0.05 if metric != "rmse" else 5000}, 100).verdict is Verdict.PASS
