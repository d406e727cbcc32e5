"""The predictor behind a real `kserve.ModelServer` process, over HTTP on loopback."""

from __future__ import annotations

import json
import subprocess
import time

import httpx
import mlflow
import numpy as np
import pytest

from components import train
from serving.local_plane import free_port
from serving.predictor import predictor_command
from tests.conftest import REPO

ROWS = 8


@pytest.fixture(scope="module")
def server(registered_churn, tmp_path_factory):
    port = free_port()
    # A file, not a pipe: an unread pipe fills up with access logs and blocks the server.
    log_path = tmp_path_factory.mktemp("predictor") / "predictor.log"
    log = open(log_path, "w")  # noqa: SIM115 (closed in teardown)
    command = predictor_command("churn", "models:/churn@champion", registered_churn["tracking_uri"], port)
    process = subprocess.Popen(
        command,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"predictor exited: {log_path.read_text()}")
        try:
            if httpx.get(f"{base}/v2/health/ready", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.3)
    else:
        process.kill()
        pytest.fail("predictor did not become ready in 60 s")
    with httpx.Client(base_url=base, timeout=10) as client:
        yield client
    process.terminate()
    process.wait(timeout=15)
    log.close()


@pytest.fixture(scope="module")
def rows(churn_frame, churn_spec):
    """Real customers as JSON-ready dicts (NaN total_charges as null, like a client would send)."""
    frame = train.feature_frame(churn_frame.head(ROWS), churn_spec)
    return [
        {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
        for row in json.loads(frame.to_json(orient="records"))
    ]


@pytest.fixture(scope="module")
def expected(registered_churn, churn_frame, churn_spec):
    """In-process probabilities from the registered scikit-learn pipeline itself."""
    mlflow.set_tracking_uri(registered_churn["tracking_uri"])
    model = mlflow.sklearn.load_model("models:/churn@champion")
    return train.predict_positive(model, churn_frame.head(ROWS), churn_spec)


def test_v1_answers_equal_in_process_predictions(server, rows, expected):
    response = server.post("/v1/models/churn:predict", json={"instances": rows})
    assert response.status_code == 200, response.text
    body = response.json()
    got = np.array([p["probability"] for p in body["predictions"]])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert [p["label"] for p in body["predictions"]] == ["Yes" if p >= 0.5 else "No" for p in expected]
    assert body["model_version"] == "1"


def test_v2_answers_equal_in_process_predictions(server, rows, expected, churn_spec):
    inputs = []
    for f in churn_spec.features:
        values = [r[f.name] for r in rows]
        datatype = "BYTES" if f.type == "category" else "FP64"
        inputs.append({"name": f.name, "shape": [len(rows)], "datatype": datatype, "data": values})
    response = server.post("/v2/models/churn/infer", json={"id": "req-1", "inputs": inputs})
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    np.testing.assert_allclose(outputs["probability"]["data"], expected, atol=1e-5)
    assert outputs["label"]["datatype"] == "BYTES" and len(outputs["label"]["data"]) == len(rows)


def _row(rows, **changes):
    row = dict(rows[0])
    for key, value in changes.items():
        if value is _DROP:
            row.pop(key)
        else:
            row[key] = value
    return row


_DROP = object()


def _v1(rows, **changes):
    return {"json": {"instances": [_row(rows, **changes)]}}


BAD_V1 = [
    ("missing field", lambda r: _v1(r, tenure=_DROP), "instances[0].tenure: required field missing"),
    ("extra field", lambda r: _v1(r, shoe_size=42), "instances[0].shoe_size: unknown field"),
    ("wrong type", lambda r: _v1(r, tenure="twelve"), "instances[0].tenure: expected a number, got str"),
    ("bool for number", lambda r: _v1(r, monthly_charges=True), "instances[0].monthly_charges: expected a number"),
    ("number for category", lambda r: _v1(r, contract=2), "instances[0].contract: expected a string category"),
    ("unknown category", lambda r: _v1(r, contract="Weekly"), "instances[0].contract: unknown category 'Weekly'"),
    ("null not allowed", lambda r: _v1(r, tenure=None), "instances[0].tenure: null/NaN not allowed"),
    # NaN is not JSON: the body is refused before any field is read.
    (
        "NaN token",
        lambda r: {
            "content": '{"instances": [' + json.dumps(_row(r)).replace('"tenure": 1', '"tenure": NaN') + "]}",
            "headers": {"content-type": "application/json"},
        },
        "Unrecognized request format",
    ),
    ("empty batch", lambda r: {"json": {"instances": []}}, "instances: empty batch"),
    ("no instances", lambda r: {"json": {"rows": [r[0]]}}, "instances: required field missing"),
    ("instances not a list", lambda r: {"json": {"instances": r[0]}}, "instances: expected a list"),
    ("row not an object", lambda r: {"json": {"instances": [[1, 2, 3]]}}, "instances[0]: expected an object"),
    ("body not an object", lambda r: {"json": [r[0]]}, "body: expected a JSON object"),
    (
        "not JSON content type",
        lambda r: {"content": json.dumps({"instances": [r[0]]}), "headers": {"content-type": "text/plain"}},
        "content-type: expected",
    ),
    (
        "malformed JSON",
        lambda r: {"content": '{"instances": [', "headers": {"content-type": "application/json"}},
        "Unrecognized request format",
    ),
    (
        "entity key without store",
        lambda r: {"json": {"instances": [{"customer_id": 7}]}},
        "instances[0]: only 'customer_id' given",
    ),
    ("too many rows", lambda r: {"json": {"instances": [r[0]] * 10_001}}, "instances: 10001 rows, at most 10000"),
]


@pytest.mark.parametrize(("case", "make", "expected"), BAD_V1, ids=[c[0] for c in BAD_V1])
def test_bad_v1_payloads_get_400_naming_the_field(server, rows, case, make, expected):
    response = server.post("/v1/models/churn:predict", **make(rows))
    assert response.status_code == 400, (case, response.status_code, response.text)
    assert expected in response.json()["error"], response.text


def _v2(churn_spec, rows, **override):
    inputs = [
        {
            "name": f.name,
            "shape": [1],
            "datatype": "BYTES" if f.type == "category" else "FP64",
            "data": [rows[0][f.name]],
        }
        for f in churn_spec.features
    ]
    for name, change in override.items():
        tensor = next(t for t in inputs if t["name"] == name)
        if change is _DROP:
            inputs.remove(tensor)
        else:
            tensor.update(change)
    return {"inputs": inputs}


BAD_V2 = [
    ("no inputs", lambda s, r: {}, "inputs: Field required"),
    ("inputs not a list", lambda s, r: {"inputs": "x"}, "inputs: Input should be a valid list"),
    ("missing input", lambda s, r: _v2(s, r, tenure=_DROP), "inputs: missing input 'tenure'"),
    (
        "unknown input",
        lambda s, r: {"inputs": [*_v2(s, r)["inputs"], {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]},
        "unknown input 'x'",
    ),
    (
        "bytes for number",
        lambda s, r: _v2(s, r, tenure={"datatype": "BYTES", "data": ["1"]}),
        "inputs[tenure].datatype: expected a numeric datatype",
    ),
    ("shape mismatch", lambda s, r: _v2(s, r, tenure={"shape": [2]}), "inputs[tenure].data: 1 values for shape [2]"),
    (
        "unknown category",
        lambda s, r: _v2(s, r, contract={"data": ["Weekly"]}),
        "inputs[contract].data[0]: unknown category 'Weekly'",
    ),
]


@pytest.mark.parametrize(("case", "make", "expected"), BAD_V2, ids=[c[0] for c in BAD_V2])
def test_bad_v2_payloads_get_400_naming_the_field(server, rows, churn_spec, case, make, expected):
    response = server.post("/v2/models/churn/infer", json=make(churn_spec, rows))
    assert response.status_code == 400, (case, response.status_code, response.text)
    assert expected in response.json()["error"], response.text


def test_server_keeps_serving_and_counts_outcomes(server, rows):
    for _, make, _ in BAD_V1:
        server.post("/v1/models/churn:predict", **make(rows))
    assert server.post("/v1/models/churn:predict", json={"instances": rows}).status_code == 200
    metrics = server.get("/metrics").text
    labels = 'model="churn",outcome="{}",role="champion",version="1"'
    invalid = _sample(metrics, "shepherd_predictor_requests_total{" + labels.format("invalid") + "}")
    ok = _sample(metrics, "shepherd_predictor_requests_total{" + labels.format("ok") + "}")
    assert invalid >= len(BAD_V1) - 2  # malformed JSON and the NaN token never reach the model
    assert ok >= 1
    assert "request_predict_seconds" in metrics  # KServe's own histograms sit alongside ours
    assert (
        _sample(metrics, 'shepherd_predictor_prediction_score_count{model="churn",role="champion",version="1"}') >= ROWS
    )


def _sample(metrics: str, series: str) -> float:
    line = next(line for line in metrics.splitlines() if line.startswith(series))
    return float(line.rsplit(" ", 1)[1])
