"""The drift service on real payload-log CloudEvents, a real MLflow registry and Evidently: the same
population shows no drift, a shifted one does (and says which columns), a canary whose predictions
moved is caught against the champion, and malformed events are 400s naming what is wrong. Events come
in KServe's binary mode, one structured event or the plane's batches; a request answered with an error
or never answered leaves nothing behind."""

from __future__ import annotations

import json
import time
import uuid

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from monitoring.drift import (
    PREDICTION_COLUMN,
    DriftService,
    Features,
    ReferenceStore,
    create_app,
    psi_report,
    psi_scores,
    report_scores,
)
from monitoring.metrics import (
    DRIFT_EVENTS_TOTAL,
    DRIFT_FEATURE_SCORE,
    DRIFT_PENDING_DISCARDED_TOTAL,
    DRIFT_PENDING_REQUESTS,
    DRIFT_SHARE,
)
from monitoring.payload_log import (
    BATCH_CONTENT_TYPE,
    HEADER_LENGTH_ATTRIBUTE,
    REQUEST_EVENT,
    RESPONSE_EVENT,
    STRUCTURED_CONTENT_TYPE,
)
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

    def scored(frame):
        rows = instances(churn_spec, frame)
        columns = {f: [r[f] for r in rows] for f in churn_spec.feature_names}
        return rows, loaded.score(columns)

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


@pytest.mark.parametrize("population", ["same", "shifted", "canary vs champion"])
def test_the_services_scores_are_the_ones_evidentlys_report_shows(service, traffic, population):
    """The gauges come from Evidently's column drift without building its report (the charts cost ~95 %
    of a run); the HTML report a person opens must say exactly the same."""
    drift, client = service
    if population == "canary vs champion":
        rows, scores = traffic["same"]
        log(client, rows, scores, role="champion")
        log(client, rows, np.clip(np.asarray(scores) + 0.35, 0, 1), role="canary")
        features, _ = drift.references.get("churn", "1")
        features = Features([*features.numerical, PREDICTION_COLUMN], features.categorical)
        current, reference = drift.windows[("churn", "canary")].frame(), drift.windows[("churn", "champion")].frame()
    else:
        log(client, *traffic[population])
        features, reference = drift.references.get("churn", "1")
        current = drift.windows[("churn", "champion")].frame()
    fast, shown = psi_scores(current, reference, features), report_scores(psi_report(current, reference, features))
    assert fast.scores.keys() == shown.scores.keys() and len(fast.scores) >= len(features.names)
    for column, score in shown.scores.items():
        assert fast.scores[column] == pytest.approx(score, rel=1e-9, abs=1e-12), column
    assert (fast.share, fast.detected, fast.drifted) == (pytest.approx(shown.share), shown.detected, shown.drifted)
    assert fast.detected == (population == "shifted")
    assert ("prediction" in fast.drifted) == (population == "canary vs champion")


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


def test_kserves_standard_mode_events_are_told_apart_by_their_logger_url(service, traffic):
    """KServe's agent in Standard mode sends an empty `endpoint` and `source` and no version: each predictor's
    logger URL names its revision (serving.inference_service.revision_log_url)."""
    drift, client = service
    rows, scores = traffic["same"]

    def agent_logs(url: str, requests: int) -> None:
        for i in range(requests):
            event_id = str(uuid.uuid4())
            answer = {"predictions": [{"label": "x", "probability": float(scores[i])}]}
            for kind, body in ((REQUEST_EVENT, {"instances": rows[i : i + 1]}), (RESPONSE_EVENT, answer)):
                headers = {**_headers(kind, event_id, "champion", "1"), "ce-endpoint": "", "ce-source": ""}
                del headers["ce-modelid"]
                response = client.post(url, content=json.dumps(body), headers=headers)
                assert response.status_code == 202, response.text

    agent_logs("/?role=canary&version=2", 3)
    agent_logs("/?role=champion&version=1", 2)
    agent_logs("/", 1)  # a logger URL naming nothing: the champion, at the registry's @champion
    canary, champion = drift.windows[("churn", "canary")], drift.windows[("churn", "champion")]
    assert (canary.version, len(canary.rows)) == ("2", 3)
    assert (champion.version, len(champion.rows)) == ("1", 3)


def _structured(kind: str, event_id: str, data: dict, status: int | None = None, role="champion", version="1") -> dict:
    """One event in the JSON event format, as the local plane batches them."""
    event = {
        **{k.removeprefix("ce-"): v for k, v in _headers(kind, event_id, role, version).items() if k.startswith("ce-")},
        "datacontenttype": "application/json",
        "data": data,
    }
    if status is not None:
        event["statuscode"] = status
    return event


def _batch(client, events: list) -> dict:
    response = client.post("/", content=json.dumps(events), headers={"content-type": BATCH_CONTENT_TYPE})
    assert response.status_code == 202, response.text
    return response.json()


