"""A canary whose predictor answers 500 from *preprocessing* (before the model is called) is seen by the
error-rate gate and rolled back by the rollout loop on a real local plane: its 500s are counted as errors
by the canary's own metrics, the loop scrapes them, the canary goes to 0 % and @champion never moves."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from components import registry
from serving.backends import LocalBackend
from serving.inference_service import build_inference_service
from serving.inference_service_view import serving_container
from serving.predictor import ENV_FAULT_ERROR_RATE, ENV_FAULT_STAGE
from serving.rollout.loop import reconcile_once
from serving.rollout.machine import Action
from serving.traffic import instances, send
from tests.support.plane_processes import running_plane
from tests.support.rollouts import champion_and_challenger, fast_rollout_spec


@pytest.fixture(scope="module")
def fast_spec(churn_spec):
    # Only the error-rate gate decides here; the latency gate is loose on a shared machine (see
    # tests/serving/test_rollout_loop.py).
    return fast_rollout_spec(
        churn_spec, gates={"error_rate": {"max": 0.01}, "latency_p99_ratio": {"max": 5.0}}, min_requests=20
    )


@pytest.fixture(scope="module")
def rollout_env(tmp_path_factory, fast_spec, churn_frame):
    home = tmp_path_factory.mktemp("preprocess-fault")
    uri = champion_and_challenger(fast_spec, churn_frame, home)
    with running_plane(home, uri) as plane:
        yield {"uri": uri, "plane": plane, "home": home}


def faulty_canary(spec, stage: str) -> dict:
    """Version 2 as a 10 % canary next to version 1, its container failing every request in `stage`
    (the env `shepherd rollout fault` sets, plus the stage)."""
    obj = build_inference_service(spec, "2", champion_version="1", canary_percent=10)
    container = serving_container(obj["spec"]["canary"][0]["predictor"])
    container["env"] = [e for e in container.get("env") or [] if not e["name"].startswith("SHEPHERD_FAULT_")] + [
        {"name": ENV_FAULT_ERROR_RATE, "value": "1"},
        {"name": ENV_FAULT_STAGE, "value": stage},
    ]
    return obj


@pytest.mark.timeout(300)
def test_a_canary_failing_in_preprocessing_is_rolled_back_by_the_error_rate_gate(rollout_env, fast_spec, churn_frame):
    url = rollout_env["plane"].url
    backend = LocalBackend(url)
    applied = backend.apply(faulty_canary(fast_spec, "preprocess"))
    traffic = applied["status"]["components"]["predictor"]["traffic"]
    canary_url = next(t["url"] for t in traffic if t["revisionName"] == "churn-v2")
    rows = [r for r in instances(fast_spec, churn_frame.head(200)) if None not in r.values()]

    # The canary itself: a valid request is a 500 from preprocessing, in the error shape, on a kept connection.
    with httpx.Client(base_url=canary_url, timeout=30) as direct:
        answer = direct.post("/v1/models/churn:predict", json={"instances": rows[:1]})
        assert answer.status_code == 500, answer.text
        assert list(answer.json()) == ["error"] and "injected fault in preprocess" in answer.json()["error"]

    stop = threading.Event()
    statuses: dict[int, int] = {}

    def keep_sending():
        while not stop.is_set():
            report = send(url, fast_spec, rows, 20)
            for status, n in report.by_status.items():
                statuses[status] = statuses.get(status, 0) + n

    sender = threading.Thread(target=keep_sending, daemon=True)
    sender.start()
    decisions, deadline = [], time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            decision = reconcile_once(backend, rollout_env["uri"], "models", "churn", time.time())
            if decision is None:
                break
            decisions.append(decision)
            if decision.action is not Action.HOLD:
                break
            time.sleep(1.2)
    finally:
        stop.set()
        sender.join(timeout=30)

    moves = [d for d in decisions if d.action is not Action.HOLD]
    assert [d.action for d in moves] == [Action.ROLLBACK], [(d.action, d.reason) for d in decisions]
    # e.g. "rolled back after 2 failed analyses: canary error rate 100.00% (30/30), allowed ≤ 0.01"
    assert "canary error rate 100.00%" in moves[0].reason, moves[0].reason
    assert statuses.get(500, 0) > 0 and statuses.get(200, 0) > 0, statuses  # the router passed the canary's 500s on

    served = backend.get("models", "churn")
    # Standard mode keeps the canary entry at 0 % (Knative: canaryTrafficPercent 0); it serves nothing.
    assert all(c.get("trafficPercent") == 0 for c in served["spec"].get("canary") or []), served["spec"]
    assert serving_container(served["spec"]["predictor"])["args"][0] == "--model_uri=models:/churn/1"
    split = {t["revisionName"]: t["percent"] for t in served["status"]["components"]["predictor"]["traffic"]}
    assert split.get("churn-v1") == 100 and not split.get("churn-v2"), split
    # Every request now reaches the champion.
    after = send(url, fast_spec, rows, 20)
    assert after.by_status == {200: 20} and set(after.by_revision) == {"churn-v1"}, after

    client = registry.connect(rollout_env["uri"])
    assert str(client.get_model_version_by_alias("churn", "champion").version) == "1"
