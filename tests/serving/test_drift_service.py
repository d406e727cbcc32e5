"""The drift service on real payload-log CloudEvents, a real MLflow registry and Evidently: the same
population shows no drift, a shifted one does (and says which columns), a canary whose predictions
moved is caught against the champion, and malformed events are 400s naming what is wrong."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from monitoring.drift import REQUEST_EVENT, RESPONSE_EVENT, DriftService, ReferenceStore, create_app
from monitoring.metrics import DRIFT_EVENTS_TOTAL, DRIFT_FEATURE_SCORE, DRIFT_SHARE
from serving.predictor import load_version
from serving.traffic import instances


def _headers(kind: str, event_id: str, role: str, version: str) -> dict:
    return {
        "ce-specversion": "1.0",
        "ce-type": kind,
        "ce-id": event_id,
        "ce-source": "http://localhost/churn",
        "ce-inferenceservicename": "churn",
        "ce-endpoint": "canary" if role == "canary" else "default",
        "ce-modelid": version,
        "content-type": "application/json",
    }


def log(client, rows: list[dict], scores, role="champion", version="1", batch=20) -> None:
    """What the plane's payload logger sends for each request of `batch` rows: request, then response."""
    for start in range(0, len(rows), batch):
        event_id = str(uuid.uuid4())
        chunk = rows[start : start + batch]
        request = client.post(
            "/", content=json.dumps({"instances": chunk}), headers=_headers(REQUEST_EVENT, event_id, role, version)
        )
        predictions = [{"label": "x", "probability": float(p)} for p in scores[start : start + batch]]
        response = client.post(
            "/",
            content=json.dumps({"predictions": predictions}),
            headers=_headers(RESPONSE_EVENT, event_id, role, version),
        )
        assert request.status_code == response.status_code == 202, response.text


@pytest.fixture(scope="module")
def traffic(registered_churn, churn_spec, churn_frame):
    loaded = load_version(registered_churn["tracking_uri"], "models:/churn/1")
    from serving.payload import to_model_inputs

    def scored(frame):
        rows = instances(churn_spec, frame)
        columns = {f: [r[f] for r in rows] for f in churn_spec.feature_names}
        return rows, loaded.score(to_model_inputs(churn_spec, columns))

    same = scored(churn_frame.sample(400, random_state=1))
    month_to_month = churn_frame[churn_frame["contract"] == "Month-to-month"]
    shifted = scored(month_to_month[month_to_month["tenure"] < 12].sample(400, random_state=2, replace=True))
    return {"same": same, "shifted": shifted}


@pytest.fixture
def service(registered_churn):
    service = DriftService(ReferenceStore(registered_churn["tracking_uri"]), CollectorRegistry(), 400, 200)
    with TestClient(create_app(service, compute_interval=3600)) as client:
        yield service, client


def gauge(service, name: str, **labels) -> float | None:
    return service.registry.get_sample_value(name, labels)


def test_the_training_population_shows_no_drift(service, traffic):
    drift, client = service
    log(client, *traffic["same"])
    (result,) = drift.compute()
    assert (result.role, result.reference, result.rows) == ("champion", "training", 400)
    assert not result.detected and result.share < 0.5, result.summary()
    assert max(result.scores.values()) < 0.25
    labels = {"model": "churn", "version": "1", "role": "champion", "reference": "training"}
    assert gauge(drift, DRIFT_SHARE, **labels) == pytest.approx(result.share)
    assert gauge(drift, DRIFT_FEATURE_SCORE, **labels, feature="tenure") == pytest.approx(result.scores["tenure"])


def test_a_shifted_population_is_drift_and_names_its_columns(service, traffic):
    drift, client = service
    log(client, *traffic["shifted"])
    (result,) = drift.compute()
    assert result.detected and result.share >= 0.5, result.summary()
    assert {"contract", "tenure"} <= set(result.drifted)
    assert "DRIFT" in result.summary() and "contract" in result.summary()
    body = client.get("/models/churn").json()
    assert body["results"][0]["detected"] is True and body["windows"] == {"champion": 400}


