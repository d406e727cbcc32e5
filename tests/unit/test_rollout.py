"""Rollout gates and the step/promote/rollback state machine, including a restart mid-rollout,
inconclusive data and gates on their threshold boundary."""

from __future__ import annotations

import json

import pytest

from serving.inference_service import ANNOTATION_POLICY, build_inference_service
from serving.rollout.gates import GateResult, Threshold, Verdict, Window, error_rate, latency_ratio
from serving.rollout.machine import Action, Phase, Policy, State, decide, rollback_now

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, float("inf"))


def window(requests, errors=0, latencies=()):
    cumulative = tuple((b, float(sum(1 for x in latencies if x <= b))) for b in BUCKETS)
    return Window(requests, errors, cumulative)


@pytest.fixture
def policy(churn_spec):
    """The policy of a spec with production-like settings (the demo spec's interval is shorter)."""
    import yaml

    from components.spec import parse_spec

    data = yaml.safe_load(churn_spec.to_yaml())
    data["deployment"].update(
        canary_steps=[10, 25, 50, 100], interval_seconds=60, min_requests=50, failure_limit=2, manual_approval=False
    )
    data["deployment"]["gates"] = {"error_rate": {"max": 0.01}, "latency_p99_ratio": {"max": 1.5}}
    spec = parse_spec(yaml.safe_dump(data))
    obj = build_inference_service(spec, "2", champion_version="1", canary_percent=10)
    return Policy.from_annotation(obj["metadata"]["annotations"][ANNOTATION_POLICY])


def test_policy_on_the_object_comes_from_the_spec(policy):
    assert policy.steps == (10, 25, 50, 100)
    assert policy.gates["error_rate"] == Threshold(max=0.01)
    assert policy.gates["latency_p99_ratio"] == Threshold(max=1.5)
    assert (policy.interval_seconds, policy.failure_limit, policy.min_requests) == (60, 2, 50)
    assert policy.manual_approval is False


def test_error_rate_gate_boundary_and_no_data():
    limit = Threshold(max=0.01)
    assert error_rate(window(100, errors=1), limit, 50).verdict is Verdict.PASS  # exactly 1 %: on the boundary
    failing = error_rate(window(100, errors=2), limit, 50)
    assert failing.verdict is Verdict.FAIL and "2.00% (2/100), allowed ≤ 0.01" in failing.reason
    assert error_rate(window(49, errors=49), limit, 50).verdict is Verdict.INCONCLUSIVE


def test_latency_gate_compares_p99_with_the_champion():
    fast = window(200, latencies=[0.004] * 200)
    slow = window(200, latencies=[0.004] * 190 + [0.09] * 10)
    limit = Threshold(max=1.5)
    assert latency_ratio(fast, fast, limit, 50).verdict is Verdict.PASS
    result = latency_ratio(slow, fast, limit, 50)
    assert result.verdict is Verdict.FAIL and "x, allowed ≤ 1.5" in result.reason
    assert latency_ratio(window(10), fast, limit, 50).verdict is Verdict.INCONCLUSIVE
    assert latency_ratio(Window(100, 0), fast, limit, 50).verdict is Verdict.INCONCLUSIVE


def test_ranges_bound_both_ends():
    band = Threshold(min=0.8, max=1.2)
    assert band.check(0.8) and band.check(1.2) and not band.check(0.79) and not band.check(1.21)
    assert str(band) == "within [0.8, 1.2]"


def test_quantile_matches_prometheus_interpolation():
    w = Window(100, 0, ((0.1, 50.0), (0.2, 100.0), (float("inf"), 100.0)))
    assert w.quantile(0.5) == pytest.approx(0.1)
    assert w.quantile(0.75) == pytest.approx(0.15)


PASS = [GateResult("error_rate", Verdict.PASS, "ok"), GateResult("latency_p99_ratio", Verdict.PASS, "ok")]
FAIL = [GateResult("error_rate", Verdict.FAIL, "canary error rate 30.00%")]
UNSURE = [GateResult("error_rate", Verdict.INCONCLUSIVE, "fewer than 50 requests")]


def test_healthy_canary_steps_up_and_is_promoted(policy):
    state, now, seen = State("2", "1", step_started=0), 0.0, []
    while state.phase not in (Phase.PROMOTED, Phase.ROLLED_BACK):
        now += policy.interval_seconds
        decision = decide(policy, state, PASS, now)
        seen.append((decision.action, decision.traffic(policy)))
        state = decision.state
    assert seen == [(Action.STEP, 25), (Action.STEP, 50), (Action.STEP, 100), (Action.PROMOTE, 100)]
    assert [h["action"] for h in state.history] == ["step", "step", "step", "promote"]


