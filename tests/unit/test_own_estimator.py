"""Bring your own estimator (`training.estimator: "package.module:Class"`): XGBoost and LightGBM train on
the real churn table and export to ONNX with parity; a team's own class without a converter falls back to
serving the pipeline, loudly; a class that cannot be imported, or is not a classifier with probabilities,
stops training with a message naming the field."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from components import onnx_export, train
from components.errors import SpecError
from components.model_input import columns_of
from components.model_output import PROBABILITIES_OUTPUT
from components.spec import parse_spec

OWN = "tests.support.estimators:ShrunkLogisticClassifier"
THIRD_PARTY = {
    "xgboost:XGBClassifier": {"n_estimators": 80, "max_depth": 3, "learning_rate": 0.1},
    "lightgbm:LGBMClassifier": {"n_estimators": 80, "num_leaves": 15, "learning_rate": 0.05, "verbose": -1},
}


def own_spec(spec, estimator: str, params: dict | None = None):
    data = yaml.safe_load(spec.to_yaml())
    data["training"] = {**data["training"], "estimator": estimator, "params": params or {}}
    data["training"].pop("algorithm")
    return parse_spec(yaml.safe_dump(data))


@pytest.mark.parametrize("estimator", sorted(THIRD_PARTY))
def test_xgboost_and_lightgbm_train_and_are_served_from_onnx_with_parity(churn_spec, churn_frame, estimator):
    spec = own_spec(churn_spec, estimator, THIRD_PARTY[estimator])
    trained = train.fit(churn_frame, spec)
    assert type(trained.pipeline[-1]).__name__ == estimator.split(":")[1]
    assert trained.metrics["roc_auc"] > 0.8, trained.metrics
    exported = onnx_export.export(trained.pipeline, spec, trained.holdout)
    assert exported.model is not None, exported.reason
    assert exported.max_abs_diff <= onnx_export.PARITY_TOLERANCE
    # The graph, fed as the predictor feeds it, gives the pipeline's probabilities on rows it never saw.
    rows = trained.holdout.sample(300, random_state=3)
    graph = onnx_export.session(exported.model)
    scored = graph.run([PROBABILITIES_OUTPUT], onnx_export.onnx_inputs(spec, rows))[0][:, 1]
    np.testing.assert_allclose(scored, train.predict_positive(trained.pipeline, rows, spec), atol=1e-5)


def test_the_spec_seed_reaches_an_own_estimator_that_takes_one(churn_spec, churn_frame):
    spec = own_spec(churn_spec, "xgboost:XGBClassifier", {"n_estimators": 5})
    assert train.build_pipeline(spec)[-1].get_params()["random_state"] == spec.training.seed


def test_an_estimator_without_a_converter_is_served_by_its_pipeline_and_says_so(churn_spec, churn_frame):
    spec = own_spec(churn_spec, OWN, {"shrink": 0.2})
    trained = train.fit(churn_frame, spec)
    assert trained.metrics["roc_auc"] > 0.8
    exported = onnx_export.export(trained.pipeline, spec, trained.holdout)
    assert exported.model is None and exported.max_abs_diff is None
    assert exported.reason.startswith("ONNX conversion failed") and exported.reason.endswith("serving scikit-learn")
    assert "ShrunkLogisticClassifier" in exported.reason


@pytest.mark.parametrize(
    ("estimator", "params", "message"),
    [
        ("no_such_package.models:Forest", {}, r"training.estimator: cannot import 'no_such_package.models'"),
        ("sklearn.ensemble:NoSuchForest", {}, r"training.estimator: module 'sklearn.ensemble' has no class"),
        ("sklearn.linear_model:Ridge", {}, r"training.estimator: sklearn.linear_model:Ridge is not a classifier"),
        ("sklearn.svm:SVC", {}, r"training.estimator: sklearn.svm:SVC is not a classifier with predict_proba"),
        ("collections:OrderedDict", {}, r"training.estimator: collections:OrderedDict is not a scikit-learn"),
        ("xgboost:XGBClassifier", {"n_estimators": "many"}, r"training.params: xgboost:XGBClassifier failed to fit"),
        ("sklearn.linear_model:LogisticRegression", {"C": -1.0}, r"training.params: .* failed to fit .*'C' param"),
        (OWN, {"shrinkage": 0.3}, r"training.params \['shrinkage'\] do not fit tests.support.estimators:Shrunk"),
    ],
)
def test_an_estimator_that_cannot_train_stops_with_the_field_named(churn_spec, churn_frame, estimator, params, message):
    spec = own_spec(churn_spec, estimator, params)
    with pytest.raises(SpecError, match=message):
        train.fit(churn_frame, spec)


@pytest.mark.parametrize(
    ("training", "message"),
    [
        ({"estimator": "xgboost"}, 'training.estimator: expected "package.module:Class"'),
        ({"estimator": "xgboost:XGBClassifier()"}, 'training.estimator: expected "package.module:Class"'),
        ({"algorithm": "random_forest", "estimator": "xgboost:XGBClassifier"}, "training: give either algorithm"),
        ({}, "training: give either algorithm .* none is given"),
    ],
)
def test_the_spec_says_how_to_name_an_estimator(churn_spec, training, message):
    data = yaml.safe_load(churn_spec.to_yaml())
    data["training"] = {"params": {}, **training}
    with pytest.raises(SpecError, match=message):
        parse_spec(yaml.safe_dump(data))


def test_columns_from_a_request_reach_an_own_pipeline_as_float64(churn_spec, churn_frame):
    """The fallback serves the pipeline on the request's columns in float64, as it was fitted: no float32
    rounding of the inputs between the in-process answer and the served one."""
    from components.model_input import feature_frame, frame_of

    rows = churn_frame.head(50)
    served = frame_of(churn_spec, columns_of(rows, churn_spec))
    fitted = feature_frame(rows, churn_spec)
    assert (served.dtypes == fitted.dtypes).all()
    assert served.equals(fitted)
