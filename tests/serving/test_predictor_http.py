"""The predictor behind a real `kserve.ModelServer` process, over HTTP on loopback."""

from __future__ import annotations

import json

import httpx
import mlflow
import numpy as np
import pytest
import yaml

from components import model_input, train
from components.spec import parse_spec
from pipelines.direct import train_and_register
from serving.traffic import v2_request
from tests.conftest import CHURN_SPEC
from tests.support.predictor_process import running_predictor, sample

ROWS = 8
BIG_INT = "1" + "0" * 400  # a 401-digit integer, as JSON text


@pytest.fixture(scope="module")
def server(registered_churn, tmp_path_factory):
    with (
        running_predictor(
            registered_churn["tracking_uri"], "models:/churn@champion", tmp_path_factory.mktemp("predictor")
        ) as predictor,
        httpx.Client(base_url=predictor.base_url, timeout=10) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def rows(churn_frame, churn_spec):
    """Real customers as JSON-ready dicts (NaN total_charges as null, like a client would send)."""
    frame = model_input.feature_frame(churn_frame.head(ROWS), churn_spec)
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


def test_v2_versioned_infer_answers_the_served_version_and_names_it_otherwise(server, rows, expected, churn_spec):
    """KServe answers every `/versions/<v>/infer` with a 501; a client that pins the version it read from
    the metadata gets the same answer as the plain route, a version not served here a 404 naming both."""
    inputs = [
        {"name": f.name, "shape": [2], "datatype": "BYTES" if f.type == "category" else "FP64"}
        | {"data": [r[f.name] for r in rows[:2]]}
        for f in churn_spec.features
    ]
    pinned = server.post("/v2/models/churn/versions/1/infer", json={"inputs": inputs})
    assert pinned.status_code == 200, pinned.text
    outputs = {o["name"]: o for o in pinned.json()["outputs"]}
    np.testing.assert_allclose(outputs["probability"]["data"], expected[:2], atol=1e-5)
    other = server.post("/v2/models/churn/versions/7/infer", json={"inputs": inputs})
    assert other.status_code == 404
    assert other.json() == {"error": "path: version '7' is not served here (this server serves '1')"}


def _row(rows, **changes):
    row = dict(rows[0])
    for key, value in changes.items():
        if value is _DROP:
            row.pop(key)
        else:
            row[key] = value
    return row


_DROP = object()
_JSON = {"content-type": "application/json"}


def _v1(rows, **changes):
    return {"json": {"instances": [_row(rows, **changes)]}}


def _raw(body: object, **tokens: str) -> dict:
    """`body` as JSON text with each `"<name>"` string replaced by the raw token (NaN, a 400-digit number)."""
    text = json.dumps(body)
    for name, token in tokens.items():
        text = text.replace(json.dumps(f"<{name}>"), token)
    return {"content": text, "headers": _JSON}


def _raw_v1(rows, feature: str, token: str) -> dict:
    return _raw({"instances": [_row(rows, **{feature: "<x>"})]}, x=token)


BAD_V1 = [
    ("missing field", lambda r: _v1(r, tenure=_DROP), "instances[0].tenure: required field missing"),
    ("extra field", lambda r: _v1(r, shoe_size=42), "instances[0].shoe_size: unknown field"),
    ("wrong type", lambda r: _v1(r, tenure="twelve"), "instances[0].tenure: expected a number, got str"),
    ("bool for number", lambda r: _v1(r, monthly_charges=True), "instances[0].monthly_charges: expected a number"),
    ("number for category", lambda r: _v1(r, contract=2), "instances[0].contract: expected a string category"),
    ("list for category", lambda r: _v1(r, contract=["Two year"]), "instances[0].contract: expected a string category"),
    ("object for category", lambda r: _v1(r, contract={"a": 1}), "instances[0].contract: expected a string category"),
    ("unknown category", lambda r: _v1(r, contract="Weekly"), "instances[0].contract: unknown category 'Weekly'"),
    ("null not allowed", lambda r: _v1(r, tenure=None), "instances[0].tenure: null/NaN not allowed"),
    ("beyond float32", lambda r: _v1(r, tenure=1e39), "instances[0].tenure: 1e+39 is beyond the float32 range ±3.4e38"),
    ("below float32", lambda r: _v1(r, monthly_charges=-3.5e38), "instances[0].monthly_charges: -3.5e+38 is beyond"),
    # Not JSON: orjson refuses NaN and a number that is infinite as a double; the body is refused before any field.
    ("NaN token", lambda r: _raw_v1(r, "tenure", "NaN"), "body: not valid JSON"),
    ("400-digit integer", lambda r: _raw_v1(r, "tenure", BIG_INT), "body: not valid JSON (number is infinity"),
    ("empty batch", lambda r: {"json": {"instances": []}}, "instances: empty batch"),
    ("no instances", lambda r: {"json": {"rows": [r[0]]}}, "instances: required field missing"),
    ("instances not a list", lambda r: {"json": {"instances": r[0]}}, "instances: expected a list"),
    ("row not an object", lambda r: {"json": {"instances": [[1, 2, 3]]}}, "instances[0]: expected an object"),
    ("body not an object", lambda r: {"json": [r[0]]}, "body: expected a JSON object"),
    ("body a JSON string", lambda r: {"json": "hello"}, 'body: expected a JSON object like {"instances"'),
    ("malformed JSON", lambda r: {"content": '{"instances": [', "headers": _JSON}, "body: not valid JSON"),
    ("nested 5000 deep", lambda r: {"content": "[" * 5000 + "]" * 5000, "headers": _JSON}, "body: not valid JSON"),
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
    assert response.json()["error"].startswith(expected), response.text


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


def _json(body) -> dict:
    return {"json": body}


BAD_V2 = [
    ("no inputs", lambda s, r: _json({}), "inputs: Field required"),
    ("inputs not a list", lambda s, r: _json({"inputs": "x"}), "inputs: Input should be a valid list"),
    ("missing input", lambda s, r: _json(_v2(s, r, tenure=_DROP)), "inputs: missing input 'tenure'"),
    (
        "unknown input",
        lambda s, r: _json(
            {"inputs": [*_v2(s, r)["inputs"], {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}
        ),
        "inputs[19].name: unknown input 'x'",
    ),
    (
        "bytes for number",
        lambda s, r: _json(_v2(s, r, tenure={"datatype": "BYTES", "data": ["1"]})),
        "inputs[tenure].datatype: expected a numeric datatype",
    ),
    (
        "shape mismatch",
        lambda s, r: _json(_v2(s, r, tenure={"shape": [2]})),
        "inputs[tenure].data: 1 values for shape [2]",
    ),
    (
        "unknown category",
        lambda s, r: _json(_v2(s, r, contract={"data": ["Weekly"]})),
        "inputs[contract].data[0]: unknown category 'Weekly'",
    ),
    (
        "list for category",
        lambda s, r: _json(_v2(s, r, contract={"data": [["Two year", "One year"]]})),
        "inputs[contract].data: nested lists",
    ),
    (
        "nested for shape [n]",
        lambda s, r: _json(_v2(s, r, contract={"data": [["Two year"]]})),
        "inputs[contract].data: nested lists",
    ),
    (
        "nested twice",
        lambda s, r: _json(_v2(s, r, contract={"shape": [1, 1], "data": [[["Two year"]]]})),
        "inputs[contract].data[0]: expected a string category, got list",
    ),
    (
        "400-digit integer",
        lambda s, r: _raw(_v2(s, r, tenure={"data": ["<x>"]}), x=BIG_INT),
        "inputs[tenure].data[0]: (an integer of about 401 digits) is beyond the float32 range ±3.4e38",
    ),
    (
        "beyond float32",
        lambda s, r: _json(_v2(s, r, monthly_charges={"data": [1e39]})),
        "inputs[monthly_charges].data[0]: 1e+39 is beyond the float32 range",
    ),
    (
        "Infinity token",
        lambda s, r: _raw(_v2(s, r, tenure={"data": ["<x>"]}), x="Infinity"),
        "inputs[tenure].data[0]: expected a finite number",
    ),
    (
        "lone surrogate id",
        lambda s, r: _raw({**_v2(s, r), "id": "<x>"}, x=r'"\ud800"'),
        "id: expected Unicode text",
    ),
    ("body a JSON string", lambda s, r: _json("hello"), 'body: expected a JSON object like {"inputs"'),
    ("malformed JSON", lambda s, r: {"content": '{"inputs": [', "headers": _JSON}, "body: not valid JSON"),
    (
        "nested 5000 deep",
        lambda s, r: {"content": "[" * 5000 + "]" * 5000, "headers": _JSON},
        "body: could not be read as JSON (RecursionError",
    ),
    (
        "binary header not a number",
        lambda s, r: {"json": _v2(s, r), "headers": {"inference-header-content-length": "x"}},
        "inference-header-content-length: expected the byte length of the JSON part",
    ),
    (
        "binary header without inputs",
        lambda s, r: {
            "content": b'{"id": "1"}',
            "headers": {"content-type": "application/octet-stream", "inference-header-content-length": "11"},
        },
        "body: binary tensor request does not decode (KeyError",
    ),
]


@pytest.mark.parametrize(("case", "make", "expected"), BAD_V2, ids=[c[0] for c in BAD_V2])
def test_bad_v2_payloads_get_400_naming_the_field(server, rows, churn_spec, case, make, expected):
    response = server.post("/v2/models/churn/infer", **make(churn_spec, rows))
    assert response.status_code == 400, (case, response.status_code, response.text)
    assert response.json()["error"].startswith(expected), response.text


def test_v2_accepts_one_element_rows_for_shape_n_1(server, rows, expected, churn_spec):
    inputs = [
        {
            "name": f.name,
            "shape": [len(rows), 1],
            "datatype": "BYTES" if f.type == "category" else "FP32",
            "data": [[r[f.name]] for r in rows],
        }
        for f in churn_spec.features
    ]
    response = server.post("/v2/models/churn/infer", json={"inputs": inputs})
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    np.testing.assert_allclose(outputs["probability"]["data"], expected, atol=1e-5)


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "Application/JSON", "application/json;"])
@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_parameterised_json_content_types_are_json(server, rows, churn_spec, content_type, protocol):
    path, body = (
        ("/v1/models/churn:predict", {"instances": rows[:2]})
        if protocol == "v1"
        else ("/v2/models/churn/infer", _v2(churn_spec, rows))
    )
    response = server.post(path, content=json.dumps(body), headers={"content-type": content_type})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("path", "content_type", "expected"),
    [
        ("/v1/models/churn:predict", "text/plain", "content-type: expected application/json, got 'text/plain'"),
        ("/v2/models/churn/infer", "text/plain", "content-type: expected application/json, got 'text/plain'"),
        (
            "/v2/models/churn/infer",
            "application/x-www-form-urlencoded",
            "content-type: expected application/json, got 'application/x-www-form-urlencoded'",
        ),
        (
            "/v2/models/churn/infer",
            "application/octet-stream",
            "content-type: application/octet-stream means binary tensors, which need the "
            "inference-header-content-length header",
        ),
    ],
)
def test_bodies_that_are_not_json_get_415(server, rows, path, content_type, expected):
    response = server.post(path, content=json.dumps({"instances": rows[:1]}), headers={"content-type": content_type})
    assert response.status_code == 415, response.text
    assert response.json() == {"error": expected}


def _chunks(total: int, size: int = 2**20):
    sent = 0
    while sent < total:
        yield b" " * min(size, total - sent)
        sent += size


@pytest.mark.parametrize("protocol", ["v1", "v2"])
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_bodies_over_64_mib_get_413_and_the_connection_keeps_serving(server, rows, protocol, framing):
    path = "/v1/models/churn:predict" if protocol == "v1" else "/v2/models/churn/infer"
    size = 64 * 2**20 + 1
    content = b" " * size if framing == "content-length" else _chunks(size)
    response = server.post(path, content=content, headers=_JSON)
    assert response.status_code == 413, response.text[:300]
    assert response.json() == {"error": "body: larger than 64 MiB; send fewer rows per request"}
    assert server.post("/v1/models/churn:predict", json={"instances": rows}).status_code == 200


def test_unknown_routes_answer_in_the_error_shape(server):
    response = server.post("/v1/models/nope:predict", json={"instances": []})
    assert response.status_code == 404
    assert response.json()["error"].startswith("path: Model with name nope does not exist")
    response = server.get("/v2/models/churn/infer")
    assert response.status_code == 405
    assert response.json() == {"error": "method: GET not allowed on /v2/models/churn/infer"}
    response = server.get("/v3/anything")
    assert response.status_code == 404
    assert response.json() == {"error": "path: /v3/anything not found"}


def test_v2_model_metadata_lists_inputs_outputs_and_version(server, churn_spec):
    response = server.get("/v2/models/churn")
    assert response.status_code == 200, response.text
    metadata = response.json()
    assert metadata["name"] == "churn" and metadata["versions"] == ["1"]
    assert metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"] == [
        {"name": f.name, "datatype": "BYTES" if f.type == "category" else "FP32", "shape": [-1, 1]}
        for f in churn_spec.features
    ]
    assert metadata["outputs"] == [
        {"name": "probability", "datatype": "FP32", "shape": [-1]},
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
        {"name": "prediction_id", "datatype": "BYTES", "shape": [-1]},
    ]
    assert server.get("/v2/models/churn/versions/1").json() == metadata