def test_failures_hold_then_roll_back_at_the_limit(policy):
    state = State("2", "1", step=1, step_started=0)
    first = decide(policy, state, FAIL, now=60)
    assert first.action is Action.HOLD and first.state.failures == 1 and first.traffic(policy) == 25
    second = decide(policy, first.state, FAIL, now=120)
    assert second.action is Action.ROLLBACK and second.traffic(policy) == 0
    assert "rolled back after 2 failed analyses: canary error rate 30.00%" in second.reason


def test_inconclusive_data_holds_and_never_promotes(policy):
    state = State("2", "1", step=3, step_started=0)  # at 100 %: the next pass would promote
    for now in (60, 120, 180):
        decision = decide(policy, state, UNSURE, now)
        assert decision.action is Action.HOLD and "inconclusive" in decision.reason
        state = decision.state
    assert state.phase is Phase.PROGRESSING and state.failures == 0


def test_inconclusive_interval_keeps_growing_until_it_can_be_judged(policy):
    state = State("2", "1", step=0, step_started=0)
    held = decide(policy, state, UNSURE, now=60)
    assert held.action is Action.HOLD and held.state == state  # same start: the window keeps its requests
    judged = decide(policy, held.state, FAIL, now=75)  # enough requests 75 s in: judged at once
    assert judged.action is Action.HOLD and judged.state.failures == 1 and judged.state.step_started == 75


def test_the_interval_is_respected(policy):
    decision = decide(policy, State("2", "1", step_started=100), PASS, now=159)
    assert decision.action is Action.HOLD and "runs until its 60 s pass" in decision.reason


def test_restart_mid_rollout_resumes_from_the_annotation(policy):
    state = decide(policy, State("2", "1", step_started=0), PASS, now=60).state  # now at 25 %
    restored = State.from_annotation(state.to_annotation())  # a new process reads the object
    assert restored == state
    assert decide(policy, restored, PASS, now=120) == decide(policy, state, PASS, now=120)
    assert decide(policy, restored, PASS, now=120).traffic(policy) == 50


def test_manual_approval_before_the_last_step(policy):
    gated = Policy(**{**policy.__dict__, "manual_approval": True})
    waiting = decide(gated, State("2", "1", step=2, step_started=0), PASS, now=60)
    assert waiting.action is Action.AWAIT_APPROVAL and waiting.traffic(gated) == 50
    assert decide(gated, waiting.state, PASS, now=120).action is Action.HOLD
    approved = decide(gated, waiting.state, PASS, now=120, approved=True)
    assert approved.action is Action.STEP and approved.traffic(gated) == 100


def test_paused_and_finished_rollouts_hold(policy):
    assert decide(policy, State("2", "1", phase=Phase.PAUSED), FAIL, now=999).action is Action.HOLD
    done = State("2", "1", phase=Phase.PROMOTED)
    assert decide(policy, done, FAIL, now=999).action is Action.HOLD
    assert rollback_now(done, 999, "alert").action is Action.HOLD


def test_an_alert_rolls_back_at_once(policy):
    decision = rollback_now(State("2", "1", step=1, step_started=1000), now=1001, reason="alert CanaryErrorRate fired")
    assert decision.action is Action.ROLLBACK and decision.traffic(policy) == 0
    assert json.loads(decision.state.to_annotation())["phase"] == "rolled-back"


def test_an_approval_stored_on_the_state_survives_a_restart(policy):
    from dataclasses import replace

    gated = Policy(**{**policy.__dict__, "manual_approval": True})
    waiting = decide(gated, State("2", "1", step=2, step_started=0), PASS, now=60).state
    approved = State.from_annotation(replace(waiting, approved=True).to_annotation())  # what `promote` writes
    assert decide(gated, approved, PASS, now=120).action is Action.STEP


@pytest.mark.parametrize(
    ("share", "verdict"),
    [(None, Verdict.INCONCLUSIVE), (0.0, Verdict.PASS), (0.5, Verdict.PASS), (0.51, Verdict.FAIL)],
)
def test_drift_share_gate(share, verdict):
    from serving.rollout.gates import drift_share

    result = drift_share(share, Threshold(max=0.5))
    assert result.verdict is verdict
    assert ("no result" in result.reason) if share is None else "drifted from training" in result.reason


@pytest.mark.parametrize(
    ("psi", "verdict"), [(None, Verdict.INCONCLUSIVE), (0.25, Verdict.PASS), (0.2501, Verdict.FAIL)]
)
def test_prediction_psi_gate_boundary(psi, verdict):
    from serving.rollout.gates import prediction_psi

    result = prediction_psi(psi, Threshold(max=0.25))
    assert result.verdict is verdict
    if psi is not None:
        assert f"PSI {psi:.3f}" in result.reason and "allowed ≤ 0.25" in result.reason


def test_the_policy_on_the_object_carries_the_drift_gates(churn_spec):
    obj = build_inference_service(churn_spec, "2", champion_version="1", canary_percent=10)
    policy = Policy.from_annotation(obj["metadata"]["annotations"][ANNOTATION_POLICY])
    assert policy.gates["drift_share"] == Threshold(max=0.5)
    assert policy.gates["prediction_psi"] == Threshold(max=0.25)