def pending(client) -> dict:
    return client.get("/models/churn").json()["pending"]


def test_batch_structured_and_binary_modes_are_all_ingested(service, traffic):
    drift, client = service
    rows, scores = traffic["same"]
    log(client, rows[:20], scores[:20])  # binary mode, as KServe's logger sends
    events = []
    for i in range(20, 40):
        prediction = {"predictions": [{"label": "x", "probability": float(scores[i])}]}
        events += [
            _structured(REQUEST_EVENT, f"b{i}", {"instances": [rows[i]]}),
            _structured(RESPONSE_EVENT, f"b{i}", prediction, 200),
        ]
    assert _batch(client, events) == {"events": 40, "rows": 20, "invalid": []}
    one = _structured(REQUEST_EVENT, "s1", {"instances": rows[40:45]})
    answered = _structured(RESPONSE_EVENT, "s1", {"predictions": [float(p) for p in scores[40:45]]})
    for event in (one, answered):
        response = client.post("/", content=json.dumps(event), headers={"content-type": STRUCTURED_CONTENT_TYPE})
        assert response.status_code == 202, response.text
    assert len(drift.windows[("churn", "champion")].rows) == 45
    assert pending(client) == {"champion": 0}


def test_a_bad_event_in_a_batch_is_named_by_index_and_keeps_nothing_else_out(service, traffic):
    drift, client = service
    rows, scores = traffic["same"]
    events = [
        _structured(REQUEST_EVENT, "a", {"instances": rows[:1]}),
        {**_structured(REQUEST_EVENT, "b", {"instances": rows[:1]}), "type": "com.example.other"},
        "not an event",
        _structured(RESPONSE_EVENT, "a", {"predictions": [float(scores[0])]}),
    ]
    answer = _batch(client, events)
    assert answer["rows"] == 1 and [i["index"] for i in answer["invalid"]] == [1, 2]
    assert "events[1].type" in answer["invalid"][0]["error"]
    assert gauge(drift, DRIFT_EVENTS_TOTAL, outcome="invalid") == 2.0
    not_a_batch = client.post("/", content=b'{"type": "x"}', headers={"content-type": BATCH_CONTENT_TYPE})
    assert not_a_batch.status_code == 400 and "JSON array" in not_a_batch.json()["error"]


@pytest.mark.parametrize("mode", ["binary", "batch"])
def test_a_request_answered_with_an_error_is_dropped_at_once(service, traffic, mode):
    drift, client = service
    rows, _ = traffic["same"]
    error = {"error": "instances[0].tenure: expected a number"}
    for i in range(10):
        request = {"instances": rows[:1000]}  # big rejected requests used to stay in memory
        if mode == "batch":
            _batch(
                client, [_structured(REQUEST_EVENT, f"e{i}", request), _structured(RESPONSE_EVENT, f"e{i}", error, 400)]
            )
        else:
            client.post("/", content=json.dumps(request), headers=_headers(REQUEST_EVENT, f"e{i}", "champion", "1"))
            assert pending(client) == {"champion": 1}
            headers = {**_headers(RESPONSE_EVENT, f"e{i}", "champion", "1"), "ce-statuscode": "400"}
            assert client.post("/", content=json.dumps(error), headers=headers).status_code == 202
    assert pending(client) == {"champion": 0}
    assert gauge(drift, DRIFT_PENDING_REQUESTS) == 0.0
    assert gauge(drift, DRIFT_PENDING_DISCARDED_TOTAL, reason="error_response") == 10.0
    assert not drift.windows[("churn", "champion")].rows  # an error is not a prediction


def test_a_response_that_comes_before_its_request_is_paired_when_the_request_comes(service, traffic):
    """KServe's agent posts a prediction's request and response events from concurrent workers (found on the real
    node: its response came first, and the prediction was lost)."""
    drift, client = service
    rows, scores = traffic["same"]
    for i in range(3):
        answer = {"predictions": [{"label": "x", "probability": float(p)} for p in scores[i * 4 : i * 4 + 4]]}
        posted = client.post(
            "/", content=json.dumps(answer), headers=_headers(RESPONSE_EVENT, f"r{i}", "champion", "1")
        )
        assert posted.json() == {"rows": 0} and pending(client) == {"champion": i + 1}
    error = {**_headers(RESPONSE_EVENT, "rejected", "champion", "1"), "ce-statuscode": "400"}
    client.post("/", content=json.dumps({"error": "instances[0].tenure: expected a number"}), headers=error)
    for i in range(3):
        request = {"instances": rows[i * 4 : i * 4 + 4]}
        posted = client.post(
            "/", content=json.dumps(request), headers=_headers(REQUEST_EVENT, f"r{i}", "champion", "1")
        )
        assert posted.json() == {"rows": 4}
    rejected = client.post(
        "/", content=json.dumps({"instances": rows[:1]}), headers=_headers(REQUEST_EVENT, "rejected", "champion", "1")
    )
    assert rejected.json() == {"rows": 0}
    window = drift.windows[("churn", "champion")]
    assert [row["prediction"] for row in window.rows] == pytest.approx([float(p) for p in scores[:12]])
    assert pending(client) == {"champion": 0}
    assert gauge(drift, DRIFT_PENDING_DISCARDED_TOTAL, reason="error_response") == 1.0