def test_a_canary_whose_predictions_moved_is_caught_against_the_champion(service, traffic):
    drift, client = service
    rows, scores = traffic["same"]
    log(client, rows, scores, role="champion", version="1")
    inflated = np.clip(np.asarray(scores) + 0.35, 0, 1)  # same inputs, a model that predicts churn far more often
    log(client, rows, inflated, role="canary", version="1")
    results = {(r.role, r.reference): r for r in drift.compute()}
    against_champion = results[("canary", "champion")]
    assert "prediction" in against_champion.drifted
    assert against_champion.scores["prediction"] > 0.25
    assert against_champion.scores["tenure"] == pytest.approx(0.0, abs=1e-9)  # identical inputs
    assert not results[("canary", "training")].detected


def test_too_few_rows_compute_nothing(service, traffic):
    drift, client = service
    rows, scores = traffic["same"]
    log(client, rows[:100], scores[:100])
    assert drift.compute() == []
    assert client.get("/models/churn").json()["results"] == []


def test_the_evidently_report_is_html(service, traffic):
    _, client = service
    log(client, *traffic["shifted"])
    response = client.get("/models/churn/report", params={"role": "champion", "reference": "training"})
    assert response.status_code == 200 and response.text.lstrip().lower().startswith("<!doctype html>")
    assert "contract" in response.text  # the drifted column is in the report
    assert client.get("/models/churn/report", params={"role": "boss"}).status_code == 400
    assert client.get("/models/nope/report").status_code == 404


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda h, b: ({k: v for k, v in h.items() if k != "ce-type"}, b), "header ce-type"),
        (lambda h, b: ({**h, "ce-type": "com.example.other"}, b), "header ce-type"),
        (lambda h, b: ({k: v for k, v in h.items() if k != "ce-id"}, b), "header ce-id"),
        (lambda h, b: ({k: v for k, v in h.items() if k != "ce-inferenceservicename"}, b), "ce-inferenceservicename"),
        (lambda h, b: (h, b"{not json"), "body: not JSON"),
        (lambda h, b: (h, b'{"rows": []}'), "neither 'instances'"),
        (lambda h, b: (h, b'{"instances": [1, 2]}'), "body.instances"),
        (lambda h, b: (h, b'{"inputs": [{"name": "a", "data": [1]}, {"name": "b", "data": [1, 2]}]}'), "body.inputs"),
    ],
)
def test_bad_events_are_400s_naming_the_problem(service, change, named):
    drift, client = service
    headers, body = change(_headers(REQUEST_EVENT, "e1", "champion", "1"), b'{"instances": [{"tenure": 1}]}')
    response = client.post("/", content=body, headers=headers)
    assert response.status_code == 400 and named in response.json()["error"]
    assert gauge(drift, DRIFT_EVENTS_TOTAL, outcome="invalid") == 1.0
    assert client.get("/healthz").status_code == 200  # and it keeps serving


def test_a_new_version_in_a_role_starts_a_new_window_and_drops_old_series(service, traffic):
    drift, client = service
    log(client, *traffic["same"], version="1")
    drift.compute()
    labels = {"model": "churn", "version": "1", "role": "champion", "reference": "training"}
    assert gauge(drift, DRIFT_SHARE, **labels) is not None
    rows, scores = traffic["same"]
    log(client, rows[:20], scores[:20], version="1")  # still v1: same window
    assert len(drift.windows[("churn", "champion")].rows) == 400
    event = str(uuid.uuid4())
    client.post(
        "/", content=json.dumps({"instances": rows[:1]}), headers=_headers(REQUEST_EVENT, event, "champion", "7")
    )
    assert drift.windows[("churn", "champion")].version == "7" and not drift.windows[("churn", "champion")].rows
    assert gauge(drift, DRIFT_SHARE, **labels) is None
