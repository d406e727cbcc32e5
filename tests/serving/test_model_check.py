"""`python -m serving.model_check <models:/ URI> <directory>`, as KServe runs it in a predictor pod's init container
(tests/cluster/test_kserve.py runs it there): a registered version passes and is recorded; a missing version, a
changed artifact, a registry it cannot reach and a missing MLFLOW_TRACKING_URI each fail with one line naming the
problem, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.serving.test_loading import _stored, fresh_registry  # noqa: F401 (a fixture)


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
    assert recorded == {"model_uri": "models:/churn/1", "version": "1", "serving_format": "onnx", "task": "binary"}


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