def test_in_a_batch_a_response_without_its_request_is_dropped_at_once(service, traffic):
    """A batch comes in order (the plane queues a prediction's request before its response): a response whose
    request was refused as a bad event has nothing to wait for."""
    _, client = service
    _, scores = traffic["same"]
    answer = {"predictions": [{"label": "x", "probability": float(scores[0])}]}
    bad_request = _structured(REQUEST_EVENT, "b1", {"instances": "not rows"})
    result = _batch(client, [bad_request, _structured(RESPONSE_EVENT, "b1", answer)])
    assert [e["index"] for e in result["invalid"]] == [0]
    assert pending(client) == {"champion": 0}


def test_a_request_whose_response_never_comes_expires_after_the_ttl(registered_churn, traffic):
    """KServe's own logger sends no response event for an error: the request must not stay forever,
    even when no further event arrives to trigger a clean-up."""
    drift = DriftService(ReferenceStore(registered_churn["tracking_uri"]), CollectorRegistry(), 400, 200, 0.5)
    rows, _ = traffic["same"]
    with TestClient(create_app(drift, compute_interval=3600)) as client:
        for i in range(3):
            body = json.dumps({"instances": rows[:50]})
            client.post("/", content=body, headers=_headers(REQUEST_EVENT, f"lost{i}", "champion", "1"))
        assert pending(client) == {"champion": 3}
        deadline = time.monotonic() + 5
        while pending(client) != {"champion": 0}:
            assert time.monotonic() < deadline, f"still pending after 5 s with a 0.5 s TTL: {pending(client)}"
            time.sleep(0.1)
        assert gauge(drift, DRIFT_PENDING_DISCARDED_TOTAL, reason="expired") == 3.0
        metrics = client.get("/metrics").text
        assert f"{DRIFT_PENDING_REQUESTS} 0.0" in metrics


def test_binary_tensor_bodies_are_decoded_with_kserves_parser(service, traffic, churn_spec):
    """A request in the binary tensor extension (what tritonclient sends by default) and a binary
    response, as the plane logs them: data_base64 plus the JSON header's length."""
    import base64

    import tritonclient.http as triton
    from kserve.protocol.infer_type import InferOutput, InferResponse

    drift, client = service
    rows, scores = traffic["same"]
    tensors = []
    for f in churn_spec.features:
        values = [[r[f.name]] for r in rows[:3]]
        datatype = "BYTES" if f.type == "category" else "FP64"
        array = np.array(values, dtype=object if datatype == "BYTES" else np.float64)
        tensor = triton.InferInput(f.name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=True)
        tensors.append(tensor)
    body, json_length = triton.InferenceServerClient.generate_request_body(tensors)
    output = InferOutput("probability", [3], "FP32")
    output.set_data_from_numpy(np.asarray(scores[:3], dtype=np.float32), binary_data=True)
    answer, answer_length = InferResponse("r", "churn", [output], use_binary_outputs=True).to_rest()

    def binary_event(kind: str, data: bytes, length: int) -> dict:
        event = _structured(kind, "t1", {}, 200 if kind == RESPONSE_EVENT else None)
        del event["data"]
        return {**event, "data_base64": base64.b64encode(data).decode(), HEADER_LENGTH_ATTRIBUTE: str(length)}

    events = [binary_event(REQUEST_EVENT, body, json_length), binary_event(RESPONSE_EVENT, answer, answer_length)]
    assert _batch(client, events) == {"events": 2, "rows": 3, "invalid": []}
    window = drift.windows[("churn", "champion")].frame()
    assert list(window["contract"]) == [r["contract"] for r in rows[:3]]
    np.testing.assert_allclose(window["prediction"], np.asarray(scores[:3], dtype=np.float32))


