"""Every Shepherd process runs from the real image, as the Helm chart runs it (uid 10001, read-only root
filesystem, only /tmp writable, no capabilities): `mlflow server` on PostgreSQL with proxied artifacts,
the predictor serving a model registered through that server (V1 and V2 answered, equal to the model in
this process), the drift service, the alert webhook, the rollout controller, the CLI, the KFP executor,
and Feast on a PostgreSQL store shared with this process."""

from __future__ import annotations

import time

import httpx
import mlflow
import numpy as np
import pytest

from components import features, train
from pipelines.direct import train_and_register
from serving.local_plane import free_port
from serving.predictor import predictor_command
from serving.traffic import instances
from tests.support.containers import run, running, shepherd_image, started

ROWS = 5


@pytest.fixture(scope="module")
def image() -> str:
    return shepherd_image()


def _wait_answering(url: str, name: str, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert running(name), f"container {name} exited before {url} answered"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer 200 within {seconds} s")


@pytest.fixture(scope="module")
def mlflow_server(image, tmp_path_factory, postgres):
    """`mlflow server` from the image as the chart runs it with an external database: the backend store
    in PostgreSQL (`postgresql://`, the URI form MLflow documents), artifacts on a volume (the chart's
    PVC), proxied to clients."""
    store = tmp_path_factory.mktemp("mlflow-volume")
    store.chmod(0o777)  # the container's uid 10001 writes there, as fsGroup allows on a cluster
    backend = postgres.create_database("mlflow_image").replace("postgresql+psycopg://", "postgresql://")
    port = free_port()
    command = ["mlflow", "server", "--host=127.0.0.1", f"--port={port}", "--serve-artifacts"]
    command += [f"--backend-store-uri={backend}", "--artifacts-destination=/mlflow/artifacts"]
    command += ["--allowed-hosts=localhost*,127.0.0.1*", "--workers=1"]
    with started(image, *command, volumes={store: "/mlflow"}) as name:
        url = f"http://127.0.0.1:{port}"
        _wait_answering(f"{url}/health", name)
        yield url


@pytest.fixture(scope="module")
def registered(mlflow_server, churn_spec, churn_frame, tmp_path_factory):
    """Version 1 of churn registered through the containerised server (artifacts uploaded through it)."""
    assert train_and_register(churn_spec, churn_frame, mlflow_server, tmp_path_factory.mktemp("train")).version == "1"
    return mlflow_server


def test_the_image_runs_as_uid_10001_on_a_read_only_root(image):
    result = run(
        image,
        "sh",
        "-c",
        "id -u; touch /opt/shepherd/x 2>/dev/null && echo writable; touch /tmp/x && echo tmp-ok; shepherd --help",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == ["10001", "tmp-ok"], result.stdout  # no "writable": the root filesystem is read-only
    assert "Usage: shepherd" in result.stdout


def test_the_kfp_executor_and_every_component_import_in_the_image(image):
    modules = "kfp.dsl.executor_main, components.validate, components.train, components.evaluate, components.deploy"
    result = run(image, "python", "-c", f"import {modules}; print('ok')")
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_the_image_trains_and_converts_the_estimators_it_ships(image):
    """XGBoost and LightGBM (with the OpenMP runtime they load) fit and convert to ONNX in the image."""
    probe = (
        "import numpy as np, lightgbm, xgboost\n"
        "from components.onnx_export import _register_converter\n"
        "X = np.random.default_rng(0).normal(size=(200, 3)); y = (X[:, 0] > 0).astype(int)\n"
        "for est in (xgboost.XGBClassifier(n_estimators=5), lightgbm.LGBMClassifier(n_estimators=5, verbose=-1)):\n"
        "    assert _register_converter(est.fit(X, y))\n"
        "print('ok')"
    )
    result = run(image, "python", "-c", probe)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_the_predictor_serves_a_model_registered_through_the_server(image, registered, churn_spec, churn_frame):
    port = free_port()
    command = predictor_command("churn", "models:/churn/1", registered, port, host="127.0.0.1")
    rows = instances(churn_spec, churn_frame.head(ROWS))
    mlflow.set_tracking_uri(registered)
    expected = train.predict_positive(mlflow.sklearn.load_model("models:/churn/1"), churn_frame.head(ROWS), churn_spec)
    with started(image, "python", *command[1:]) as name:
        base = f"http://127.0.0.1:{port}"
        _wait_answering(f"{base}/v2/health/ready", name)
        v1 = httpx.post(f"{base}/v1/models/churn:predict", json={"instances": rows}, timeout=30)
        assert v1.status_code == 200, v1.text
        np.testing.assert_allclose([p["probability"] for p in v1.json()["predictions"]], expected, atol=1e-5)
        inputs = [
            {
                "name": f.name,
                "shape": [ROWS],
                "datatype": "BYTES" if f.type == "category" else "FP64",
                "data": [r[f.name] for r in rows],
            }
            for f in churn_spec.features
        ]
        v2 = httpx.post(f"{base}/v2/models/churn/infer", json={"inputs": inputs}, timeout=30)
        assert v2.status_code == 200, v2.text
        outputs = {o["name"]: o["data"] for o in v2.json()["outputs"]}
        np.testing.assert_allclose(outputs["probability"], expected, atol=1e-5)


def test_the_drift_service_answers(image, registered):
    port = free_port()
    with started(image, "python", "-m", "monitoring.drift", f"--port={port}", f"--tracking-uri={registered}") as name:
        _wait_answering(f"http://127.0.0.1:{port}/healthz", name)
        assert "shepherd_drift" in httpx.get(f"http://127.0.0.1:{port}/metrics").text


def test_the_webhook_answers_and_refuses_alerts_without_its_token(image, registered, tmp_path):
    secret = tmp_path / "webhook"
    secret.mkdir()
    (secret / "token").write_text("s3cret")
    secret.chmod(0o755)
    (secret / "token").chmod(0o644)
    port = free_port()
    command = [
        "python",
        "-m",
        "monitoring.webhook",
        "--host=127.0.0.1",
        f"--port={port}",
        f"--tracking-uri={registered}",
    ]
    command += ["--backend=http://127.0.0.1:9", "--home=/tmp/shepherd", "--token-file=/etc/shepherd/webhook/token"]
    with started(image, *command, volumes={secret: "/etc/shepherd/webhook:ro"}) as name:
        _wait_answering(f"http://127.0.0.1:{port}/healthz", name)
        assert httpx.post(f"http://127.0.0.1:{port}/alerts", json={"alerts": []}).status_code == 401


def test_the_rollout_controller_runs_and_reports_an_unreachable_backend(image, registered):
    port = free_port()
    command = ["shepherd", "rollout", "controller", "--backend=http://127.0.0.1:9", "--metrics=scrape"]
    command += [f"--port={port}", "--interval-seconds=1", f"--tracking-uri={registered}"]
    with started(image, *command) as name:
        metrics = f"http://127.0.0.1:{port}/metrics"
        _wait_answering(metrics, name)
        deadline = time.monotonic() + 60
        while "shepherd_rollout_backend_up 0.0" not in httpx.get(metrics).text:
            assert time.monotonic() < deadline, httpx.get(metrics).text[-2000:]
            time.sleep(0.5)
        assert running(name)  # backing off, not exiting


def test_feast_in_the_image_publishes_to_a_postgres_store_this_process_reads(image, postgres, churn_spec, churn_frame):
    """The materialize step's code in a container writes Feast's registry, offline rows and online store to
    one PostgreSQL database; this process (another pod, on a cluster) reads the online values back."""
    location = postgres.create_database("feast_image")
    script = """
import sys
from datetime import UTC, datetime
import pandas as pd
from components import features
from components.spec import load_spec
spec = load_spec("/opt/shepherd/share/shepherd/specs/churn.yaml")
rows = pd.read_json(sys.stdin, orient="records", convert_dates=["event_timestamp"])
store = features.open_store(sys.argv[1])
print(features.publish_features(store, spec, rows))
features.materialize_online(store, spec, datetime.now(UTC))
"""
    rows = churn_frame[[churn_spec.entity.key, "event_timestamp", *churn_spec.feature_names]].head(ROWS)
    result = run(image, "python", "-c", script, location, stdin=rows.to_json(orient="records", date_format="iso"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "offline_churn_feature_rows" in result.stdout.splitlines()  # then Feast's materialize progress
    online = features.online_features(features.open_store(location), churn_spec, rows[churn_spec.entity.key].tolist())
    assert online["monthly_charges"].tolist() == pytest.approx(rows["monthly_charges"].tolist())
    assert online["contract"].tolist() == rows["contract"].tolist()
