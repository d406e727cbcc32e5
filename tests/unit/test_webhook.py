"""The alert webhook's own rules, on the real FastAPI app: the bearer token, 400s naming the field,
which alerts act, and one retraining run per alert storm. (Rollbacks through a real Alertmanager are in
tests/e2e.)"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from monitoring.webhook import MAX_BODY_BYTES, AlertActions, LocalRetrainer, create_app, parse_alerts
from serving.local_plane import free_port

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class NoRollouts:
    """The serving backend at its process edge: nothing is deployed."""

    def get(self, namespace, name):
        return None


@pytest.fixture
def webhook():
    started: list[tuple[str, str]] = []

    def retrain(model: str, reason: str) -> str:  # the process edge: starting a training run
        started.append((model, reason))
        return f"run {len(started)}"

    actions = AlertActions(NoRollouts(), "sqlite:///unused.db", "models", retrain, cooldown_seconds=3600)
    return TestClient(create_app(actions, TOKEN)), started


def alert(name="ShepherdChampionDrift", action="retrain", model="churn", status="firing"):
    labels = {"alertname": name, "shepherd_action": action}
    if model:
        labels["model"] = model
    return {"status": status, "labels": labels, "annotations": {"summary": "drift 60%"}}


def test_no_token_no_service():
    with pytest.raises(ValueError, match="bearer token"):
        create_app(None, "")


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}])
def test_requests_without_the_token_are_refused(webhook, headers):
    client, started = webhook
    response = client.post("/alerts", json={"alerts": [alert()]}, headers=headers)
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    assert started == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([1, 2], "body"),
        ({"status": "firing"}, "alerts"),
        ({"alerts": [{"status": "firing"}]}, "alerts[0].labels"),
        ({"alerts": [{"status": "firing", "labels": {"model": "churn"}}]}, "alerts[0].labels.alertname"),
        ({"alerts": [{"status": "odd", "labels": {"alertname": "X"}}]}, "alerts[0].status"),
    ],
)
def test_malformed_payloads_are_400s_naming_the_field(webhook, body, field):
    client, _ = webhook
    response = client.post("/alerts", json=body, headers=AUTH)
    assert response.status_code == 400 and response.json()["error"].startswith(field)


def test_a_body_that_is_not_json_is_a_400(webhook):
    client, _ = webhook
    response = client.post("/alerts", content=b"{nope", headers={**AUTH, "content-type": "application/json"})
    assert response.status_code == 400 and response.json()["error"] == "body: not JSON"


def test_an_alert_storm_starts_one_retraining_run(webhook):
    client, started = webhook
    outcomes = [
        client.post("/alerts", json={"alerts": [alert()]}, headers=AUTH).json()["results"][0]["outcome"]
        for _ in range(5)
    ]
    assert outcomes == ["retraining"] + ["deduplicated"] * 4
    assert started == [("churn", "alert ShepherdChampionDrift: drift 60%")]


def test_alerts_that_ask_for_nothing_do_nothing(webhook):
    client, started = webhook
    body = {
        "alerts": [
            alert("ShepherdNoTraffic", action="none"),
            alert(status="resolved"),
            alert(model=None),
            alert("ShepherdCanaryErrorRateHigh", action="rollback"),  # nothing is rolling out
        ]
    }
    results = client.post("/alerts", json=body, headers=AUTH).json()["results"]
    assert [r["outcome"] for r in results] == ["ignored"] * 4
    assert "no rollout in progress" in results[3]["detail"]
    assert started == []


def test_parse_alerts_reads_alertmanager_v4():
    (parsed,) = parse_alerts({"version": "4", "status": "firing", "alerts": [alert("A", "rollback")]})
    assert (parsed.name, parsed.action, parsed.model, parsed.status) == ("A", "rollback", "churn", "firing")


class UnreachableBackend:
    """The serving backend at its process edge: the API server does not answer."""

    def get(self, namespace, name):
        from serving.backends import ServingError

        raise ServingError("the local serving plane at http://127.0.0.1:1 is not answering")


def test_a_failed_action_is_a_503_so_alertmanager_delivers_again():
    calls = []

    def retrain(model: str, reason: str) -> str:
        calls.append(model)
        if len(calls) == 1:
            raise RuntimeError("KFP is down")
        return "run 2"

    actions = AlertActions(UnreachableBackend(), "sqlite:///unused.db", "models", retrain)
    client = TestClient(create_app(actions, TOKEN))
    rollback = client.post("/alerts", json={"alerts": [alert("ShepherdCanaryErrorRateHigh", "rollback")]}, headers=AUTH)
    assert rollback.status_code == 503
    assert rollback.json()["results"][0] == {
        "alert": "ShepherdCanaryErrorRateHigh",
        "model": "churn",
        "outcome": "failed",
        "detail": "the local serving plane at http://127.0.0.1:1 is not answering",
    }
    first = client.post("/alerts", json={"alerts": [alert()]}, headers=AUTH)
    assert first.status_code == 503 and first.json()["results"][0]["detail"] == "KFP is down"
    again = client.post("/alerts", json={"alerts": [alert()]}, headers=AUTH)  # the retry is not "deduplicated"
    assert again.status_code == 200 and again.json()["results"][0]["outcome"] == "retraining"


@pytest.mark.parametrize("chunked", [False, True])
def test_an_oversized_body_is_a_413_before_it_is_read(webhook, chunked):
    client, started = webhook
    body = b'{"alerts": [' + b" " * (MAX_BODY_BYTES + 1) + b"]}"
    if chunked:  # no content-length: the cap holds on the bytes actually streamed
        response = client.post("/alerts", content=iter([body[:1024], body[1024:]]), headers=AUTH)
    else:
        response = client.post("/alerts", content=body, headers={**AUTH, "content-type": "application/json"})
    assert response.status_code == 413 and response.json()["error"].startswith("body: ")
    assert started == []


def test_a_retraining_alert_for_an_unknown_model_is_acknowledged_not_retried(tmp_path):
    """Alertmanager redelivers on a 5xx forever: a model with no @champion is the sender's mistake."""
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    actions = AlertActions(NoRollouts(), tracking_uri, "models", LocalRetrainer(tmp_path, tracking_uri))
    client = TestClient(create_app(actions, TOKEN))
    response = client.post("/alerts", json={"alerts": [alert(model="no-such-model")]}, headers=AUTH)
    assert response.status_code == 200
    (result,) = response.json()["results"]
    assert result["outcome"] == "ignored" and "'no-such-model' has no @champion" in result["detail"]
    assert not list((tmp_path / "retrain").glob("*.log"))  # no run was started


def test_a_retraining_alert_while_the_registry_is_down_is_a_503(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    tracking_uri = f"http://127.0.0.1:{free_port()}"  # nothing listens: the registry is down
    actions = AlertActions(NoRollouts(), tracking_uri, "models", LocalRetrainer(tmp_path, tracking_uri))
    client = TestClient(create_app(actions, TOKEN))
    response = client.post("/alerts", json={"alerts": [alert()]}, headers=AUTH)
    assert response.status_code == 503
    assert "registry failed" in response.json()["results"][0]["detail"]
