"""Every prediction has an id the client gets back and the payload log carries (serving/prediction_ids.py):
through the plane and directly on a predictor, V1 and V2 (JSON and binary tensors, with tritonclient),
one row and batches; a client's own usable `x-request-id` is kept, an unusable one replaced."""

from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np
import pytest

from serving.backends import LocalBackend
from serving.inference_service import build_inference_service
from serving.traffic import instances
from tests.support.plane_processes import running_plane
from tests.support.predictor_process import running_predictor
from tests.support.waiting import wait_for

NEW_ID = re.compile(r"[0-9a-f]{32}")


class _Receiver(BaseHTTPRequestHandler):
    """A payload-log receiver at the process edge: KServe's binary mode, ce-* headers recorded."""

    events: list[dict] = []  # noqa: RUF012 (one receiver per test module)

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        type(self).events.append({k.lower(): v for k, v in self.headers.items() if k.lower().startswith("ce-")})
        self.send_response(202)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def receiver():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", _Receiver.events
    server.shutdown()


@pytest.fixture(scope="module")
def plane(registered_churn, churn_spec, receiver, tmp_path_factory):
    with running_plane(tmp_path_factory.mktemp("plane-ids"), registered_churn["tracking_uri"]) as started:
        LocalBackend(started.url).apply(build_inference_service(churn_spec, "1", payload_log_url=receiver[0]))
        yield started


@pytest.fixture(scope="module")
def rows(churn_spec, churn_frame):
    return instances(churn_spec, churn_frame.head(3))


def _v2_body(churn_spec, rows, body_id=None) -> dict:
    inputs = [
        {
            "name": f.name,
            "shape": [len(rows)],
            "datatype": "BYTES" if f.type == "category" else "FP64",
            "data": [r[f.name] if r[f.name] is not None else (None if f.type == "category" else 0.0) for r in rows],
        }
        for f in churn_spec.features
    ]
    return {"inputs": inputs, **({"id": body_id} if body_id else {})}


def test_v1_through_the_plane_answers_the_id_per_request_and_per_row(plane, rows, receiver):
    answer = httpx.post(f"{plane.url}/v1/models/churn:predict", json={"instances": rows}, timeout=30)
    assert answer.status_code == 200, answer.text
    request_id = answer.headers["x-request-id"]
    assert NEW_ID.fullmatch(request_id)
    body = answer.json()
    assert body["id"] == request_id
    assert [p["id"] for p in body["predictions"]] == [f"{request_id}-{i}" for i in range(3)]
    # The payload log's request and response events of this exchange carry the same id.
    _, events = receiver
    wait_for(lambda: sum(e.get("ce-id") == request_id for e in events) == 2, 30, "both payload events of the id")


def test_a_usable_client_id_is_kept_and_an_unusable_one_replaced(plane, rows):
    kept = httpx.post(
        f"{plane.url}/v1/models/churn:predict",
        json={"instances": rows[:1]},
        headers={"x-request-id": "order-42.a:b"},
        timeout=30,
    )
    assert kept.headers["x-request-id"] == "order-42.a:b"
    assert kept.json()["predictions"][0]["id"] == "order-42.a:b-0"
    for unusable in (b"has space", b"x" * 129, "ünïcode".encode()):
        replaced = httpx.post(
            f"{plane.url}/v1/models/churn:predict",
            json={"instances": rows[:1]},
            headers={"x-request-id": unusable},
            timeout=30,
        )
        assert replaced.status_code == 200 and NEW_ID.fullmatch(replaced.headers["x-request-id"]), unusable


def test_v2_keeps_the_protocols_id_and_lists_the_prediction_ids(plane, churn_spec, rows):
    answer = httpx.post(f"{plane.url}/v2/models/churn/infer", json=_v2_body(churn_spec, rows, "my-body-id"), timeout=30)
    assert answer.status_code == 200, answer.text
    request_id = answer.headers["x-request-id"]
    body = answer.json()
    assert body["id"] == "my-body-id"  # OIP: the response echoes the request's id
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["prediction_id"]["datatype"] == "BYTES" and outputs["prediction_id"]["shape"] == [3]
    assert outputs["prediction_id"]["data"] == [f"{request_id}-{i}" for i in range(3)]
    plain = httpx.post(f"{plane.url}/v2/models/churn/infer", json=_v2_body(churn_spec, rows[:1]), timeout=30).json()
    assert next(o["data"] for o in plain["outputs"] if o["name"] == "prediction_id") == [f"{plain['id']}-0"]


def test_tritonclient_in_binary_mode_gets_the_ids_as_an_output_tensor(plane, churn_spec, rows):
    import tritonclient.http as triton

    client = triton.InferenceServerClient(plane.url.removeprefix("http://"))
    inputs = []
    for feature in churn_spec.features:
        values = [r[feature.name] for r in rows]
        if feature.type == "category":
            tensor = triton.InferInput(feature.name, [len(rows)], "BYTES")
            tensor.set_data_from_numpy(np.array([v or "" for v in values], dtype=object), binary_data=True)
        else:
            tensor = triton.InferInput(feature.name, [len(rows)], "FP64")
            tensor.set_data_from_numpy(np.array([v or 0.0 for v in values], dtype=np.float64), binary_data=True)
        inputs.append(tensor)
    result = client.infer("churn", inputs, headers={"x-request-id": "triton-7"})  # binary outputs by default
    assert result.as_numpy("prediction_id").tolist() == [b"triton-7-0", b"triton-7-1", b"triton-7-2"]
    assert "prediction_id" in [o["name"] for o in client.get_model_metadata("churn")["outputs"]]


def test_a_predictor_without_the_plane_answers_ids_too(registered_churn, rows, tmp_path):
    with running_predictor(registered_churn["tracking_uri"], "models:/churn/1", tmp_path) as predictor:
        answer = httpx.post(f"{predictor.base_url}/v1/models/churn:predict", json={"instances": rows}, timeout=30)
        request_id = answer.headers["x-request-id"]
        assert NEW_ID.fullmatch(request_id)
        assert [p["id"] for p in answer.json()["predictions"]] == [f"{request_id}-{i}" for i in range(3)]
