"""Training and the evaluation gates on the real Telco table (no mocks of sklearn or fairlearn)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse
import yaml

from components import evaluate, model_input, model_output, onnx_export, registry, train
from components.errors import SpecError
from components.metrics import classification_metrics, expected_calibration_error
from components.spec import parse_spec


@pytest.fixture(scope="module")
def trained(churn_spec, churn_frame):
    return train.fit(churn_frame, churn_spec)


def _spec_with(spec, **training_or_eval):
    data = yaml.safe_load(spec.to_yaml())
    for section, values in training_or_eval.items():
        data[section].update(values)
    return parse_spec(yaml.safe_dump(data))


def test_fit_is_deterministic_and_meets_the_bundled_gates(churn_spec, churn_frame, trained):
    again = train.fit(churn_frame, churn_spec)
    assert again.metrics == trained.metrics
    assert trained.train_rows + trained.holdout_rows == 7043
    assert trained.metrics["roc_auc"] > 0.80 and trained.metrics["f1"] > 0.5


def test_unknown_category_at_predict_time_does_not_crash(churn_spec, churn_frame, trained):
    rows = churn_frame.head(3).copy()
    rows["contract"] = "Weekly"
    proba = train.predict_positive(trained.pipeline, rows, churn_spec)
    assert proba.shape == (3,) and np.all((proba >= 0) & (proba <= 1))


def test_bad_training_params_name_the_allowed_ones(churn_spec, churn_frame):
    spec = _spec_with(churn_spec, training={"params": {"depth": 3}})
    with pytest.raises(SpecError, match=r"training.params \['depth'\] do not fit logistic_regression"):
        train.build_pipeline(spec)


WIDE_CATEGORY = 55  # one-hot density far below ColumnTransformer's sparse_threshold (0.3)


def _wide_category(spec, frame, algorithm):
    """`spec` with an added `region` category of 55 values (and `algorithm`), and `frame` with that column:
    a few rows missing it, the rest spread over every value."""
    data = yaml.safe_load(spec.to_yaml())
    regions = [f"region-{i:02d}" for i in range(WIDE_CATEGORY)]
    data["features"].append({"name": "region", "type": "category", "categories": regions})
    data["training"].update({"algorithm": algorithm, "params": {}})
    wide = frame.copy()
    wide["region"] = [None if key % 97 == 0 else regions[key % WIDE_CATEGORY] for key in wide[spec.entity.key]]
    return parse_spec(yaml.safe_dump(data)), wide


def test_the_wide_category_would_make_a_sparse_matrix(churn_spec, churn_frame):
    """The fixture really hits the case: for a sparse-capable estimator the preprocessing output is sparse."""
    spec, frame = _wide_category(churn_spec, churn_frame, "logistic_regression")
    pipeline = train.build_pipeline(spec)
    assert scipy.sparse.issparse(pipeline[0].fit_transform(model_input.feature_frame(frame, spec)))


@pytest.mark.parametrize("algorithm", sorted(train.CLASSIFIERS))
def test_a_wide_category_trains_and_exports_with_every_estimator(churn_spec, churn_frame, algorithm):
    spec, frame = _wide_category(churn_spec, churn_frame, algorithm)
    trained = train.fit(frame, spec)
    assert trained.metrics["roc_auc"] > 0.75

    # Rows the holdout may not hold: a region missing, a region no spec lists.
    probe = pd.concat([trained.holdout, trained.holdout.head(3).assign(region=[None, "region-99", ""])])
    result = onnx_export.export(trained.pipeline, spec, probe)
    assert result.model is not None, result.reason
    onnx_proba = onnx_export.session(result.model).run(
        [model_output.PROBABILITIES_OUTPUT], onnx_export.onnx_inputs(spec, probe)
    )[0][:, 1]
    sklearn_proba = train.predict_positive(trained.pipeline, probe, spec)
    np.testing.assert_allclose(onnx_proba, sklearn_proba, rtol=0, atol=1e-5)


def test_the_train_step_serves_a_wide_gradient_boosting_model_by_onnx(churn_spec, churn_frame, tmp_path):
    """Through the train step's logic (`train_and_log`, a real MLflow store): ONNX twin logged and tagged."""
    spec, frame = _wide_category(churn_spec, churn_frame, "hist_gradient_boosting")
    snapshot = tmp_path / "training_set.parquet"
    frame.to_parquet(snapshot, index=False)
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = train.train_and_log(spec, snapshot, tracking_uri, {registry.TAG_FINGERPRINT: "wide"})
    assert run.onnx, run.serving_note
    tags = registry.connect(tracking_uri).get_run(run.run_id).data.tags
    assert tags[registry.TAG_SERVING_FORMAT] == "onnx"
    assert tags[registry.TAG_ONNX_NOTE].startswith("ONNX parity on ")
    assert registry.TAG_ONNX_SHA256 in tags


def test_metrics_on_known_values():
    y = np.array([0, 0, 1, 1])
    proba = np.array([0.1, 0.4, 0.35, 0.8])
    m = classification_metrics(y, proba, threshold=0.5)
    assert m["roc_auc"] == pytest.approx(0.75)
    assert m["precision"] == 1.0 and m["recall"] == 0.5 and m["accuracy"] == 0.75
    assert expected_calibration_error(np.array([1, 0]), np.array([0.9, 0.1])) == pytest.approx(0.1)