def test_server_keeps_serving_and_counts_every_answer(server, rows):
    labels = 'model="churn",outcome="{}",role="champion",version="1"'
    series = {o: "shepherd_predictor_requests_total{" + labels.format(o) + "}" for o in ("ok", "invalid", "error")}
    before = server.get("/metrics").text
    for _, make, _ in BAD_V1:
        assert server.post("/v1/models/churn:predict", **make(rows)).status_code == 400
    assert server.post("/v1/models/churn:predict", json={"instances": rows}).status_code == 200
    after = server.get("/metrics").text
    counted = {o: sample(after, s) - sample(before, s) for o, s in series.items()}
    # Every 4xx counts, also the bodies KServe refuses before the model sees them (malformed JSON, NaN).
    assert counted == {"ok": 1, "invalid": len(BAD_V1), "error": 0}
    assert "request_predict_seconds" in after  # KServe's own histograms sit alongside ours
    assert sample(after, 'shepherd_predictor_prediction_score_count{model="churn",role="champion",version="1"}') >= ROWS


# -- the spec's decision threshold -----------------------------------------------------------------
THRESHOLD = 0.3


@pytest.fixture(scope="module")
def low_threshold(tmp_path_factory, churn_frame):
    """A churn model trained with `evaluation.decision_threshold: 0.3`, served by its own predictor."""
    data = yaml.safe_load(CHURN_SPEC.read_text())
    data["evaluation"]["decision_threshold"] = THRESHOLD
    spec = parse_spec(yaml.safe_dump(data))
    home = tmp_path_factory.mktemp("threshold")
    uri = f"sqlite:///{home / 'mlflow.db'}"
    train_and_register(spec, churn_frame, uri, home)
    mlflow.set_tracking_uri(uri)
    model = mlflow.sklearn.load_model("models:/churn/1")
    with (
        running_predictor(uri, "models:/churn/1", home) as predictor,
        httpx.Client(base_url=predictor.base_url, timeout=10) as client,
    ):
        yield client, model, spec


