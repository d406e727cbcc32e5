"""`python -m serving.model_check <models:/ URI> <directory>`, as KServe runs it in a predictor pod's init container
(tests/cluster/test_kserve.py runs it there): a registered version passes and is recorded; a missing version, a
changed artifact, a registry it cannot reach and a missing MLFLOW_TRACKING_URI each fail with one line naming the
problem, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import numpy as np
import pytest

from components import registry
from components.model_input import columns_of
from serving.predictor import load_for_serving, load_version
from serving.traffic import instances
from tests.conftest import REPO
from tests.serving.test_loading import _stored, fresh_registry  # noqa: F401 (a fixture)
from tests.support.predictor_process import running_predictor


def _check(uri: str, directory, tracking_uri: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    if tracking_uri is not None:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    return subprocess.run(
        [sys.executable, "-m", "serving.model_check", uri, str(directory)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=180,
        check=False,
    )


def test_a_registered_version_passes_and_is_recorded(registered_churn, tmp_path):
    result = _check("models:/churn/1", tmp_path / "models", registered_churn["tracking_uri"])
    assert result.returncode == 0, result.stderr
    assert "version 1 verified (onnx, binary)" in result.stdout
    recorded = json.loads((tmp_path / "models" / "shepherd-model.json").read_text())
    assert {k: recorded[k] for k in ("model_uri", "version", "serving_format", "task")} == {
        "model_uri": "models:/churn/1",
        "version": "1",
        "serving_format": "onnx",
        "task": "binary",
    }
    # The files the predictor will load, and the sha256 registration recorded for the model.
    model = tmp_path / "models" / recorded["model"]
    assert (tmp_path / "models" / recorded["spec"]).is_file() and model.is_file()
    client = registry.connect(registered_churn["tracking_uri"])
    assert recorded["sha256"] == client.get_model_version("churn", "1").tags[registry.TAG_ONNX_SHA256]


@pytest.mark.parametrize(
    ("case", "code", "message"),
    [
        ("missing-version", 5, "churn"),
        ("changed-artifact", 8, "recorded at registration"),
        ("no-registry-setting", 2, "MLFLOW_TRACKING_URI is not set"),
    ],
)
def test_what_would_break_the_predictor_fails_the_check_in_one_line(fresh_registry, tmp_path, case, code, message):  # noqa: F811
    uri, home = fresh_registry
    model_uri, tracking_uri = "models:/churn/1", uri
    if case == "missing-version":
        model_uri = "models:/churn/7"
    elif case == "changed-artifact":
        onnx = _stored(home, "model.onnx")
        onnx.write_bytes(onnx.read_bytes()[:-1] + b"\x00")
    else:
        tracking_uri = None
    result = _check(model_uri, tmp_path / "models", tracking_uri)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and message in error_lines[0], result.stderr
    assert result.returncode == code
    assert not (tmp_path / "models" / "shepherd-model.json").exists()


NO_REGISTRY = "http://127.0.0.1:9"  # nothing listens there: any call to the registry fails


def test_the_predictor_serves_what_the_init_container_fetched_without_the_registry(
    registered_churn, churn_spec, churn_frame, tmp_path
):
    """The pod's way: the init container fetches into /mnt/models, the predictor (`--model_dir`, from the
    ServingRuntime) loads from there and never calls the registry; it answers as the registered version does."""
    models = tmp_path / "models"
    assert _check("models:/churn/1", models, registered_churn["tracking_uri"]).returncode == 0
    rows = churn_frame.sample(20, random_state=5)
    expected = load_version(registered_churn["tracking_uri"], "models:/churn/1").score(columns_of(rows, churn_spec))
    with running_predictor(NO_REGISTRY, "models:/churn/1", tmp_path, extra=(f"--model_dir={models}",)) as predictor:
        answered = httpx.post(
            f"{predictor.base_url}/v1/models/churn:predict", json={"instances": instances(churn_spec, rows)}, timeout=30
        )
        log = predictor.log_path.read_text()
    assert answered.status_code == 200, answered.text
    got = np.array([p["probability"] for p in answered.json()["predictions"]])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert f"serving churn v1 (onnx, loaded from {models}, fetched and verified by the storage initializer)" in log


def test_a_fetched_model_changed_on_disk_is_refused_not_fetched_again(registered_churn, tmp_path):
    models = tmp_path / "models"
    assert _check("models:/churn/1", models, registered_churn["tracking_uri"]).returncode == 0
    onnx = models / json.loads((models / "shepherd-model.json").read_text())["model"]
    onnx.write_bytes(onnx.read_bytes()[:-1] + b"\x00")
    result = subprocess.run(
        [
            *(sys.executable, "-m", "serving.predictor", "--model_name=churn", "--model_uri=models:/churn/1"),
            *(f"--tracking_uri={registered_churn['tracking_uri']}", f"--model_dir={models}", "--http_port=0"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert result.returncode == 8, result.stdout + result.stderr
    assert "recorded at registration" in result.stdout and "Traceback" not in result.stdout + result.stderr


def test_a_directory_holding_another_version_is_not_used(registered_churn, tmp_path):
    """A manifest for another URI (a volume reused, another version's files): the predictor fetches what it was
    asked for from the registry. The directory's model is broken too, so loading it would have been refused."""
    models = tmp_path / "models"
    assert _check("models:/churn/1", models, registered_churn["tracking_uri"]).returncode == 0
    manifest = json.loads((models / "shepherd-model.json").read_text())
    (models / "shepherd-model.json").write_text(json.dumps({**manifest, "model_uri": "models:/churn/2"}))
    (models / manifest["model"]).write_bytes(b"not this version")
    loaded = load_for_serving(registered_churn["tracking_uri"], "models:/churn/1", models)
    assert (loaded.version, loaded.serving_format) == ("1", "onnx")
