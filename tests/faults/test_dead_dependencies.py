"""The safety net under faults, on a real local plane: a canary failing every request is rolled back by
its error-rate gate while the drift service is dead (killed again each time the plane restarts it), and
the drift gate says it cannot judge instead of holding the rollout."""

from __future__ import annotations

import os
import signal
import threading
import time

from prometheus_client import CollectorRegistry

from components import registry
from monitoring.metrics import ROLLOUT_GATE_VERDICT
from serving.backends import LocalBackend
from serving.inference_service import build_inference_service
from serving.inference_service_view import serving_container
from serving.predictor import ENV_FAULT_ERROR_RATE
from serving.rollout.controller import RolloutMetrics
from serving.rollout.loop import reconcile_once
from serving.rollout.machine import Action
from serving.traffic import instances, send
from tests.support.plane_processes import drift_services, plane_pid, running_plane

INTERVAL_SECONDS = 1


def _keep_killing(plane: int, stop: threading.Event, killed: list[int]) -> None:
    """SIGKILL the plane's drift service whenever it is there: dead for the whole rollout."""
    while not stop.is_set():
        for pid in drift_services(plane):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        stop.wait(0.1)


def test_a_failing_canary_is_rolled_back_while_the_drift_service_is_dead(
    registry_with_challenger, fast_spec, churn_frame
):
    home, uri = registry_with_challenger
    with running_plane(home / "plane", uri) as plane:
        backend = LocalBackend(plane.url)
        backend.apply(build_inference_service(fast_spec, "1", payload_log_url=f"{plane.url}/drift/"))
        canary = build_inference_service(
            fast_spec, "2", champion_version="1", canary_percent=10, payload_log_url=f"{plane.url}/drift/"
        )
        serving_container(canary["spec"]["canary"][0]["predictor"])["env"] = [
            {"name": ENV_FAULT_ERROR_RATE, "value": "1"}
        ]
        backend.apply(canary)

        stop, killed = threading.Event(), []
        killer = threading.Thread(target=_keep_killing, args=(plane_pid(home / "plane"), stop, killed), daemon=True)
        killer.start()
        rows = instances(fast_spec, churn_frame.head(200))

        def keep_sending() -> None:
            while not stop.is_set():
                send(plane.url, fast_spec, rows, 20)

        sender = threading.Thread(target=keep_sending, daemon=True)
        sender.start()
        metrics = RolloutMetrics(CollectorRegistry())
        decisions, drift_verdicts = [], []
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                decision = reconcile_once(backend, uri, "models", "churn", metrics=metrics)
                if decision is None:
                    break
                decisions.append(decision)
                drift_verdicts.append(
                    metrics.registry.get_sample_value(
                        ROLLOUT_GATE_VERDICT, {"model": "churn", "gate": "drift_share", "verdict": "inconclusive"}
                    )
                )
                if decision.action is Action.ROLLBACK:
                    break
                time.sleep(INTERVAL_SECONDS * 1.2)
        finally:
            stop.set()
            sender.join(timeout=30)
            killer.join(timeout=5)

        assert killed, "the drift service was never killed: the test proves nothing"
        actions = [d.action for d in decisions]
        assert actions[-1] is Action.ROLLBACK, [(d.action, d.reason) for d in decisions]
        assert "error rate" in decisions[-1].reason
        # Judged with the drift source dead: its gate said so instead of hiding the error-rate failure.
        assert 1.0 in drift_verdicts, drift_verdicts
        # Before the fix the loop held "metrics unavailable" for as long as the drift service was down
        # (minutes, with a quarter of the requests failing); now the rollback comes within the 60 s above.
        # How many intervals that takes depends on how much canary traffic this shared machine sends in
        # one, so the count is printed, not asserted.
        print(f"rolled back after {len(decisions)} decisions: {[(str(d.action), d.reason) for d in decisions]}")

        served = backend.get("models", "churn")
        assert "canary" not in served["spec"] or served["spec"]["canary"][0]["trafficPercent"] == 0
        assert str(registry.connect(uri).get_model_version_by_alias("churn", "champion").version) == "1"