def test_labels_follow_the_specs_decision_threshold(low_threshold, churn_frame):
    client, model, spec = low_threshold
    frame = churn_frame.head(300)
    proba = train.predict_positive(model, frame, spec)
    # Rows on both sides of 0.3 and between 0.3 and 0.5 (where a fixed 0.5 would say "No"), away from
    # the edges so float32 rounding cannot flip a label.
    between = (proba > THRESHOLD + 0.02) & (proba < 0.48)
    low, high = proba < THRESHOLD - 0.02, proba > 0.52
    picked = np.concatenate([np.flatnonzero(m)[:4] for m in (between, low, high)])
    assert between.sum() >= 1 and low.sum() >= 1 and high.sum() >= 1
    instances = json.loads(model_input.feature_frame(frame.iloc[picked], spec).to_json(orient="records"))
    response = client.post("/v1/models/churn:predict", json={"instances": instances})
    assert response.status_code == 200, response.text
    labels = [p["label"] for p in response.json()["predictions"]]
    assert labels == ["Yes" if p >= THRESHOLD else "No" for p in proba[picked]]
    assert "Yes" in [lab for lab, p in zip(labels, proba[picked], strict=True) if p < 0.5]


# -- a client nobody here wrote ----------------------------------------------------------------------
@pytest.mark.parametrize("binary_data", [True, False], ids=["binary tensors", "JSON tensors"])
def test_tritonclient_gets_the_same_answers(server, rows, expected, churn_spec, binary_data):
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url=str(server.base_url).removeprefix("http://"))
    try:
        metadata = client.get_model_metadata("churn")
        assert metadata["versions"] == ["1"] and len(metadata["inputs"]) == len(churn_spec.features)
        inputs = []
        for f in churn_spec.features:
            if f.type == "category":
                values = np.array([[r[f.name].encode()] for r in rows], dtype=np.object_)
                tensor = triton.InferInput(f.name, list(values.shape), "BYTES")
            else:
                values = np.array([[np.nan if r[f.name] is None else r[f.name]] for r in rows], dtype=np.float32)
                tensor = triton.InferInput(f.name, list(values.shape), "FP32")
            tensor.set_data_from_numpy(values, binary_data=binary_data)
            inputs.append(tensor)
        outputs = [triton.InferRequestedOutput(name, binary_data=binary_data) for name in ("probability", "label")]
        result = client.infer("churn", inputs, outputs=outputs)
    finally:
        client.close()
    np.testing.assert_allclose(result.as_numpy("probability"), expected, atol=1e-5)
    assert [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("label")] == [
        "Yes" if p >= 0.5 else "No" for p in expected
    ]


