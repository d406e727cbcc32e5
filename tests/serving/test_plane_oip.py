"""The local plane as an Open Inference Protocol (V2) and V1 endpoint, through a standard client nobody here
wrote (`tritonclient.http`) and plain HTTP: health, metadata and readiness answered or forwarded with
KServe's semantics, binary tensor and JSON inference equal to V1's answers, one `/metrics` for the plane
and its revisions, and a revision that is gone failing only the requests routed to it."""

from __future__ import annotations

import json
import os
import signal
import time

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from monitoring.metrics import PLANE_REQUESTS_TOTAL, PLANE_REVISION_UP, REQUESTS_TOTAL
from serving.backends import LocalBackend, ServingError
from serving.inference_service import build_inference_service
from serving.inference_service_view import serving_container
from serving.plane_auth import ENV_PLANE_TOKEN
from serving.traffic import instances
from tests.support.plane_processes import is_gone, pid_serving, running_plane

NUMPY_TYPES = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "BYTES": np.object_}


@pytest.fixture(scope="module")
def plane(two_versions, tmp_path_factory):
    with running_plane(tmp_path_factory.mktemp("plane-oip"), two_versions) as started:
        yield started


@pytest.fixture
def champion_only(plane, churn_spec):
    """Version 1 alone: every answer comes from one model, so V1 and V2 answers are comparable."""
    LocalBackend(plane.url).apply(build_inference_service(churn_spec, "1"))
    return plane