def test_first_model_is_judged_on_absolute_gates_only(churn_spec, churn_frame, trained):
    _, holdout = train.split(churn_frame, churn_spec)
    verdict = evaluate.evaluate(churn_spec, holdout, trained.pipeline)
    assert verdict.promote, verdict.reasons
    assert verdict.champion is None
    assert any("no @champion yet" in r for r in verdict.reasons)
    assert verdict.fairness_gap is not None and 0 <= verdict.fairness_gap <= 0.30


def test_a_worse_challenger_is_rejected_against_the_champion(churn_spec, churn_frame, trained):
    _, holdout = train.split(churn_frame, churn_spec)
    weak_spec = _spec_with(churn_spec, training={"params": {"C": 0.0005, "max_iter": 2000}})
    weak = train.fit(churn_frame, weak_spec)
    verdict = evaluate.evaluate(churn_spec, holdout, weak.pipeline, trained.pipeline, champion_version="1")
    assert not verdict.promote
    assert verdict.reasons[0].startswith("FAIL")
    assert any("vs champion v1" in r and "over the allowed" in r for r in verdict.failed)


def test_gate_on_its_boundary_passes(churn_spec):
    metrics = {"roc_auc": 0.80, "f1": 0.50, "log_loss": 0.50, "ece": 0.08}
    verdict = evaluate.judge(churn_spec, metrics, champion=None, gap=0.30)
    assert verdict.promote, verdict.failed
    worse = evaluate.judge(churn_spec, {**metrics, "log_loss": 0.5001}, champion=None, gap=0.3001)
    assert not worse.promote
    assert len(worse.failed) == 2
    assert any("log_loss 0.5001 > maximum" in r for r in worse.failed)
    assert any("equalized_odds_difference across senior_citizen 0.3001 > max gap" in r for r in worse.failed)


def test_regression_direction_respects_lower_is_better(churn_spec):
    champion = {"roc_auc": 0.85, "f1": 0.60, "log_loss": 0.40, "ece": 0.02}
    better = {"roc_auc": 0.86, "f1": 0.58, "log_loss": 0.39, "ece": 0.02}  # f1 down 0.02 <= 0.03
    assert evaluate.judge(churn_spec, better, champion, gap=0.1, champion_version="4").promote
    worse = {**better, "roc_auc": 0.835}
    verdict = evaluate.judge(churn_spec, worse, champion, gap=0.1, champion_version="4")
    assert verdict.failed == ["roc_auc 0.8350 vs champion v4 0.8500: worse by 0.0150 (over the allowed 0.0100)"]


@pytest.fixture
def churn_champion(churn_spec, churn_frame, tmp_path):
    """A registry of its own holding churn v1 (@champion), trained by the functions the DAG's steps call."""
    from pipelines.direct import train_and_register

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert train_and_register(churn_spec, churn_frame, uri, tmp_path).alias == "champion"
    return uri, tmp_path


def _changed(spec, **top_level):
    data = yaml.safe_load(spec.to_yaml())
    data.update(top_level)
    return parse_spec(yaml.safe_dump(data))


def _regression_of_monthly_charges(churn_spec):
    data = yaml.safe_load(churn_spec.to_yaml())
    data["task"] = "regression"
    data["target"] = {"column": "monthly_charges"}
    data["features"] = [f for f in data["features"] if f["name"] != "monthly_charges"]
    data["evaluation"] = {"minimum": {}, "maximum": {}, "max_regression": {}}
    data["training"] = {**data["training"], "algorithm": "linear_regression", "params": {}}
    return parse_spec(yaml.safe_dump(data))


def test_a_challenger_the_champion_cannot_be_compared_with_is_refused_naming_why(
    churn_spec, churn_frame, churn_champion
):
    """Another task, other classes, or features the champion reads gone from the spec: the evaluate step refuses
    (a 4xx-kind SpecError naming the field and the fix) instead of crashing on the champion's predictions, and
    nothing is registered."""
    from pipelines.direct import train_and_register

    uri, home = churn_champion
    swapped = _changed(churn_spec, target={"column": "churn", "positive": "No", "negative": "Yes"})
    data = yaml.safe_load(churn_spec.to_yaml())
    data["features"] = [f for f in data["features"] if f["name"] != "tenure"]
    fewer = parse_spec(yaml.safe_dump(data))
    cases = [
        (_regression_of_monthly_charges(churn_spec), churn_frame, "task: this spec trains a regression model of"),
        (swapped, churn_frame, "target: this spec's classes are ['Yes', 'No'], @champion v1's are ['No', 'Yes']"),
        # The extract step's training set holds the spec's features only.
        (fewer, churn_frame.drop(columns=["tenure"]), "features: @champion v1 of 'churn' reads ['tenure']"),
    ]
    for spec, frame, message in cases:
        with pytest.raises(SpecError, match=r"cannot be (compared|scored)") as refused:
            train_and_register(spec, frame, uri, home, "refused")
        assert message in str(refused.value), str(refused.value)
        assert "its own `name`" in str(refused.value)
    assert [str(v.version) for v in registry.connect(uri).search_model_versions("name = 'churn'")] == ["1"]