def test_v2_json_without_a_content_type_is_json(server, rows, churn_spec):
    response = server.post("/v2/models/churn/infer", content=json.dumps(_v2(churn_spec, rows)))
    assert "content-type" not in response.request.headers
    assert response.status_code == 200, response.text


# -- requested outputs and the binary tensor extension ------------------------------------------------
def _v2_all(churn_spec, rows, **extra) -> dict:
    return {**v2_request(churn_spec, rows), **extra}


def _split_binary(response: httpx.Response) -> tuple[dict, dict[str, np.ndarray]]:
    """An OIP binary answer -> its JSON header and each binary output decoded (FP32 raw, BYTES as
    4-byte little-endian lengths each followed by the bytes)."""
    json_size = int(response.headers["inference-header-content-length"])
    header, raw = json.loads(response.content[:json_size]), response.content[json_size:]
    decoded, at = {}, 0
    for output in header["outputs"]:
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is None:
            continue
        chunk, at = raw[at : at + size], at + size
        if output["datatype"] == "FP32":
            decoded[output["name"]] = np.frombuffer(chunk, dtype="<f4")
        else:
            values, i = [], 0
            while i < len(chunk):
                n = int.from_bytes(chunk[i : i + 4], "little")
                values.append(chunk[i + 4 : i + 4 + n].decode())
                i += 4 + n
            decoded[output["name"]] = np.array(values, dtype=object)
    assert at == len(raw), "bytes left over after the declared binary outputs"
    return header, decoded


