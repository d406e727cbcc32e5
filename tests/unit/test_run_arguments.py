"""The run arguments every KFP run gets (`shepherd submit`, the webhook's drift-triggered retraining):
one typed object, checked against the compiled pipeline's parameters. The KFP API server is the
process edge: a recording client stands in for `kfp.Client`, everything else is real (the compiled
package, a real MLflow registry holding a @champion)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import kfp
import pytest
import yaml

from components.errors import PipelineRunError
from components.run_arguments import IMAGE_FEATURE_REPO, PipelineArguments, pipeline_parameters
from pipelines.compile import DEFAULT_OUTPUT
from pipelines.pipeline import training_pipeline


def _root_parameters(package: Path) -> dict:
    return yaml.safe_load(Path(package).read_text())["root"]["inputDefinitions"]["parameters"]


def _required(package: Path) -> set[str]:
    """Parameters without a default: KFP rejects a run that does not give each of them."""
    return {
        name for name, p in _root_parameters(package).items() if "defaultValue" not in p and not p.get("isOptional")
    }


@pytest.fixture
def kfp_runs(monkeypatch):
    """kfp.Client at its process edge: records each run it is asked to create, with the package's
    required parameters read while the package still exists."""
    runs: list[dict] = []

    class RecordingClient:
        def __init__(self, host: str):
            self.host = host

        def create_run_from_pipeline_package(self, pipeline_file, arguments, **options):
            runs.append({"host": self.host, "required": _required(pipeline_file), "arguments": arguments, **options})
            return SimpleNamespace(run_id=f"run-{len(runs)}")

    monkeypatch.setattr(kfp, "Client", RecordingClient)
    return runs


def test_the_golden_file_has_required_parameters_to_check():
    assert {"spec_yaml", "tracking_uri", "feature_repo"} <= _required(DEFAULT_OUTPUT)


def test_the_typed_arguments_are_exactly_the_pipelines_parameters():
    fields = {f.name for f in dataclasses.fields(PipelineArguments)}
    assert fields == set(training_pipeline.component_spec.inputs) == set(_root_parameters(DEFAULT_OUTPUT))
    assert {name for name, required in pipeline_parameters(DEFAULT_OUTPUT).items() if required} == _required(
        DEFAULT_OUTPUT
    )


def test_the_webhooks_retraining_run_gets_every_required_parameter(kfp_runs, registered_churn, churn_spec):
    from monitoring.webhook import KfpRetrainer

    retrain = KfpRetrainer("http://kfp.example", registered_churn["tracking_uri"], DEFAULT_OUTPUT, "http://drift/")
    assert retrain("churn", "alert ShepherdChampionDrift") == "KFP run run-1"
    (run,) = kfp_runs
    assert run["required"] == _required(DEFAULT_OUTPUT)
    assert run["required"] <= set(run["arguments"]), sorted(run["required"] - set(run["arguments"]))
    assert set(run["arguments"]) <= set(_root_parameters(DEFAULT_OUTPUT))
    assert run["arguments"]["feature_repo"] == IMAGE_FEATURE_REPO
    assert run["arguments"]["serving_target"] == "kubernetes" and run["arguments"]["drift_url"] == "http://drift/"
    assert run["arguments"]["tracking_uri"] == registered_churn["tracking_uri"]
    # The champion's stored spec, not the file in this checkout.
    assert yaml.safe_load(run["arguments"]["spec_yaml"])["name"] == churn_spec.name


def test_submit_gives_every_required_parameter(kfp_runs, churn_spec):
    from pipelines.submit import submit_run

    run_id, state = submit_run(
        "http://kfp.example", churn_spec, "http://mlflow:5000", "/repo", "shepherd", wait=False, drift_url="http://d/"
    )
    assert (run_id, state) == ("run-1", None)
    (run,) = kfp_runs
    assert run["required"] == _required(DEFAULT_OUTPUT)
    assert run["arguments"] == {
        "spec_yaml": churn_spec.to_yaml(),
        "tracking_uri": "http://mlflow:5000",
        "feature_repo": "/repo",
        "serving_target": "kubernetes",
        "drift_url": "http://d/",
    }
    assert run["service_account"] == "shepherd-pipeline-runner" and run["experiment_name"] == "shepherd"


def _package_with(tmp_path: Path, change) -> Path:
    spec = yaml.safe_load(DEFAULT_OUTPUT.read_text())
    change(spec["root"]["inputDefinitions"]["parameters"])
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_a_package_with_a_new_required_parameter_is_refused_before_kfp_sees_the_run(tmp_path):
    package = _package_with(tmp_path, lambda params: params.update(region={"parameterType": "STRING"}))
    arguments = PipelineArguments(spec_yaml="name: x", tracking_uri="http://mlflow", feature_repo="/repo")
    with pytest.raises(PipelineRunError, match=r"missing required \['region'\], unknown \[\]"):
        arguments.for_package(package)


def test_a_package_without_one_of_the_parameters_is_refused(tmp_path):
    package = _package_with(tmp_path, lambda params: params.pop("drift_url"))
    arguments = PipelineArguments(spec_yaml="name: x", tracking_uri="http://mlflow", feature_repo="/repo")
    with pytest.raises(PipelineRunError, match=r"missing required \[\], unknown \['drift_url'\]"):
        arguments.for_package(package)


@pytest.mark.parametrize("empty", ["spec_yaml", "tracking_uri", "feature_repo"])
def test_an_empty_required_argument_is_refused_naming_it(empty):
    values = {"spec_yaml": "name: x", "tracking_uri": "http://mlflow", "feature_repo": "/repo", empty: ""}
    with pytest.raises(PipelineRunError, match=f"pipeline argument {empty}: required"):
        PipelineArguments(**values)
