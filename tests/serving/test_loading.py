"""Loading a registered version: sha256 verification, ONNX first, scikit-learn fallback, Feast lookup."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from components import features, registry, train
from components.errors import RegistryError
from components.model_input import columns_of, onnx_feeds
from components.onnx_export import export
from pipelines.direct import train_and_register
from serving.payload import PayloadError, PayloadParser
from serving.predictor import ModelIntegrityError, feast_lookup, load_version, main, parse_model_uri


@pytest.fixture
def fresh_registry(tmp_path, churn_spec, churn_frame):
    """A registry of its own: these tests change stored artifacts."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    train_and_register(churn_spec, churn_frame, uri, tmp_path)
    return uri, tmp_path


def test_onnx_twin_matches_scikit_learn(churn_spec, churn_frame, registered_churn):
    loaded = load_version(registered_churn["tracking_uri"], "models:/churn/1")
    assert loaded.serving_format == "onnx" and loaded.version == "1"
    model = train.fit(churn_frame, churn_spec).pipeline
    rows = churn_frame.sample(200, random_state=1)
    np.testing.assert_allclose(
        loaded.score(columns_of(rows, churn_spec)), train.predict_positive(model, rows, churn_spec), atol=1e-5
    )


def test_unconvertible_pipeline_falls_back_loudly(churn_spec, churn_frame):
    trained = train.fit(churn_frame, churn_spec).pipeline
    odd = make_pipeline(FunctionTransformer(lambda frame: frame), trained)
    result = export(odd, churn_spec, churn_frame.head(50))
    assert result.model is None
    assert result.reason.startswith("ONNX conversion failed") and "serving scikit-learn" in result.reason


def _stored(tmp_path: Path, name: str) -> Path:
    return next(p for p in (tmp_path / "mlartifacts").rglob(name) if p.is_file())


def test_tampered_onnx_artifact_is_refused(fresh_registry, capsys):
    uri, home = fresh_registry
    onnx = _stored(home, "model.onnx")
    onnx.write_bytes(onnx.read_bytes()[:-1] + b"\x00")
    with pytest.raises(ModelIntegrityError, match=r"differs from the .* recorded at registration"):
        load_version(uri, "models:/churn@champion")
    assert main(["--model_name", "churn", "--model_uri", "models:/churn/1", "--tracking_uri", uri]) == 8
    assert "refusing to load" in capsys.readouterr().out


def test_sklearn_fallback_is_verified_too(fresh_registry, churn_spec, churn_frame):
    uri, home = fresh_registry
    client = registry.connect(uri)
    client.set_model_version_tag("churn", "1", registry.TAG_SERVING_FORMAT, "sklearn")
    loaded = load_version(uri, "models:/churn/1")
    assert loaded.serving_format == "sklearn"
    rows = churn_frame.head(20)
    assert loaded.score(columns_of(rows, churn_spec)).shape == (20,)
    pickle = _stored(home, "model.pkl")
    pickle.write_bytes(pickle.read_bytes() + b"tampered")
    with pytest.raises(ModelIntegrityError, match="model: artifact sha256"):
        load_version(uri, "models:/churn/1")


@pytest.mark.parametrize("uri", ["churn/1", "models:/churn", "models:/@champion", "s3://bucket/model"])
def test_bad_model_uri_is_explained(uri):
    with pytest.raises(RegistryError, match="expected models:/<name>/<version>"):
        parse_model_uri(uri)


def test_entity_key_is_enriched_from_the_online_store(tmp_path, churn_spec, churn_frame):
    from components.data import split_source

    feature_rows, _ = split_source(churn_frame.rename(columns={"customer_id": "rownames"}), churn_spec)
    store = features.open_store(tmp_path / "repo")
    features.publish_features(store, churn_spec, feature_rows)
    features.materialize_online(store, churn_spec, datetime(2024, 6, 1, tzinfo=UTC))
    parser = PayloadParser(churn_spec, feast_lookup(str(tmp_path / "repo"), churn_spec))
    columns = parser.from_v1({"instances": [{"customer_id": 3}, {"customer_id": 5}]})
    expected = churn_frame.set_index("customer_id").loc[[3, 5]]
    assert columns["contract"] == list(expected["contract"])
    assert columns["tenure"] == list(expected["tenure"])
    feeds = onnx_feeds(churn_spec, columns)
    assert feeds["tenure"].dtype == np.float32 and feeds["tenure"].shape == (2, 1)
    with pytest.raises(PayloadError, match=r"instances\[0\].customer_id: 999999 has no features"):
        parser.from_v1({"instances": [{"customer_id": 999999}]})


def test_missing_values_follow_the_spec(churn_spec):
    parser = PayloadParser(churn_spec)
    row = {f.name: (f.categories[0] if f.categories else 1) for f in churn_spec.features}
    assert parser.from_v1({"instances": [{**row, "total_charges": None}]})["total_charges"] == [None]
    with pytest.raises(PayloadError, match=r"instances\[0\].tenure: null/NaN not allowed"):
        parser.from_v1({"instances": [{**row, "tenure": float("nan")}]})
    with pytest.raises(PayloadError, match=r"instances\[0\].tenure: expected a finite number"):
        parser.from_v1({"instances": [{**row, "tenure": float("inf")}]})
