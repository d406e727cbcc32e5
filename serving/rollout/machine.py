"""The rollout state machine: from the policy, the state written on the object and this interval's
gate results, decide to hold, step the canary up, wait for approval, promote, or roll back.

All state lives in an annotation on the InferenceService, so the loop is stateless: a restarted loop
reads the object and makes the same decision.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum

from serving.rollout.gates import GateResult, Threshold, Verdict


class Phase(StrEnum):
    PROGRESSING = "progressing"
    PAUSED = "paused"
    AWAITING_APPROVAL = "awaiting-approval"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled-back"


class Action(StrEnum):
    HOLD = "hold"
    STEP = "step"
    AWAIT_APPROVAL = "await-approval"
    PROMOTE = "promote"
    ROLLBACK = "rollback"


TERMINAL = frozenset({Phase.PROMOTED, Phase.ROLLED_BACK})


@dataclass(frozen=True)
class QualityPolicy:
    """The quality gate: labelled predictions each revision needs, and how much worse than the champion
    the canary may be per metric."""

    min_labels: int
    max_regression: dict[str, float]


@dataclass(frozen=True)
class Policy:
    steps: tuple[int, ...]
    interval_seconds: int
    failure_limit: int
    min_requests: int
    manual_approval: bool
    gates: dict[str, Threshold]
    latency_floor_seconds: float = 0.0  # a canary p99 under this never fails the latency gate as too slow
    quality: QualityPolicy | None = None  # judge the canary on its labelled predictions too

    @classmethod
    def from_annotation(cls, text: str) -> Policy:
        raw = json.loads(text)
        return cls(
            steps=tuple(raw["steps"]),
            interval_seconds=raw["intervalSeconds"],
            failure_limit=raw["failureLimit"],
            min_requests=raw["minRequests"],
            manual_approval=raw["manualApproval"],
            gates={name: Threshold(**bounds) for name, bounds in raw["gates"].items()},
            latency_floor_seconds=raw.get("latencyFloorSeconds", 0.0),
            quality=QualityPolicy(raw["quality"]["minLabels"], raw["quality"]["maxRegression"])
            if raw.get("quality")
            else None,
        )


@dataclass(frozen=True)
class State:
    """Where a rollout is; serialised into the object's annotation."""

    canary_version: str
    champion_version: str
    phase: Phase = Phase.PROGRESSING
    step: int = 0  # index into Policy.steps
    failures: int = 0
    step_started: float = 0.0  # unix seconds
    reason: str = ""
    history: list[dict] = field(default_factory=list)
    approved: bool = False  # an operator approved the last step (`shepherd rollout promote`)

    def to_annotation(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_annotation(cls, text: str) -> State:
        raw = json.loads(text)
        raw["phase"] = Phase(raw["phase"])
        return cls(**raw)


@dataclass(frozen=True)
class Decision:
    action: Action
    state: State
    reason: str

    def traffic(self, policy: Policy) -> int:
        """The canary's traffic share after this decision."""
        if self.state.phase is Phase.ROLLED_BACK:
            return 0
        if self.state.phase is Phase.PROMOTED:
            return 100
        return policy.steps[self.state.step]


def _transition(state: State, action: Action, now: float, reason: str, **changes) -> Decision:
    entry = {"time": now, "action": str(action), "reason": reason, "step": changes.get("step", state.step)}
    new = replace(state, reason=reason, history=[*state.history, entry], **changes)
    return Decision(action, new, reason)


def decide(policy: Policy, state: State, results: list[GateResult], now: float, approved: bool = False) -> Decision:
    """One analysis: what to do with the canary given this interval's gate results."""
    if state.phase in TERMINAL:
        return Decision(Action.HOLD, state, f"rollout already {state.phase}")
    if state.phase is Phase.PAUSED:
        return Decision(Action.HOLD, state, "paused by an operator")
    if now - state.step_started < policy.interval_seconds:
        return Decision(Action.HOLD, state, f"step {state.step + 1} runs until its {policy.interval_seconds} s pass")

    failed = [r for r in results if r.verdict is Verdict.FAIL]
    if failed:
        failures = state.failures + 1
        why = "; ".join(r.reason for r in failed)
        if failures >= policy.failure_limit:
            return _transition(
                state,
                Action.ROLLBACK,
                now,
                f"rolled back after {failures} failed analyses: {why}",
                phase=Phase.ROLLED_BACK,
                failures=failures,
            )
        return _transition(
            state,
            Action.HOLD,
            now,
            f"analysis failed ({failures}/{policy.failure_limit}): {why}",
            failures=failures,
            step_started=now,
        )
    unsure = [r for r in results if r.verdict is Verdict.INCONCLUSIVE]
    if unsure:
        # Never promote on missing data. The interval is not restarted: its window keeps growing until
        # it holds enough requests, so a canary with little traffic is still judged (and a failing one
        # rolled back) instead of starting over with too few requests every interval.
        return Decision(Action.HOLD, state, "inconclusive, holding: " + "; ".join(r.reason for r in unsure))

    last = len(policy.steps) - 1
    if state.step >= last:
        return _transition(state, Action.PROMOTE, now, "every gate passed at full traffic", phase=Phase.PROMOTED)
    if state.step + 1 == last and policy.manual_approval and not (approved or state.approved):
        if state.phase is Phase.AWAITING_APPROVAL:
            return Decision(Action.HOLD, state, "waiting for approval before the last step")
        return _transition(
            state,
            Action.AWAIT_APPROVAL,
            now,
            "gates passed; the last step needs approval",
            phase=Phase.AWAITING_APPROVAL,
        )
    return _transition(
        state,
        Action.STEP,
        now,
        f"gates passed; canary to {policy.steps[state.step + 1]} %",
        phase=Phase.PROGRESSING,
        step=state.step + 1,
        step_started=now,
    )


def rollback_now(state: State, now: float, reason: str) -> Decision:
    """Immediate rollback, whatever the interval: an alert fired or an operator asked."""
    if state.phase in TERMINAL:
        return Decision(Action.HOLD, state, f"rollout already {state.phase}")
    return _transition(state, Action.ROLLBACK, now, reason, phase=Phase.ROLLED_BACK)
