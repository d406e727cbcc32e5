"""The rollout loop on the local plane: a healthy canary, under real traffic, is stepped up by the
scraped gates and promoted; the MLflow aliases move with the traffic."""

from __future__ import annotations

import threading
import time

import pytest

from components import registry
from serving.backends import LocalBackend, start_plane, stop_plane
from serving.inference_service import build_inference_service
from serving.inference_service_view import serving_container
from serving.local_plane import free_port
from serving.rollout.loop import TAG_ROLLOUT, reconcile_once
from serving.rollout.machine import Action
from serving.traffic import instances, send
from tests.support.rollouts import champion_and_challenger, fast_rollout_spec


@pytest.fixture(scope="module")
def fast_spec(churn_spec):
    # One-second intervals on a shared 2-core machine give p99 ratios of 1.5x and more between two
    # identical servers; the latency gate's boundary is tested in tests/unit/test_rollout.py.
    return fast_rollout_spec(churn_spec, gates={"latency_p99_ratio": {"max": 5.0}}, min_requests=20)


@pytest.fixture(scope="module")
def rollout_env(tmp_path_factory, fast_spec, churn_frame):
    home = tmp_path_factory.mktemp("rollout")
    uri = champion_and_challenger(fast_spec, churn_frame, home)
    plane = start_plane(home, uri, free_port())
    yield {"uri": uri, "plane": plane, "home": home}
    stop_plane(home)


def test_healthy_canary_is_stepped_up_and_promoted(rollout_env, fast_spec, churn_frame):
    backend = LocalBackend(rollout_env["plane"].url)
    backend.apply(build_inference_service(fast_spec, "2", champion_version="1", canary_percent=10))
    rows = instances(fast_spec, churn_frame.head(200))
    stop = threading.Event()

    def keep_sending():
        while not stop.is_set():
            send(rollout_env["plane"].url, fast_spec, rows, 20)

    sender = threading.Thread(target=keep_sending, daemon=True)
    sender.start()
    actions, deadline = [], time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            decision = reconcile_once(backend, rollout_env["uri"], "models", "churn", time.time())
            if decision is None:
                break
            actions.append(decision.action)
            time.sleep(1.2)
    finally:
        stop.set()
        sender.join(timeout=30)
    moves = [a for a in actions if a is not Action.HOLD]
    assert moves == [Action.STEP, Action.STEP, Action.PROMOTE], actions

    served = backend.get("models", "churn")
    assert "canary" not in served["spec"]
    assert serving_container(served["spec"]["predictor"])["args"][0] == "--model_uri=models:/churn/2"
    assert [t["percent"] for t in served["status"]["components"]["predictor"]["traffic"]] == [100]
    client = registry.connect(rollout_env["uri"])
    assert str(client.get_model_version_by_alias("churn", "champion").version) == "2"
    assert str(client.get_model_version_by_alias("churn", "previous").version) == "1"
    assert "challenger" not in client.get_registered_model("churn").aliases
    assert client.get_model_version("churn", "2").tags[TAG_ROLLOUT].startswith("promote")
