"""The outcome ledger's PostgreSQL dies (stopped as a crash would) under the drift service: feedback is a 503
that says to send again (never a 500, never "accepted" for labels that were not kept), drift ingestion goes
on and counts the predictions it could not record, and once the database is back the same labels are taken."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from components.outcomes import OutcomeLedger, Prediction
from monitoring.drift import DriftService, ReferenceStore, create_app
from monitoring.payload_log import BATCH_CONTENT_TYPE, REQUEST_EVENT, RESPONSE_EVENT
from monitoring.quality import QualityMonitor
from serving.traffic import instances


@pytest.fixture
def own_postgres():
    from tests.support import postgres

    server = postgres.start()
    try:
        yield server
    finally:
        postgres.stop(server)


def _events(rows: list[dict], request_id: str) -> bytes:
    common = {"specversion": "1.0", "id": request_id, "source": "test", "inferenceservicename": "churn"}
    common |= {"endpoint": "default", "modelid": "1"}
    request = {**common, "type": REQUEST_EVENT, "data": {"instances": rows}}
    response = {**common, "type": RESPONSE_EVENT, "data": {"predictions": [{"probability": 0.4} for _ in rows]}}
    return json.dumps([request, response]).encode()


def test_a_dead_ledger_database_is_a_503_and_loses_no_acknowledged_label(
    own_postgres, registered_churn, churn_spec, churn_frame
):
    from tests.support import postgres

    location = own_postgres.create_database(f"ledger_{uuid.uuid4().hex[:8]}")
    ledger = OutcomeLedger.at(location)
    references, registry = ReferenceStore(registered_churn["tracking_uri"]), CollectorRegistry()
    service = DriftService(references, registry, ledger=ledger)
    quality = QualityMonitor(ledger, references.facts, registry)
    rows = instances(churn_spec, churn_frame.head(3))
    url, batch = "/models/churn/feedback", {"content-type": BATCH_CONTENT_TYPE}
    with TestClient(create_app(service, compute_interval=3600, quality=quality)) as client:
        assert client.post("/", content=_events(rows, "before"), headers=batch).status_code == 202
        ledger.record_predictions([Prediction("kept-0", "churn", "1", "champion", time.time(), 0.4, rows[0])])
        labels = {"labels": [{"id": "before-0", "label": "Yes"}, {"id": "before-1", "label": "No"}]}

        postgres.halt(own_postgres)
        refused = client.post(url, json=labels)
        assert refused.status_code == 503, refused.text
        assert "the outcome ledger is unavailable" in refused.json()["error"]
        assert "send the labels again" in refused.json()["error"] and refused.headers["retry-after"] == "5"
        assert client.get("/models/churn/quality").status_code == 503
        # Drift goes on: the batch is ingested, its predictions counted as not recorded.
        ingested = client.post("/", content=_events(rows, "during"), headers=batch)
        assert ingested.status_code == 202 and ingested.json()["rows"] == 3
        assert registry.get_sample_value("shepherd_outcome_ledger_failures_total") == 3.0

        postgres.resume(own_postgres)
        taken = client.post(url, json=labels)
        assert taken.status_code == 200 and taken.json() == {"accepted": 2, "duplicates": 0, "skipped": 0}
        counts = client.get("/models/churn/quality").json()
        assert (counts["predictions"], counts["labels"]) == (4, 2)  # "before" rows and "kept-0"; none of "during"
    ledger.close()
