"""A predictor that fails (the rollback drill's injected fault, in preprocessing or in predict) answers
500 in the error shape on a connection that stays open, and counts every 500 as an error."""

from __future__ import annotations

import httpx
import pytest

from serving.predictor import ENV_FAULT_ERROR_RATE, ENV_FAULT_STAGE, main
from tests.support.payload_fuzz import valid_body
from tests.support.predictor_process import running_predictor, sample

FAILED_REQUESTS = 12
SERIES = 'shepherd_predictor_requests_total{{model="churn",outcome="{}",role="champion",version="1"}}'


@pytest.fixture(scope="module", params=["preprocess", "predict"])
def failing(request, registered_churn, tmp_path_factory):
    """A predictor failing every valid request in one stage, and one keep-alive client to it."""
    env = {ENV_FAULT_ERROR_RATE: "1", ENV_FAULT_STAGE: request.param}
    with (
        running_predictor(
            registered_churn["tracking_uri"], "models:/churn@champion", tmp_path_factory.mktemp("faults"), env
        ) as predictor,
        httpx.Client(base_url=predictor.base_url, timeout=10) as client,
    ):
        yield request.param, client


def client_port(response: httpx.Response) -> int:
    """The client side's port of the connection that carried `response`."""
    return response.extensions["network_stream"].get_extra_info("client_addr")[1]


def test_failures_are_500s_in_the_error_shape_counted_on_one_open_connection(failing, churn_spec):
    stage, client = failing
    ports = set()
    for i in range(FAILED_REQUESTS):
        protocol = "v1" if i % 2 else "v2"
        path = "/v1/models/churn:predict" if protocol == "v1" else "/v2/models/churn/infer"
        response = client.post(
            path, content=valid_body(churn_spec, protocol), headers={"content-type": "application/json"}
        )
        assert response.status_code == 500, response.text
        assert response.json() == {
            "error": f"model: RuntimeError: injected fault in {stage} ({ENV_FAULT_ERROR_RATE}=1)"
        }
        ports.add(client_port(response))
    # A client's mistake is still the client's: 400, even while the model fails every valid request.
    mistake = client.post("/v1/models/churn:predict", json={"instances": []})
    assert mistake.status_code == 400
    health = client.get("/v2/health/ready")
    assert health.status_code == 200
    ports.add(client_port(mistake))
    ports.add(client_port(health))
    # Had uvicorn closed the connection after a 500, httpx would have opened another: a new port.
    assert len(ports) == 1, f"the connection was replaced: client ports {sorted(ports)}"
    metrics = client.get("/metrics").text
    assert sample(metrics, SERIES.format("error")) == FAILED_REQUESTS
    assert sample(metrics, SERIES.format("invalid")) == 1
    assert sample(metrics, SERIES.format("ok")) == 0
    # KServe's per-stage histogram saw every request reach the failing stage.
    assert sample(metrics, 'request_preprocess_seconds_count{model_name="churn"}') == FAILED_REQUESTS + 1
    if stage == "preprocess":
        assert sample(metrics, 'request_predict_seconds_count{model_name="churn"}') == 0


def test_an_unknown_fault_stage_is_refused_before_loading(capsys):
    argv = ["--model_name", "churn", "--model_uri", "models:/churn/1", "--tracking_uri", "sqlite:///unused.db"]
    assert main([*argv, "--fault_stage", "postprocess"]) == 2
    assert "--fault_stage must be one of ['predict', 'preprocess'], got 'postprocess'" in capsys.readouterr().out
