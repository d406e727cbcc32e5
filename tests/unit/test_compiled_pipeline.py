"""The compiled pipeline YAML is a golden file: any change to the DAG shows up as a reviewed diff."""

from __future__ import annotations

import yaml

from pipelines.compile import DEFAULT_OUTPUT, compile_pipeline

REGENERATE = "the DAG changed: run `make compile` and review the diff of pipelines/training_pipeline.yaml"


def _without_sdk_version(text: str) -> list:
    docs = list(yaml.safe_load_all(text))
    for doc in docs:
        doc.pop("sdkVersion", None)
    return docs


def test_compiled_pipeline_matches_the_golden_file(tmp_path):
    fresh = compile_pipeline(tmp_path / "pipeline.yaml").read_text()
    assert _without_sdk_version(fresh) == _without_sdk_version(DEFAULT_OUTPUT.read_text()), REGENERATE


def test_golden_file_has_the_conditional_deploy_and_the_fingerprint_skip():
    spec = yaml.safe_load(DEFAULT_OUTPUT.read_text())
    root_tasks = spec["root"]["dag"]["tasks"]
    assert set(root_tasks) == {"extract-op", "condition-1"}
    skip = root_tasks["condition-1"]["triggerPolicy"]["condition"]
    assert skip == "inputs.parameter_values['pipelinechannel--extract-op-Output'] == ''"
    inner = spec["components"]["comp-condition-1"]["dag"]["tasks"]
    assert {"validate-op", "materialize-op", "train-op", "evaluate-op", "register-op", "condition-2"} <= set(inner)
    promote = inner["condition-2"]["triggerPolicy"]["condition"]
    assert promote == "inputs.parameter_values['pipelinechannel--evaluate-op-Output'] == true"
    deploy = spec["components"]["comp-condition-2"]["dag"]["tasks"]
    assert set(deploy) == {"deploy-op"}
    # Steps run the platform image and install nothing at run time.
    for name, executor in spec["deploymentSpec"]["executors"].items():
        container = executor["container"]
        assert container["image"].startswith("ghcr.io/shepherd-mlops/shepherd:"), name
        assert "pip install" not in " ".join(container["command"]), name


def _all_tasks(spec: dict) -> dict[str, dict]:
    """Every task of the compiled DAG, in the root and in the control-flow groups, by task name."""
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    return {name: task for dag in dags for name, task in dag["tasks"].items()}


def test_materialize_publishes_only_after_training_succeeded():
    tasks = _all_tasks(yaml.safe_load(DEFAULT_OUTPUT.read_text()))
    # KFP starts a task only when every task in dependentTasks succeeded.
    assert "train-op" in tasks["materialize-op"]["dependentTasks"]
    assert "materialize-op" not in tasks["train-op"].get("dependentTasks", [])


# Steps that read or write outside their artifacts (source, registry, Feast, cluster): never served from cache.
UNCACHEABLE = {"extract-op", "train-op", "evaluate-op", "register-op", "materialize-op", "deploy-op"}


def test_steps_with_side_effects_or_outside_reads_are_never_cached():
    tasks = _all_tasks(yaml.safe_load(DEFAULT_OUTPUT.read_text()))
    for name in UNCACHEABLE:
        # An absent enableCache is the proto default, false.
        assert tasks[name]["cachingOptions"].get("enableCache", False) is False, name
    # validate is a pure function of the training set and the spec: the only cached step.
    cached = {name for name, task in tasks.items() if task.get("cachingOptions", {}).get("enableCache")}
    assert cached == {"validate-op"}
