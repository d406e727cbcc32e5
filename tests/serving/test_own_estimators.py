"""An ML engineer's own estimators, registered and served for real: XGBoost and LightGBM from their ONNX
twins, a team's own class (no converter) from its scikit-learn pipeline with the fallback tagged on the
version and named in the model's metadata. Each predictor process answers V1 and V2 requests with the
probabilities the registered pipeline gives in this process, to 1e-5."""

from __future__ import annotations

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest

from components import registry
from components.train import predict_positive
from pipelines.direct import train_and_register
from serving.traffic import instances, v2_request
from tests.support.predictor_process import running_predictor
from tests.unit.test_own_estimator import OWN, THIRD_PARTY, own_spec

ROWS = 64
ESTIMATORS = {
    "churn-xgb": ("xgboost:XGBClassifier", "onnx"),
    "churn-lgbm": ("lightgbm:LGBMClassifier", "onnx"),
    "churn-own": (OWN, "sklearn"),
}


@pytest.fixture(scope="module")
def registered(churn_spec, churn_frame, tmp_path_factory):
    """Each estimator as the first version (@champion) of its own model, in one real MLflow store."""
    import yaml

    from components.spec import parse_spec

    home = tmp_path_factory.mktemp("own-estimators")
    uri = f"sqlite:///{home / 'mlflow.db'}"
    specs = {}
    for name, (estimator, _) in ESTIMATORS.items():
        data = yaml.safe_load(own_spec(churn_spec, estimator, THIRD_PARTY.get(estimator, {})).to_yaml())
        data["name"] = name
        specs[name] = parse_spec(yaml.safe_dump(data))
        assert train_and_register(specs[name], churn_frame, uri, home).alias == "champion"
    return uri, home, specs


def _requests(spec, frame):
    """The same rows as a V1 and a V2 request, as a client sends them (missing numbers as null)."""
    rows = instances(spec, frame)
    return {"instances": rows}, v2_request(spec, rows)


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_an_own_estimator_is_served_with_the_answers_of_its_pipeline(registered, churn_frame, name, tmp_path):
    uri, _, specs = registered
    spec, serving_format = specs[name], ESTIMATORS[name][1]
    version = registry.connect(uri).get_model_version_by_alias(name, "champion")
    assert version.tags[registry.TAG_SERVING_FORMAT] == serving_format
    note = version.tags[registry.TAG_ONNX_NOTE]
    if serving_format == "onnx":
        assert note.startswith("ONNX parity on"), note
    else:
        assert note.startswith("ONNX conversion failed") and "serving scikit-learn" in note

    # Rows missing a total (the source's new customers) included: the imputer is part of the contract.
    missing = churn_frame[churn_frame["total_charges"].isna()].head(4)
    frame = pd.concat([missing, churn_frame.sample(ROWS - len(missing), random_state=7)])
    mlflow.set_tracking_uri(uri)
    expected = predict_positive(mlflow.sklearn.load_model(f"models:/{name}@champion"), frame, spec)
    v1, v2 = _requests(spec, frame)
    with running_predictor(uri, f"models:/{name}@champion", tmp_path, name=name) as predictor:
        with httpx.Client(base_url=predictor.base_url, timeout=30) as client:
            metadata = client.get(f"/v2/models/{name}").json()
            answered_v1 = client.post(f"/v1/models/{name}:predict", json=v1)
            answered_v2 = client.post(f"/v2/models/{name}/infer", json=v2)
        log = predictor.log_path.read_text()
    assert metadata["platform"] == {"onnx": "onnxruntime_onnx", "sklearn": "sklearn"}[serving_format]
    if serving_format == "sklearn":
        assert f"{name} v1: serving scikit-learn: ONNX conversion failed" in log
    assert answered_v1.status_code == 200, answered_v1.text
    got_v1 = np.array([p["probability"] for p in answered_v1.json()["predictions"]])
    np.testing.assert_allclose(got_v1, expected, atol=1e-5)
    assert answered_v2.status_code == 200, answered_v2.text
    outputs = {o["name"]: o for o in answered_v2.json()["outputs"]}
    np.testing.assert_allclose(outputs["probability"]["data"], expected, atol=1e-5)
