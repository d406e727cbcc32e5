"""The quality gate on a real plane: a canary that answers fast and without errors but whose predictions are
wrong (a model trained on shuffled labels) is rolled back once the labels for its predictions come back,
while its error-rate and latency gates pass. Labels return as a client sends them: by prediction id,
through `POST /v1/models/<m>/feedback`, about a second after each answer."""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry

from components import registry
from components.spec import parse_spec
from pipelines.direct import train_and_register
from serving.backends import LocalBackend
from serving.inference_service import build_inference_service
from serving.plane_auth import token_for
from serving.rollout.controller import RolloutMetrics
from serving.rollout.loop import TAG_ROLLOUT, reconcile_once
from serving.rollout.machine import Action
from serving.traffic import instances
from tests.support.plane_processes import running_plane
from tests.support.rollouts import fast_rollout_spec

LABEL_DELAY_SECONDS = 1.0


@pytest.fixture(scope="module")
def gated_spec(churn_spec):
    # Only the quality gate can fail here: the latency ratio of two identical servers on a shared 2-core
    # machine is noise, and a model without signal predicts a narrow band of probabilities, which the
    # prediction-PSI gate would catch first (that gate is tested elsewhere).
    gates = {"latency_p99_ratio": {"max": 5.0}, "prediction_psi": {"max": 1000.0}, "drift_share": {"max": 1.0}}
    return fast_rollout_spec(churn_spec, gates=gates, min_requests=10, failure_limit=2, quality_gate={"min_labels": 60})


@pytest.fixture(scope="module")
def shuffled_canary(gated_spec, churn_frame, tmp_path_factory):
    """v1 @champion trained on the real labels; v2 @challenger trained on the same rows with the labels
    shuffled (it passed a lenient offline evaluation: the kind of model only live labels expose)."""
    home = tmp_path_factory.mktemp("quality-gate")
    uri = f"sqlite:///{home / 'mlflow.db'}"
    assert train_and_register(gated_spec, churn_frame, uri, home).alias == "champion"
    shuffled = churn_frame.copy()
    shuffled["churn"] = np.random.default_rng(0).permutation(shuffled["churn"].to_numpy())
    lenient = yaml.safe_load(gated_spec.to_yaml())
    lenient["evaluation"] = {"max_regression": {"roc_auc": 1.0}}
    lenient["deployment"].pop("quality_gate")
    assert (
        train_and_register(parse_spec(yaml.safe_dump(lenient)), shuffled, uri, home, "shuffled").alias == "challenger"
    )
    return uri, home


def test_a_canary_with_wrong_predictions_is_rolled_back_by_its_labels(shuffled_canary, gated_spec, churn_frame):
    uri, home = shuffled_canary
    with running_plane(home, uri) as plane:
        backend = LocalBackend(plane.url)
        backend.apply(
            build_inference_service(
                gated_spec, "2", champion_version="1", canary_percent=10, payload_log_url=f"{plane.url}/drift/"
            )
        )
        sample = churn_frame.sample(400, random_state=1)
        rows, truth = instances(gated_spec, sample), sample["churn"].tolist()
        answered: list[tuple[float, str, str]] = []  # (answered at, prediction id, true label)
        stop, lock = threading.Event(), threading.Lock()
        auth = {"Authorization": f"Bearer {token_for(plane.url)}"}

        def serve():
            with httpx.Client(timeout=30) as client:
                start = 0
                while not stop.is_set():
                    batch = slice(start, start + 20)
                    body = client.post(f"{plane.url}/v1/models/churn:predict", json={"instances": rows[batch]}).json()
                    with lock:
                        answered.extend(
                            (time.monotonic(), p["id"], label)
                            for p, label in zip(body["predictions"], truth[batch], strict=True)
                        )
                    start = (start + 20) % len(rows)

        def label():  # ground truth arrives about a second after each answer
            with httpx.Client(timeout=30) as client:
                while not stop.is_set():
                    time.sleep(0.5)
                    with lock:
                        due = [a for a in answered if a[0] < time.monotonic() - LABEL_DELAY_SECONDS]
                        answered[:] = answered[len(due) :]
                    if due:
                        sent = client.post(
                            f"{plane.url}/v1/models/churn/feedback",
                            params={"skip_unknown": "true"},  # a request whose payload log was dropped
                            json={"labels": [{"id": pid, "label": y} for _, pid, y in due]},
                            headers=auth,
                        )
                        assert sent.status_code == 200, sent.text

        threads = [threading.Thread(target=serve, daemon=True), threading.Thread(target=label, daemon=True)]
        for thread in threads:
            thread.start()
        metrics = RolloutMetrics(CollectorRegistry())
        decisions, deadline = [], time.monotonic() + 150
        try:
            while time.monotonic() < deadline:
                decision = reconcile_once(backend, uri, "models", "churn", time.time(), metrics=metrics)
                if decision is None:
                    break
                decisions.append(decision)
                if decision.action is Action.ROLLBACK:
                    break
                time.sleep(1.2)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=30)

    actions = [d.action for d in decisions]
    assert actions[-1] is Action.ROLLBACK, [d.reason for d in decisions][-5:]
    assert Action.PROMOTE not in actions
    reason = decisions[-1].reason
    assert reason.startswith("rolled back after 2 failed analyses: canary "), reason
    assert "roc_auc" in reason and "vs champion" in reason and "labelled predictions" in reason, reason
    verdicts = {
        gate: verdict
        for gate in ("error_rate", "latency_p99_ratio", "quality")
        for verdict in ("pass", "fail", "inconclusive")
        if metrics.registry.get_sample_value(
            "shepherd_rollout_gate_verdict", {"model": "churn", "gate": gate, "verdict": verdict}
        )
        == 1.0
    }
    assert verdicts == {"error_rate": "pass", "latency_p99_ratio": "pass", "quality": "fail"}, verdicts
    # Before the labels came in, the canary was held, not promoted on missing data.
    assert any("too few labelled predictions" in d.reason for d in decisions if d.action is Action.HOLD)
    client = registry.connect(uri)
    assert str(client.get_model_version_by_alias("churn", "champion").version) == "1"
    assert client.get_model_version("churn", "2").tags[TAG_ROLLOUT].startswith("rollback")