def test_v2_answers_only_the_requested_outputs(server, rows, expected, churn_spec):
    body = _v2_all(churn_spec, rows, outputs=[{"name": "probability"}])
    response = server.post("/v2/models/churn/infer", json=body)
    assert response.status_code == 200, response.text
    assert "inference-header-content-length" not in response.headers  # all JSON
    outputs = response.json()["outputs"]
    assert [o["name"] for o in outputs] == ["probability"]
    np.testing.assert_allclose(outputs[0]["data"], expected, atol=1e-5)

    body = _v2_all(churn_spec, rows, outputs=[{"name": "label"}])
    outputs = server.post("/v2/models/churn/infer", json=body).json()["outputs"]
    assert [(o["name"], o["data"]) for o in outputs] == [("label", ["Yes" if p >= 0.5 else "No" for p in expected])]


def test_v2_binary_outputs_come_after_the_json_header(server, rows, expected, churn_spec):
    labels = ["Yes" if p >= 0.5 else "No" for p in expected]
    # Every output binary, asked for once for the whole request.
    response = server.post(
        "/v2/models/churn/infer", json=_v2_all(churn_spec, rows, parameters={"binary_data_output": True})
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    header, decoded = _split_binary(response)
    assert [o["name"] for o in header["outputs"]] == ["probability", "label", "prediction_id"]
    assert all("data" not in o for o in header["outputs"])
    np.testing.assert_allclose(decoded["probability"], expected, atol=1e-5)
    assert decoded["label"].tolist() == labels
    # Per output: its own flag overrides the request's; an output without one follows the request's.
    body = _v2_all(
        churn_spec,
        rows,
        parameters={"binary_data_output": True},
        outputs=[{"name": "label", "parameters": {"binary_data": False}}, {"name": "probability"}],
    )
    header, decoded = _split_binary(server.post("/v2/models/churn/infer", json=body))
    assert [o["name"] for o in header["outputs"]] == ["label", "probability"]
    assert header["outputs"][0]["data"] == labels and list(decoded) == ["probability"]
    np.testing.assert_allclose(decoded["probability"], expected, atol=1e-5)


@pytest.mark.parametrize(
    "extra, expected",
    [
        (
            {"outputs": [{"name": "score"}]},
            "outputs[0].name: expected one of ['probability', 'label', 'prediction_id'], got 'score'",
        ),
        ({"outputs": [{"name": "label"}, {"name": "label"}]}, "outputs[label]: requested twice"),
        (
            {"outputs": [{"name": "label", "parameters": {"binary_data": "yes"}}]},
            "outputs[label].parameters.binary_data: expected true or false, got 'yes'",
        ),
        ({"parameters": {"binary_data_output": 1}}, "parameters.binary_data_output: expected true or false, got '1'"),
    ],
    ids=["unknown output", "repeated output", "binary_data not a boolean", "binary_data_output not a boolean"],
)
def test_bad_output_requests_get_400_naming_the_field(server, rows, churn_spec, extra, expected):
    response = server.post("/v2/models/churn/infer", json=_v2_all(churn_spec, rows[:1], **extra))
    assert (response.status_code, response.json()) == (400, {"error": expected})


# -- what only the operator changes --------------------------------------------------------------------
def test_the_model_repository_api_is_refused_and_the_model_keeps_serving(server, rows):
    for method, path in [
        ("POST", "/v2/repository/models/churn/unload"),
        ("POST", "/v2/repository/models/churn/load"),
        ("POST", "/v2/repository/index"),
        ("GET", "/v2/repository/models/churn/unload"),
    ]:
        response = server.request(method, path, json={})
        assert response.status_code == 404, (method, path, response.text)
        error = response.json()["error"]
        assert set(response.json()) == {"error"} and error.startswith(f"path: {path} not found"), error
        assert "model repository extension is disabled" in error
    assert server.get("/v2/models/churn/ready").json() == {"name": "churn", "ready": True}
    assert server.post("/v1/models/churn:predict", json={"instances": rows}).status_code == 200
    metadata = server.get("/v2").json()
    assert metadata["extensions"] == ["binary_tensor_data"] and metadata["name"] == "kserve"


def listen_addresses(port: int) -> set[str]:
    """The local addresses (hex, as /proc/net/tcp{,6} spells them) with a socket listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            for line in list(lines)[1:]:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.rsplit(":", 1)
                if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    found.add(address)
    return found


def non_loopback_ipv4() -> str | None:
    import subprocess

    out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, check=False).stdout.split()
    return next((a for a in out if "." in a and not a.startswith("127.")), None)


def test_a_predictor_told_http_host_listens_on_loopback_only(server):
    port = server.base_url.port
    assert listen_addresses(port) == {"0100007F"}  # 127.0.0.1, and nothing on 0.0.0.0 or ::
    address = non_loopback_ipv4()
    if address is None:
        return  # no other address to try; the listener table above already says loopback only
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://{address}:{port}/v2/health/live", timeout=5)
    assert server.get("/v2/health/live").status_code == 200


def test_http_host_defaults_to_every_address_for_a_container(registered_churn, tmp_path):
    """Without the flag (what the container image runs) KServe's 0.0.0.0 stays."""
    import subprocess
    import sys
    import time

    from serving.local_plane import free_port
    from serving.predictor import predictor_command
    from tests.conftest import REPO

    port = free_port()
    command = predictor_command("churn", "models:/churn@champion", registered_churn["tracking_uri"], port)
    command = [c for c in command if not c.startswith("--http_host=")]
    assert command[0] == sys.executable
    with open(tmp_path / "predictor.log", "w") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not listen_addresses(port):
            assert process.poll() is None, (tmp_path / "predictor.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the predictor did not listen within 60 s"
            time.sleep(0.2)
        assert listen_addresses(port) == {"00000000"}
    finally:
        process.terminate()
        process.wait(timeout=15)