def test_whatever_a_client_sent_a_bad_request_event_never_costs_the_batch_or_a_window(service, traffic):
    """Found by fuzzing through the plane: tensors named by a list, data that is a number, nesting deeper
    than json parses, values that are lists. Each is refused by index; the good events around them, and
    [n, 1] data sent as one-element rows (which the predictor answers 200), land as scalar rows."""
    drift, client = service
    rows, scores = traffic["same"]
    before = len(drift.windows[("churn", "champion")].rows) if ("churn", "champion") in drift.windows else 0
    tenure = [{"name": "tenure", "shape": [1, 1], "datatype": "FP32", "data": [[float(rows[0]["tenure"])]]}]
    bad_bodies = [
        {"inputs": [{"name": ["tenure"], "shape": [1], "datatype": "FP32", "data": [1.0]}]},
        {"inputs": [{"name": {"a": 1}, "shape": [1], "datatype": "FP32", "data": [1.0]}]},
        {"inputs": [{"name": "tenure", "shape": [1], "datatype": "FP32", "data": 1.0}]},
        {"instances": [{**rows[0], "contract": ["Month-to-month"]}]},
    ]
    events = [_structured(REQUEST_EVENT, f"bad{i}", body) for i, body in enumerate(bad_bodies)]
    events.append(_structured(REQUEST_EVENT, "nested", {"inputs": tenure}))
    events.append(_structured(RESPONSE_EVENT, "nested", {"predictions": [float(scores[0])]}, status=200))
    deep = {**_structured(REQUEST_EVENT, "deep", {}), "data_base64": None}
    deep.pop("data")
    events.append(deep)  # no data at all
    answer = _batch(client, events)
    assert [i["index"] for i in answer["invalid"]] == [0, 1, 2, 3, 6], answer
    assert "body.inputs" in answer["invalid"][0]["error"] and ".data: expected a list" in answer["invalid"][2]["error"]
    assert "body.instances[0].contract: expected a number, a string or null" in answer["invalid"][3]["error"]
    assert answer["rows"] == 1
    window = drift.windows[("churn", "champion")].rows
    assert len(window) == before + 1 and window[-1]["tenure"] == float(rows[0]["tenure"])  # flattened

    too_deep = b"[" * 100_000 + b"]" * 100_000  # deeper than json can parse: a 400, not a 500
    binary = client.post("/", content=too_deep, headers=_headers(REQUEST_EVENT, "deep", "champion", "1"))
    assert binary.status_code == 400 and binary.json()["error"].startswith("body: not JSON")


def test_an_error_quoting_a_lone_surrogate_is_still_answered(service):
    """A client's text in an error message (here a feature name with a lone surrogate) must not turn the
    answer into a 500 that loses the batch."""
    _drift, client = service
    # json.dumps escapes it; the service decodes the lone surrogate back and names the field with it.
    event = _structured(REQUEST_EVENT, "s", {"instances": [{"x\udfff": [1]}]})
    answer = _batch(client, [event])
    assert answer["invalid"][0]["index"] == 0 and "body.instances[0].x" in answer["invalid"][0]["error"]


def test_the_service_deletes_old_unlabelled_predictions_and_keeps_labelled_ones(registered_churn, tmp_path):
    """Retention runs in the service itself (at start, then hourly): a prediction no label came for in
    --unlabelled-retention-days is deleted, a labelled one of the same age and a recent one are kept."""
    from components.outcomes import Feedback, OutcomeLedger, Prediction, TargetValues
    from monitoring.quality import QualityMonitor

    ledger = OutcomeLedger.at(str(tmp_path / "feature_repo"))
    now, day = time.time(), 86_400

    def made(prediction_id: str, age_days: float) -> Prediction:
        return Prediction(prediction_id, "churn", "1", "champion", now - age_days * day, 0.3, {"tenure": 1})

    ledger.record_predictions([made("stale", 3), made("labelled", 3), made("recent", 0.5)])
    target = TargetValues("churn", "Yes", "No")
    assert ledger.record_feedback("churn", [Feedback("Yes", id="labelled")], lambda v: target).accepted == 1
    references, registry = ReferenceStore(registered_churn["tracking_uri"]), CollectorRegistry()
    service = DriftService(references, registry, ledger=ledger)
    quality = QualityMonitor(ledger, references.facts, registry)
    app = create_app(service, compute_interval=3600, quality=quality, unlabelled_retention_days=1)
    with TestClient(app):
        deadline = time.monotonic() + 30
        while ledger.counts("churn")["predictions"] > 2 and time.monotonic() < deadline:
            time.sleep(0.1)
    left = OutcomeLedger.at(str(tmp_path / "feature_repo"))
    assert left.counts("churn") == {"predictions": 2, "labels": 1}
    assert list(left.labelled("churn")["id"]) == ["labelled"]
    assert left.prune_unlabelled(now - 0.25 * day) == 1  # "recent" was kept only for being recent


def test_a_negative_retention_is_refused_with_the_flag_named(registered_churn, capsys):
    from monitoring.drift import main

    with pytest.raises(SystemExit) as info:
        main(["--tracking-uri", registered_churn["tracking_uri"], "--unlabelled-retention-days", "-1"])
    assert info.value.code == 2
    assert "--unlabelled-retention-days must be 0 (keep) or more, got -1.0" in capsys.readouterr().err
