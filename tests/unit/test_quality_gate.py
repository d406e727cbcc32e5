"""The quality gate (serving/rollout/gates.py `quality`): its boundaries, "no labels" is never a pass, and the
spec -> object annotation -> Policy path that turns it on."""

from __future__ import annotations

import json

import pytest
import yaml

from components.errors import SpecError
from components.spec import parse_spec
from serving.inference_service import ANNOTATION_POLICY, build_inference_service
from serving.rollout.gates import QualityReading, Unavailable, Verdict, quality
from serving.rollout.machine import Policy, QualityPolicy
from serving.rollout.providers import quality_readings

REGRESSION = {"roc_auc": 0.01, "log_loss": 0.05}
CHAMPION = QualityReading(400, {"roc_auc": 0.84, "log_loss": 0.42})


def test_too_few_labels_on_either_side_holds():
    few = QualityReading(99, {"roc_auc": 0.2, "log_loss": 3.0})  # dreadful, but not yet judged
    assert quality(few, CHAMPION, REGRESSION, 100).verdict is Verdict.INCONCLUSIVE
    result = quality(CHAMPION, QualityReading(10, CHAMPION.metrics), REGRESSION, 100)
    assert result.verdict is Verdict.INCONCLUSIVE and "champion 10" in result.reason
    assert quality(None, CHAMPION, REGRESSION, 1).verdict is Verdict.INCONCLUSIVE


@pytest.mark.parametrize(
    ("canary", "verdict"),
    [
        ({"roc_auc": 0.83, "log_loss": 0.47}, Verdict.PASS),  # exactly the allowed regression on both
        ({"roc_auc": 0.90, "log_loss": 0.30}, Verdict.PASS),  # better
        ({"roc_auc": 0.8299, "log_loss": 0.42}, Verdict.FAIL),  # higher is better: lower AUC fails
        ({"roc_auc": 0.84, "log_loss": 0.4701}, Verdict.FAIL),  # lower is better: higher loss fails
    ],
)
def test_the_canary_may_be_worse_by_the_allowed_regression_and_no_more(canary, verdict):
    result = quality(QualityReading(150, canary), CHAMPION, REGRESSION, 100)
    assert result.verdict is verdict, result.reason


def test_a_failing_verdict_names_the_metric_and_the_numbers():
    result = quality(QualityReading(150, {"roc_auc": 0.51, "log_loss": 0.40}), CHAMPION, REGRESSION, 100)
    assert result.verdict is Verdict.FAIL
    assert "roc_auc 0.510 vs champion 0.840: worse by 0.330, allowed 0.01" in result.reason
    assert "150 and 400 labelled predictions" in result.reason


def test_an_unreadable_source_or_an_undefined_metric_is_inconclusive():
    gone = Unavailable("the live quality (drift service)", "HTTP 500")
    assert quality(gone, gone, REGRESSION, 1).verdict is Verdict.INCONCLUSIVE
    no_auc = QualityReading(150, {"log_loss": 0.40})  # one class among the labels: no ROC AUC
    assert quality(no_auc, CHAMPION, REGRESSION, 100).verdict is Verdict.INCONCLUSIVE


def test_readings_come_from_the_series_of_each_roles_version():
    samples = [
        ("shepherd_model_quality", {"model": "churn", "version": "2", "role": "canary", "metric": "roc_auc"}, 0.7),
        ("shepherd_model_quality_labelled_rows", {"model": "churn", "version": "2", "role": "canary"}, 120.0),
        ("shepherd_model_quality", {"model": "churn", "version": "1", "role": "canary", "metric": "roc_auc"}, 0.1),
        ("shepherd_model_quality", {"model": "other", "version": "1", "role": "champion", "metric": "roc_auc"}, 0.1),
    ]
    readings = quality_readings(samples, "churn", {"canary": "2", "champion": "1"})
    assert readings == {"canary": QualityReading(120, {"roc_auc": 0.7}), "champion": None}


def _spec(churn_spec, **gate):
    data = yaml.safe_load(churn_spec.to_yaml())
    data["deployment"]["quality_gate"] = gate
    return parse_spec(yaml.safe_dump(data))


def test_the_spec_turns_the_gate_on_through_the_objects_policy(churn_spec):
    assert (
        Policy.from_annotation(
            build_inference_service(churn_spec, "1")["metadata"]["annotations"][ANNOTATION_POLICY]
        ).quality
        is None
    )
    spec = _spec(churn_spec, min_labels=50)
    annotation = build_inference_service(spec, "1")["metadata"]["annotations"][ANNOTATION_POLICY]
    assert json.loads(annotation)["quality"] == {"minLabels": 50, "maxRegression": {"roc_auc": 0.01, "f1": 0.03}}
    assert Policy.from_annotation(annotation).quality == QualityPolicy(50, {"roc_auc": 0.01, "f1": 0.03})
    own = _spec(churn_spec, min_labels=20, max_regression={"brier": 0.02})
    policy = Policy.from_annotation(build_inference_service(own, "1")["metadata"]["annotations"][ANNOTATION_POLICY])
    assert policy.quality == QualityPolicy(20, {"brier": 0.02})


def test_a_quality_gate_needs_metrics_to_compare(churn_spec):
    data = yaml.safe_load(churn_spec.to_yaml())
    data["evaluation"]["max_regression"] = {}
    data["deployment"]["quality_gate"] = {"min_labels": 10}
    with pytest.raises(SpecError, match=r"deployment\.quality_gate needs max_regression"):
        parse_spec(yaml.safe_dump(data))
    with pytest.raises(SpecError, match="unknown metric"):
        _spec(churn_spec, max_regression={"auc": 0.1})