@pytest.fixture
def client(plane):
    with triton.InferenceServerClient(plane.url.removeprefix("http://"), network_timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def complete_rows(churn_spec, churn_frame):
    """Real customers without missing values (JSON has no NaN), as V1 instances."""
    return [r for r in instances(churn_spec, churn_frame.head(60)) if None not in r.values()][:16]


def v1_probabilities(url: str, rows: list[dict]) -> np.ndarray:
    response = httpx.post(f"{url}/v1/models/churn:predict", json={"instances": rows}, timeout=30)
    assert response.status_code == 200, response.text
    return np.array([p["probability"] for p in response.json()["predictions"]])


def triton_inputs(metadata: dict, rows: list[dict], binary: bool) -> list[triton.InferInput]:
    """One [n, 1] tensor per input the model's metadata declares, typed as declared (what a client
    that discovers the model does)."""
    tensors = []
    for declared in metadata["inputs"]:
        values = np.array([[row[declared["name"]]] for row in rows], dtype=NUMPY_TYPES[declared["datatype"]])
        tensor = triton.InferInput(declared["name"], list(values.shape), declared["datatype"])
        tensor.set_data_from_numpy(values, binary_data=binary)
        tensors.append(tensor)
    return tensors


def test_server_health_and_metadata_are_answered_by_the_plane(champion_only, client):
    assert client.is_server_live() and client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "shepherd-local-plane" and metadata["version"]
    assert metadata["extensions"] == ["binary_tensor_data"]


def test_model_readiness_and_metadata_are_the_champions(champion_only, client, churn_spec):
    assert client.is_model_ready("churn")
    assert client.is_model_ready("churn", model_version="1")
    metadata = client.get_model_metadata("churn")
    assert metadata["name"] == "churn" and metadata["versions"] == ["1"]
    assert [i["name"] for i in metadata["inputs"]] == churn_spec.feature_names
    assert "probability" in [o["name"] for o in metadata["outputs"]]

    v1 = httpx.get(f"{champion_only.url}/v1/models/churn", timeout=10)
    assert (v1.status_code, v1.json()) == (200, {"name": "churn", "ready": True})
    assert v1.headers["x-shepherd-revision"] == "churn-v1"


def test_an_unknown_model_or_version_is_a_404_in_the_error_shape(champion_only, client):
    assert not client.is_model_ready("nope")
    with pytest.raises(InferenceServerException, match="'nope' is not deployed") as raised:
        client.get_model_metadata("nope")
    assert raised.value.status() == "404"
    for path in ("/v2/models/nope", "/v2/models/nope/ready", "/v1/models/nope", "/v2/models/churn/versions/9"):
        response = httpx.get(f"{champion_only.url}{path}", timeout=10)
        assert response.status_code == 404 and set(response.json()) == {"error"}, (path, response.text)
    response = httpx.post(f"{champion_only.url}/v2/models/nope/infer", json={"inputs": []}, timeout=10)
    assert response.status_code == 404 and "nope" in response.json()["error"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("n", [1, 16])
def test_tritonclient_infer_equals_v1(champion_only, client, complete_rows, binary, n):
    rows = complete_rows[:n]
    metadata = client.get_model_metadata("churn")
    result = client.infer(
        "churn",
        triton_inputs(metadata, rows, binary),
        outputs=[triton.InferRequestedOutput("probability", binary_data=binary)],
    )
    probabilities = result.as_numpy("probability")
    assert probabilities.shape == (n,)
    np.testing.assert_allclose(probabilities, v1_probabilities(champion_only.url, rows), rtol=0, atol=1e-6)
    assert result.get_response()["model_version"] == "1"


def test_binary_outputs_come_back_binary_with_their_header(champion_only, client, complete_rows):
    metadata = client.get_model_metadata("churn")
    result = client.infer(
        "churn",
        triton_inputs(metadata, complete_rows, True),
        outputs=[triton.InferRequestedOutput("probability", binary_data=True)],
    )
    output = result.get_output("probability")
    assert "binary_data_size" in (output.get("parameters") or {})  # sent as raw bytes after the JSON header
    assert result.get_output("label") is None  # only what was requested
    np.testing.assert_allclose(
        result.as_numpy("probability"), v1_probabilities(champion_only.url, complete_rows), atol=1e-6
    )

    # Raw HTTP: the header that splits the answer reaches the client through the plane.
    body, _ = triton.InferenceServerClient.generate_request_body(
        triton_inputs(metadata, complete_rows[:2], False),
        outputs=[triton.InferRequestedOutput("probability", binary_data=True)],
    )
    answered = httpx.post(f"{champion_only.url}/v2/models/churn/infer", content=body, timeout=30)
    assert answered.status_code == 200, answered.text
    header_size = int(answered.headers["inference-header-content-length"])
    header = json.loads(answered.content[:header_size])
    assert [o["name"] for o in header["outputs"]] == ["probability"]
    assert len(answered.content) - header_size == header["outputs"][0]["parameters"]["binary_data_size"] == 2 * 4


def listen_addresses(port: int) -> set[str]:
    """The local addresses (hex, as /proc/net/tcp{,6} spells them) with a socket listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                address, hex_port = fields[1].rsplit(":", 1)
                if fields[3] == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    found.add(address)
    return found


def test_the_planes_model_servers_listen_on_loopback_only(plane, churn_spec):
    applied = LocalBackend(plane.url).apply(
        build_inference_service(churn_spec, "2", champion_version="1", canary_percent=10)
    )
    ports = [int(t["url"].rsplit(":", 1)[1]) for t in applied["status"]["components"]["predictor"]["traffic"]]
    assert len(ports) == 2
    for port in ports:
        assert listen_addresses(port) == {"0100007F"}, port  # 127.0.0.1 only, nothing on 0.0.0.0 or ::


def test_binary_request_headers_reach_the_predictor(champion_only, client, complete_rows):
    """Without `inference-header-content-length` the predictor cannot split a binary body: a dropped
    header is a 400, a passed one a 200 (raw HTTP, so the header is the only difference)."""
    body, json_size = triton.InferenceServerClient.generate_request_body(
        triton_inputs(client.get_model_metadata("churn"), complete_rows[:2], True)
    )
    url = f"{champion_only.url}/v2/models/churn/infer"
    answered = httpx.post(url, content=body, headers={"inference-header-content-length": str(json_size)}, timeout=30)
    assert answered.status_code == 200, answered.text
    # tritonclient asks for binary outputs when it names none (`binary_data_output`): a binary answer.
    assert answered.headers["content-type"] == "application/octet-stream"
    assert int(answered.headers["inference-header-content-length"]) < len(answered.content)
    without = httpx.post(url, content=body, timeout=30)  # read as JSON, which it is not
    assert without.status_code == 400 and set(without.json()) == {"error"}


def scrape(url: str) -> tuple[str, list]:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return text, [s for family in text_string_to_metric_families(text) for s in family.samples]


def total(samples: list, name: str, **labels: str) -> float:
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


def test_metrics_carry_the_plane_and_every_revision_once(plane, churn_spec, complete_rows):
    backend = LocalBackend(plane.url)
    backend.apply(build_inference_service(churn_spec, "2", champion_version="1", canary_percent=50))
    _, before = scrape(plane.url)
    for _ in range(20):
        v1_probabilities(plane.url, complete_rows[:1])
    httpx.post(f"{plane.url}/v1/models/churn:predict", json={"instances": [{"tenure": "x"}]}, timeout=10)
    text, samples = scrape(plane.url)
    helps = [line.split()[2] for line in text.splitlines() if line.startswith("# HELP ")]
    types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(helps) == len(set(helps)) and len(types) == len(set(types)), "a family is declared twice"

    def counted(**labels: str) -> float:
        return total(samples, PLANE_REQUESTS_TOTAL, **labels) - total(before, PLANE_REQUESTS_TOTAL, **labels)

    assert counted(model="churn", outcome="ok") == 20
    assert counted(model="churn", outcome="ok", role="champion") > 0
    assert counted(model="churn", outcome="ok", role="canary") > 0
    assert counted(model="churn", outcome="invalid") == 1
    # Each revision's own counters, told apart by the plane's `revision` label.
    assert total(samples, REQUESTS_TOTAL, revision="churn-v1", version="1") > 0
    assert total(samples, REQUESTS_TOTAL, revision="churn-v2", version="2") > 0
    up = [total(samples, PLANE_REVISION_UP, revision=r) for r in ("churn-v1", "churn-v2")]
    assert up == [1.0, 1.0]
    rss = [s for s in samples if s.name == "process_resident_memory_bytes"]
    assert {s.labels.get("revision") for s in rss} == {None, "churn-v1", "churn-v2"}  # the plane's own, unlabelled


def test_a_dead_revision_fails_only_the_requests_routed_to_it(plane, churn_spec, complete_rows):
    backend = LocalBackend(plane.url)
    obj = build_inference_service(churn_spec, "2", champion_version="1", canary_percent=30)
    applied = backend.apply(obj)
    canary = next(t for t in applied["status"]["components"]["predictor"]["traffic"] if t["revisionName"] == "churn-v2")
    pid = pid_serving(int(canary["url"].rsplit(":", 1)[1]))
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while not is_gone(pid):
        assert time.monotonic() < deadline, "the killed predictor is still there"
        time.sleep(0.1)

    answers = []
    with httpx.Client(base_url=plane.url, timeout=30) as http:
        for _ in range(60):
            response = http.post("/v1/models/churn:predict", json={"instances": complete_rows[:1]})
            answers.append((response.headers["x-shepherd-role"], response.status_code, response.json()))
        not_ready = http.get("/v2/health/ready")
    champion = [status for role, status, _ in answers if role == "champion"]
    canary_answers = [(status, body) for role, status, body in answers if role == "canary"]
    assert champion and set(champion) == {200}, "a champion request failed because the canary died"
    assert canary_answers and {s for s, _ in canary_answers} == {503}
    assert all("churn-v2" in body["error"] for _, body in canary_answers)
    assert not_ready.status_code == 503 and "churn-v2" in not_ready.json()["error"]

    obj["metadata"].pop("resourceVersion", None)
    backend.apply(obj)  # the plane restarts the dead revision; applying again waits until it is ready
    assert httpx.get(f"{plane.url}/v2/health/ready", timeout=10).status_code == 200


def test_a_canary_that_answers_500_never_fails_another_request(plane, churn_spec, complete_rows):
    """A predictor used to close its connection after a 500; the next request on it got a 503. With
    every canary request failing, the champion's answers must all be 200 and the canary's all 500."""
    obj = build_inference_service(churn_spec, "2", champion_version="1", canary_percent=50)
    serving_container(obj["spec"]["canary"][0]["predictor"])["env"] = [
        {"name": "SHEPHERD_FAULT_ERROR_RATE", "value": "1"}
    ]
    LocalBackend(plane.url).apply(obj)
    statuses: dict[str, list[int]] = {"champion": [], "canary": []}
    with httpx.Client(base_url=plane.url, timeout=30) as http:
        for i in range(80):
            rows = complete_rows[i % 16 : i % 16 + 1]
            response = http.post("/v1/models/churn:predict", json={"instances": rows})
            statuses[response.headers["x-shepherd-role"]].append(response.status_code)
    assert statuses["champion"] and set(statuses["champion"]) == {200}
    assert statuses["canary"] and set(statuses["canary"]) == {500}, statuses["canary"]


def test_only_the_token_holder_changes_what_the_plane_serves(champion_only, churn_spec, complete_rows, monkeypatch):
    """Predictions and reads are open; pointing the model at another version, a made-up history entry
    and forged payload logs are refused without the plane's token, and change nothing."""
    url = champion_only.url
    takeover = build_inference_service(churn_spec, "2")  # would make v2 serve everything
    meta = takeover["metadata"]
    path = f"{url}/apis/serving.kserve.io/v1beta1/namespaces/{meta['namespace']}/inferenceservices/{meta['name']}"
    forged_event = {"reason": "PromoteApproved", "message": "approved by the security team", "type": "Normal"}
    for headers in ({}, {"authorization": "Bearer forged"}):
        answers = [
            httpx.put(path, json=takeover, headers=headers, timeout=30),
            httpx.post(f"{path}/events", json=forged_event, headers=headers, timeout=30),
            httpx.post(f"{url}/drift/", content=b"{}", headers={**headers, "ce-type": "x"}, timeout=30),
        ]
        for answer in answers:
            assert answer.status_code == 401, answer.text
            assert answer.json()["error"].startswith("authorization: ")
            assert answer.headers["www-authenticate"] == "Bearer"

    backend = LocalBackend(url)  # this user's client: finds the token from the plane's URL
    served = backend.get(meta["namespace"], meta["name"])
    assert served["metadata"]["annotations"]["shepherd.io/model-version"] == "1"
    assert all(e["reason"] != "PromoteApproved" for e in backend.events(meta["namespace"], meta["name"]))
    assert httpx.get(path, timeout=30).status_code == 200  # reads need no token
    assert v1_probabilities(url, complete_rows[:1]).shape == (1,)  # nor predictions

    monkeypatch.setenv(ENV_PLANE_TOKEN, "not-the-token")  # another user handed the wrong token
    with pytest.raises(ServingError, match="refused the change") as refused:
        LocalBackend(url).apply(takeover)
    assert ENV_PLANE_TOKEN in refused.value.hint
