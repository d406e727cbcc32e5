"""The rollout controller: reconcile every InferenceService with a canary, forever.

Runs in the Helm chart's `rollout-controller` Deployment (`shepherd rollout controller`) and, on one
machine, behind `shepherd rollout watch`. Single active replica by design: all state is on the
objects, so a restarted (or rescheduled) controller resumes where the last one stopped, and every
write carries the resourceVersion it read, so an accidental second replica cannot corrupt a rollout.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge

from monitoring.metrics import (
    ROLLOUT_BACKEND_FAILURES_TOTAL,
    ROLLOUT_BACKEND_UP,
    ROLLOUT_CANARY_PERCENT,
    ROLLOUT_GATE_VERDICT,
    ROLLOUT_PHASE,
    ROLLOUT_TRANSITIONS_TOTAL,
)
from serving.rollout.gates import GateResult, Verdict
from serving.rollout.loop import canary_percent, reconcile_once
from serving.rollout.machine import Action, Decision, Phase

logger = logging.getLogger("shepherd.rollout")

# What `shepherd_rollout_transitions_total{action}` counts: the machine's actions and the operators'.
TRANSITIONS = ("start", *(str(a) for a in Action if a is not Action.HOLD), "hold", "pause", "resume", "approve")


class RolloutMetrics:
    """What each model's rollout is doing, for dashboards and alerts."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        self._seen: set[str] = set()
        self.percent = Gauge(ROLLOUT_CANARY_PERCENT, "Canary traffic share (0-100).", ["model"], registry=registry)
        self.phase = Gauge(ROLLOUT_PHASE, "1 for the rollout's current phase.", ["model", "phase"], registry=registry)
        self.verdict = Gauge(
            ROLLOUT_GATE_VERDICT, "1 for each gate's last verdict.", ["model", "gate", "verdict"], registry=registry
        )
        self.transitions = Counter(
            ROLLOUT_TRANSITIONS_TOTAL.removesuffix("_total"),
            "Rollout transitions (start, step, promote, rollback, pause, ...).",
            ["model", "action"],
            registry=registry,
        )
        self.backend_up = Gauge(
            ROLLOUT_BACKEND_UP, "1 if the controller's last pass reached the serving backend.", registry=registry
        )
        self.backend_failures = Counter(
            ROLLOUT_BACKEND_FAILURES_TOTAL.removesuffix("_total"),
            "Reconcile passes that could not reach the serving backend (API server or local plane).",
            registry=registry,
        )

    def gates(self, model: str, results: list[GateResult]) -> None:
        for result in results:
            for verdict in Verdict:
                self.verdict.labels(model, result.gate, str(verdict)).set(1.0 if result.verdict is verdict else 0.0)

    def transition(self, model: str, action: str, phase: Phase, percent: int) -> None:
        if model not in self._seen:
            # Every series from 0, so the first promotion is an increase() and a dashboard annotation.
            self._seen.add(model)
            for known in TRANSITIONS:
                self.transitions.labels(model, known)
        self.transitions.labels(model, action).inc()
        for p in Phase:
            self.phase.labels(model, str(p)).set(1.0 if p is phase else 0.0)
        self.percent.labels(model).set(percent)


@dataclass
class Backoff:
    """How long to wait after consecutive failures to reach the serving backend: `base` seconds,
    doubling, at most `cap`; one success starts again from `base`. A controller never exits because
    the API server or the plane is away for a while: it waits and resumes the rollouts where they are."""

    base: float
    cap: float = 30.0
    failures: int = 0

    def failed(self) -> float:
        self.failures += 1
        return min(self.cap, max(self.base, 0.5) * 2 ** (self.failures - 1))

    def succeeded(self) -> None:
        self.failures = 0


def _record_outage(backend, namespace: str | None, seconds: float, attempts: int) -> bool:
    """A `ControllerResumed` event on every object in rollout; False if the backend still does not answer."""
    message = (
        f"the rollout controller could not reach the serving backend for {seconds:.0f} s ({attempts} failed "
        "attempts); it resumed the rollout where it stood"
    )
    try:
        objects = backend.list(namespace)
    except Exception:
        return False
    try:
        for obj in objects:
            if canary_percent(obj) is not None:
                backend.record_event(obj, reason="ControllerResumed", message=message, warning=True)
    except Exception as exc:  # the rollouts go on; only the record of the outage is lost
        logger.warning("could not record the outage: %s", exc)
    return True


def reconcile_all(backend, tracking_uri: str, namespace: str | None, provider=None, metrics=None) -> list[Decision]:
    """One pass over every InferenceService with a canary (in `namespace`, or everywhere)."""
    decisions = []
    for obj in backend.list(namespace):
        meta = obj["metadata"]
        if canary_percent(obj) is None:
            continue
        try:
            decision = reconcile_once(
                backend, tracking_uri, meta["namespace"], meta["name"], provider=provider, metrics=metrics
            )
        except Exception:  # one broken object must not stop the others' rollouts
            logger.exception("reconciling %s/%s failed", meta["namespace"], meta["name"])
            continue
        if decision is not None:
            decisions.append(decision)
    return decisions


def run(
    backend,
    tracking_uri: str,
    namespace: str | None,
    interval_seconds: float,
    provider=None,
    metrics: RolloutMetrics | None = None,
    stop: threading.Event | None = None,
    on_decision: Callable[[str, Decision], None] | None = None,
) -> None:
    """Reconcile every `interval_seconds` until `stop` is set; back off while the backend is away, and
    once it answers again record the outage on every object in rollout (`shepherd history`)."""
    stop = stop or threading.Event()
    backoff = Backoff(interval_seconds)
    outage_since: float | None = None
    while not stop.is_set():
        started = time.monotonic()
        # The outage goes into the history before the first decision made after it.
        away = None if outage_since is None else time.time() - outage_since
        if away is not None and _record_outage(backend, namespace, away, backoff.failures):
            outage_since = None
        try:
            decisions = reconcile_all(backend, tracking_uri, namespace, provider, metrics)
        except Exception as exc:  # listing failed: the API server or the plane is unreachable
            delay = backoff.failed()
            if outage_since is None:
                outage_since = time.time()
            if metrics is not None:
                metrics.backend_up.set(0)
                metrics.backend_failures.inc()
            logger.warning("serving backend unavailable (%s); retrying in %.0f s", exc, delay)
            stop.wait(delay)
            continue
        if metrics is not None:
            metrics.backend_up.set(1)
        backoff.succeeded()
        for decision in decisions:
            if on_decision is not None:
                on_decision(decision.state.canary_version, decision)
        stop.wait(max(0.0, interval_seconds - (time.monotonic() - started)))
