"""Ground truth through the plane, as a client sends it: predictions answered with ids (V1 batches, V2), their
labels back through `POST /v1/models/<m>/feedback` and `shepherd feedback`, bad feedback refused naming the
field, live quality from the joined rows, and every process killed without losing an acknowledged label."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import pytest

from serving.backends import LocalBackend, start_plane
from serving.inference_service import build_inference_service
from serving.plane_auth import token_for
from serving.traffic import instances
from tests.conftest import REPO
from tests.support.plane_processes import is_gone, plane_pid, running_plane
from tests.support.waiting import wait_for


@pytest.fixture(scope="module")
def plane(two_versions, churn_spec, tmp_path_factory):
    home = tmp_path_factory.mktemp("plane-feedback")
    with running_plane(home, two_versions) as started:
        drift = f"{started.url}/drift/"
        LocalBackend(started.url).apply(
            build_inference_service(churn_spec, "2", champion_version="1", canary_percent=50, payload_log_url=drift)
        )
        started.home = home
        yield started


@pytest.fixture(scope="module")
def rows(churn_spec, churn_frame):
    return instances(churn_spec, churn_frame.head(40))


def _auth(plane) -> dict:
    return {"Authorization": f"Bearer {token_for(plane.url)}"}


def _quality(plane) -> dict:
    return httpx.get(f"{plane.url}/drift/models/churn/quality", timeout=30).json()


def _logged(plane, at_least: int) -> dict:
    """Wait until the ledger holds `at_least` predictions (the payload log is asynchronous)."""
    return wait_for(lambda: (q := _quality(plane))["predictions"] >= at_least and q, seconds=30, what="logged rows")


def _cli(plane, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args],
        cwd=REPO,
        env={**os.environ, "SHEPHERD_HOME": str(plane.home), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _v2(churn_spec, rows) -> dict:
    return {
        "inputs": [
            {
                "name": f.name,
                "shape": [len(rows)],
                "datatype": "BYTES" if f.type == "category" else "FP64",
                "data": [r[f.name] if r[f.name] is not None else 0.0 for r in rows],
            }
            for f in churn_spec.features
        ]
    }


def test_ids_round_trip_from_v1_and_v2_predictions_to_recorded_labels(plane, rows, churn_spec, tmp_path):
    before = _quality(plane)
    v1 = httpx.post(f"{plane.url}/v1/models/churn:predict", json={"instances": rows[:4]}, timeout=30).json()
    v1_ids = [p["id"] for p in v1["predictions"]]
    v2 = httpx.post(f"{plane.url}/v2/models/churn/infer", json=_v2(churn_spec, rows[4:7]), timeout=30).json()
    v2_ids = next(o["data"] for o in v2["outputs"] if o["name"] == "prediction_id")
    assert len(set(v1_ids + v2_ids)) == 7
    _logged(plane, before["predictions"] + 7)

    answer = httpx.post(
        f"{plane.url}/v1/models/churn/feedback",
        json={"labels": [{"id": i, "label": "Yes" if n % 2 else "No"} for n, i in enumerate(v1_ids)]},
        headers=_auth(plane),
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"accepted": 4, "duplicates": 0, "skipped": 0}

    labels = tmp_path / "labels.csv"  # as an ML engineer would export them
    labels.write_text("id,label\n" + "".join(f"{i},{n % 2}\n" for n, i in enumerate(v2_ids)))
    sent = _cli(plane, "feedback", "churn", str(labels))
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "3 label(s) recorded for churn" in sent.stdout
    again = _cli(plane, "feedback", "churn", str(labels))
    assert again.returncode == 0 and "0 label(s) recorded for churn, 3 already recorded" in again.stdout
    assert _quality(plane)["labels"] == before["labels"] + 7


def test_labels_by_entity_key_and_event_time_reach_the_predictions_of_keyed_requests(
    plane, rows, churn_frame, tmp_path
):
    """Requests that carry the entity key beside the features; the ground truth comes back as a label
    pipeline knows it, by customer and the time the outcome was observed, through `shepherd feedback`."""
    from datetime import UTC, datetime

    from components.outcomes import OutcomeLedger

    customers = [int(c) for c in churn_frame.head(6)["customer_id"]]
    keyed = [{**row, "customer_id": customer} for row, customer in zip(rows[:6], customers, strict=True)]
    before = _quality(plane)
    answered = httpx.post(f"{plane.url}/v1/models/churn:predict", json={"instances": keyed}, timeout=30)
    assert answered.status_code == 200, answered.text
    ids = [p["id"] for p in answered.json()["predictions"]]
    _logged(plane, before["predictions"] + 6)

    observed = datetime.now(UTC).isoformat()
    labels = tmp_path / "outcomes.csv"
    labels.write_text("entity,event_time,label\n" + "".join(f"{c},{observed},Yes\n" for c in customers))
    sent = _cli(plane, "feedback", "churn", str(labels))
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "6 label(s) recorded for churn" in sent.stdout
    assert _quality(plane)["labels"] == before["labels"] + 6
    ledger = OutcomeLedger.at(str(plane.home / "feature_repo"))
    try:
        joined = ledger.labelled("churn")
    finally:
        ledger.close()
    mine = joined[joined["id"].isin(ids)]
    assert sorted(mine["id"]) == sorted(ids) and set(mine["label"]) == {"Yes"}
    assert sorted(mine["entity_key"].astype(int)) == sorted(customers)


def test_bad_feedback_is_a_4xx_naming_the_field_and_records_nothing(plane, rows):
    answered = httpx.post(f"{plane.url}/v1/models/churn:predict", json={"instances": rows[:1]}, timeout=30).json()
    known = answered["predictions"][0]["id"]
    before = _logged(plane, 1)["labels"]
    url = f"{plane.url}/v1/models/churn/feedback"
    unauthenticated = httpx.post(url, json={"labels": [{"id": known, "label": "Yes"}]}, timeout=30)
    assert unauthenticated.status_code == 401
    cases = [
        ({"labels": [{"id": known, "label": "Yes"}, {"id": "never-answered-0", "label": "No"}]}, 422, "labels[1].id"),
        ({"labels": [{"id": known, "label": "Maybe"}]}, 422, "labels[0].label: 'Maybe' is not a value of the target"),
        ({"labels": [{"label": "Yes"}]}, 422, "labels[0].id: required"),
        ({"rows": []}, 422, "labels: required"),
    ]
    for body, status, named in cases:
        answer = httpx.post(url, json=body, headers=_auth(plane), timeout=30)
        assert answer.status_code == status, answer.text
        assert named in answer.json()["error"]
    not_json = httpx.post(url, content=b"{labels", headers=_auth(plane), timeout=30)
    assert not_json.status_code == 400 and "body: not JSON" in not_json.json()["error"]
    assert _quality(plane)["labels"] == before

    skipped = httpx.post(
        url,
        params={"skip_unknown": "true"},
        json={"labels": [{"id": known, "label": "Yes"}, {"id": "never-answered-0", "label": "No"}]},
        headers=_auth(plane),
        timeout=30,
    )
    assert skipped.json() == {"accepted": 1, "duplicates": 0, "skipped": 1}


def test_the_cli_names_the_bad_rows_and_exits_with_the_feedback_code(plane, tmp_path):
    labels = tmp_path / "labels.jsonl"
    labels.write_text('{"id": "never-answered-0", "label": "Yes"}\n')
    sent = _cli(plane, "feedback", "churn", str(labels))
    said = sent.stdout + sent.stderr
    assert sent.returncode == 10, said
    assert "labels[0].id: no prediction of 'churn' for id 'never-answered-0'" in said
    assert "--skip-unknown" in said and "Traceback" not in said


def test_live_quality_scores_the_labelled_revisions(plane, rows, churn_frame):
    """Enough labelled traffic that both revisions have a window; the gauges are on the drift service's
    /metrics, as Prometheus scrapes them."""
    truth = churn_frame.head(40)["churn"].tolist()
    logged_before = _quality(plane)["predictions"]
    # The plane splits requests 50/50 at random: requests go until each revision answered two of them (a fixed
    # number of requests would all go to one revision now and then), and those two are labelled.
    labelled, answered, sent = [], {"champion": 0, "canary": 0}, 0
    while min(answered.values()) < 2:
        assert sent < 60, answered  # a 50 % split answers both long before
        response = httpx.post(f"{plane.url}/v1/models/churn:predict", json={"instances": rows}, timeout=30)
        sent += 1
        role = response.headers["x-shepherd-role"]
        if answered[role] < 2:
            answered[role] += 1
            pairs = zip(response.json()["predictions"], truth, strict=True)
            labelled += [{"id": p["id"], "label": label} for p, label in pairs]
    _logged(plane, logged_before + sent * len(rows))  # these, not only the earlier tests'
    answer = httpx.post(
        f"{plane.url}/v1/models/churn/feedback", json={"labels": labelled}, headers=_auth(plane), timeout=30
    )
    assert answer.status_code == 200 and answer.json()["accepted"] == 160, answer.text

    def scored():
        revisions = {r["role"]: r for r in _quality(plane)["revisions"]}
        return len(revisions) == 2 and all(r["labelled_rows"] >= 40 for r in revisions.values()) and revisions

    revisions = wait_for(scored, seconds=30, what="quality of both revisions")
    assert revisions["champion"]["version"] == "1" and revisions["canary"]["version"] == "2"
    assert revisions["champion"]["metrics"]["roc_auc"] > 0.6  # a real model on its own training rows
    shown = _cli(plane, "quality", "status", "churn")
    assert shown.returncode == 0 and "v1 (champion)" in shown.stdout and "v2 (canary)" in shown.stdout, shown.stdout
    checked = _cli(plane, "quality", "check", "churn", "--no-retrain")  # 80 labels each: the alert needs 200
    assert checked.returncode == 1 and "the alert needs 200" in checked.stdout + checked.stderr
    metrics = httpx.get(f"{plane.url}/drift/metrics", timeout=30).text
    assert 'shepherd_model_quality{metric="roc_auc",model="churn",role="canary",version="2"}' in metrics
    assert 'shepherd_model_quality_minimum{metric="roc_auc",model="churn"} 0.8' in metrics


def test_killing_every_process_loses_no_acknowledged_label(plane, rows, two_versions):
    """SIGKILL the plane (its drift service and predictors die with it), start it again on the same home:
    every label acknowledged before is still there, and sending one again is a duplicate."""
    logged_before = _quality(plane)["predictions"]
    body = httpx.post(f"{plane.url}/v1/models/churn:predict", json={"instances": rows[:2]}, timeout=30).json()
    ids = [p["id"] for p in body["predictions"]]
    _logged(plane, logged_before + 2)  # these two, not the earlier tests' (a label for an unlogged id is a 422)
    sent = httpx.post(
        f"{plane.url}/v1/models/churn/feedback",
        json={"labels": [{"id": i, "label": "No"} for i in ids]},
        headers=_auth(plane),
        timeout=30,
    )
    assert sent.status_code == 200, sent.text
    counts = _quality(plane)
    pid = plane_pid(plane.home)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: is_gone(pid), seconds=20, what="the plane to die")
    port = int(plane.url.rsplit(":", 1)[1])
    restarted = start_plane(plane.home, two_versions, port)
    assert restarted.url == plane.url
    after = _quality(plane)
    assert (after["predictions"], after["labels"]) == (counts["predictions"], counts["labels"])
    again = httpx.post(
        f"{plane.url}/v1/models/churn/feedback",
        json={"labels": [{"id": i, "label": "No"} for i in ids]},
        headers=_auth(plane),
        timeout=30,
    )
    assert again.json() == {"accepted": 0, "duplicates": 2, "skipped": 0}


def test_traffic_keeps_the_real_labels_of_held_out_rows_for_feedback(plane, churn_spec, churn_frame, tmp_path):
    """The demo's path: `shepherd traffic --held-out --labels-out` sends rows no model trained on and writes the
    source's own label for each answered prediction; `shepherd feedback` sends them back."""
    from components.train import split

    labels = tmp_path / "labels.csv"
    sent = _cli(plane, "traffic", "-n", "3", "--batch", "2", "--held-out", "--labels-out", str(labels))
    assert sent.returncode == 0, sent.stdout + sent.stderr
    written = labels.read_text().splitlines()
    assert written[0] == "id,label" and len(written) == 7
    _, holdout = split(churn_frame, churn_spec)
    first_rows = holdout.sort_values("customer_id").head(2)  # the held-out rows, in the source's order
    assert [line.split(",")[1] for line in written[1:3]] == list(first_rows["churn"])
    back = _cli(plane, "feedback", "churn", str(labels))
    assert back.returncode == 0 and "6 label(s) recorded" in back.stdout, back.stdout + back.stderr