def test_latency_under_the_floor_is_never_too_slow_but_too_fast_still_fails():
    champion = Window(1000, 0, ((0.001, 1000.0), (float("inf"), 1000.0)))  # p99 0.99 ms
    slow_ms = Window(100, 0, ((0.001, 0.0), (0.01, 100.0), (float("inf"), 100.0)))  # p99 9.9 ms: 10x
    slow_s = Window(100, 0, ((0.001, 0.0), (0.5, 100.0), (float("inf"), 100.0)))  # p99 495 ms
    under = latency_ratio(slow_ms, champion, Threshold(max=1.5), 50, floor_seconds=0.025)
    assert under.verdict is Verdict.PASS and "under the 25 ms floor" in under.reason
    assert latency_ratio(slow_ms, champion, Threshold(max=1.5), 50).verdict is Verdict.FAIL  # no floor
    assert latency_ratio(slow_s, champion, Threshold(max=1.5), 50, floor_seconds=0.025).verdict is Verdict.FAIL
    too_fast = latency_ratio(champion, slow_ms, Threshold(min=0.5, max=1.5), 50, floor_seconds=0.025)
    assert too_fast.verdict is Verdict.FAIL  # the floor never excuses a canary that is suspiciously fast


def test_the_floor_travels_on_the_object(churn_spec):
    obj = build_inference_service(churn_spec, "2", champion_version="1", canary_percent=10)
    policy = Policy.from_annotation(obj["metadata"]["annotations"][ANNOTATION_POLICY])
    assert policy.latency_floor_seconds == pytest.approx(churn_spec.deployment.latency_floor_ms / 1000)
    older = json.loads(obj["metadata"]["annotations"][ANNOTATION_POLICY])
    del older["latencyFloorSeconds"]  # an object written before the floor existed: no floor
    assert Policy.from_annotation(json.dumps(older)).latency_floor_seconds == 0.0


def test_a_write_that_conflicts_is_read_and_applied_again_then_gives_up():
    from serving.backends import ConflictError, retry_on_conflict

    attempts = []

    def conflicts_twice():
        attempts.append(len(attempts))
        if len(attempts) <= 2:
            raise ConflictError("changed since it was read")
        return "written"

    assert retry_on_conflict(conflicts_twice) == "written" and len(attempts) == 3

    always = []

    def always_conflicts():
        always.append(1)
        raise ConflictError("changed since it was read")

    with pytest.raises(ConflictError):
        retry_on_conflict(always_conflicts, attempts=4)
    assert len(always) == 4


def test_a_source_that_cannot_be_read_leaves_only_its_gates_without_a_verdict():
    from serving.rollout.gates import Unavailable, drift_share, prediction_psi

    down = Unavailable("the drift service", "scraping http://plane/drift/metrics: HTTP 500 Internal Server Error")
    for result in (drift_share(down, Threshold(max=0.5)), prediction_psi(down, Threshold(max=0.25))):
        assert result.verdict is Verdict.INCONCLUSIVE and result.value is None
        assert result.reason == (
            "no verdict: the drift service could not be read "
            "(scraping http://plane/drift/metrics: HTTP 500 Internal Server Error)"
        )
    counters = Unavailable("the canary's request counters", "scraping http://canary/metrics: ConnectError")
    assert error_rate(counters, Threshold(max=0.01), 50).reason == str(counters)
    fast = window(200, latencies=[0.004] * 200)
    assert latency_ratio(counters, fast, Threshold(max=1.5), 50).reason == str(counters)
    assert latency_ratio(fast, counters, Threshold(max=1.5), 50).verdict is Verdict.INCONCLUSIVE
    # The counts were read, the histogram was not: the error rate is judged, the latency is not.
    histogram = Unavailable("the canary's latency histogram", "Prometheus at http://prometheus: ReadTimeout")
    counted = Window(200, 10, histogram)
    assert error_rate(counted, Threshold(max=0.01), 50).verdict is Verdict.FAIL
    slow = latency_ratio(counted, fast, Threshold(max=1.5), 50)
    assert slow.verdict is Verdict.INCONCLUSIVE and slow.reason == str(histogram)
    assert counted.quantile(0.99) is None


def test_a_failed_gate_counts_whatever_the_others_could_not_read(policy):
    unread = [*FAIL, GateResult("drift_share", Verdict.INCONCLUSIVE, "no verdict: the drift service could not be read")]
    first = decide(policy, State("2", "1", step=1, step_started=0), unread, now=60)
    assert first.action is Action.HOLD and first.state.failures == 1
    second = decide(policy, first.state, unread, now=120)
    assert second.action is Action.ROLLBACK and "canary error rate 30.00%" in second.reason
