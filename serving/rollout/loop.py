"""One reconcile of a canary rollout: read the InferenceService, measure the interval, decide, and
write the decision back (traffic, state annotation) together with the MLflow aliases.

Stateless by design: everything it needs is on the object (policy, state, metric baseline), so any
process can run the next reconcile after a restart.

Every gate reads its own source: a source that cannot be read makes only its gates inconclusive (with
the reason), so a failing error rate or latency rolls the canary back whatever the drift service,
Prometheus or the registry are doing. The object is written before the registry: a registry that
cannot be written never holds back (or hides) a decision already made.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from components import registry
from serving.backends import ConflictError, retry_on_conflict
from serving.inference_service import (
    ANNOTATION_BASELINE,
    ANNOTATION_CHAMPION,
    ANNOTATION_POLICY,
    ANNOTATION_STATE,
    ANNOTATION_VERSION,
)
from serving.inference_service_view import InferenceServiceView
from serving.rollout import scrape
from serving.rollout.gates import (
    GateResult,
    Threshold,
    Unavailable,
    Verdict,
    Window,
    drift_share,
    error_rate,
    latency_ratio,
    prediction_psi,
    quality,
)
from serving.rollout.machine import (
    TERMINAL,
    Action,
    Decision,
    Phase,
    Policy,
    State,
    decide,
    rollback_now,
)
from serving.rollout.providers import Measurement, MetricsProvider, MetricsUnavailable, Revision, ScrapeProvider

logger = logging.getLogger("shepherd.rollout")

TAG_ROLLOUT = "shepherd.rollout"  # on the canary's version: how its rollout ended, and why


def canary_percent(obj: dict) -> int | None:
    return InferenceServiceView(obj).canary_percent


def revisions(obj: dict) -> dict[str, Revision]:
    """role -> Revision, from the status the plane (or KServe) reports and the object's annotations. KServe's
    Standard mode reports no URL per revision: there each predictor's own Service is where it answers."""
    annotations = obj["metadata"].get("annotations", {})
    versions = {"canary": annotations.get(ANNOTATION_VERSION), "champion": annotations.get(ANNOTATION_CHAMPION)}
    traffic = obj.get("status", {}).get("components", {}).get("predictor", {}).get("traffic", [])
    urls = {}
    for entry in traffic:  # Knative mode, and the local plane: a URL per revision
        role = "canary" if entry.get("latestRevision") and len(traffic) > 1 else "champion"
        urls[role] = entry.get("url")
    view = InferenceServiceView(obj)
    if not urls and view.mode == "standard":  # KServe's Standard mode: a Service per predictor
        urls = view.standard_service_urls()
    return {role: Revision(role, str(version), urls.get(role)) for role, version in versions.items() if version}


def _unavailable(source: str, exc: Exception) -> Unavailable:
    """What a gate reports for a source that raised. `MetricsUnavailable` is the providers' "query failed";
    anything else is a provider outside that contract (or a bug): logged with its traceback, and still
    only the gates reading that source are left without a verdict."""
    if isinstance(exc, MetricsUnavailable):
        return Unavailable(source, str(exc))
    logger.error("reading %s failed unexpectedly", source, exc_info=exc)
    return Unavailable(source, f"{type(exc).__name__}: {exc}")


def measure(provider: MetricsProvider, model: str, roles: dict[str, Revision], policy: Policy, baseline: dict | None):
    """This interval's windows of the canary and the champion. A provider that can read neither (it
    raised) leaves both `Unavailable` and the stored baseline where it was."""
    try:
        measurement = provider.measure(model, roles, policy.interval_seconds, baseline)
    except Exception as exc:  # whatever a provider raises, the drift gates are still read and judged
        unread = _unavailable("the request counters", exc)
        return Measurement(unread, unread, baseline=baseline, since=baseline)
    champion, lifetime = measurement.champion, (measurement.baseline or {}).get("champion")
    if isinstance(champion, Window) and lifetime is not None and champion.requests < policy.min_requests:
        # At 100 % the champion serves nothing: compare with everything it served before instead.
        measurement = replace(measurement, champion=lifetime.minus(scrape.Counters()))
    return measurement


def analyse(provider: MetricsProvider, obj: dict, policy: Policy, measurement) -> list[GateResult]:
    """Every gate of the policy over this interval's measurement. Each gate reads its own source (the
    canary's counters, the champion's, the drift service): one that cannot be read makes its gates
    inconclusive with the reason and leaves the other gates' verdicts standing."""
    canary, champion = measurement.canary, measurement.champion
    gates = policy.gates
    results = [
        error_rate(canary, gates.get("error_rate", Threshold(max=0.01)), policy.min_requests),
        latency_ratio(
            canary,
            champion,
            gates.get("latency_p99_ratio", Threshold(max=1.5)),
            policy.min_requests,
            floor_seconds=policy.latency_floor_seconds,
        ),
    ]
    # Without payload logs there is no drift to measure, ever: not a gate then.
    if InferenceServiceView(obj).has_payload_logger:
        share: float | Unavailable | None
        psi: float | Unavailable | None
        try:
            reading = provider.drift(obj["metadata"]["name"], revisions(obj)["canary"].version)
            share, psi = reading.share_vs_training, reading.prediction_psi
        except Exception as exc:  # never hides the other gates: a failing canary is still rolled back
            share = psi = _unavailable("the drift service", exc)
        results.append(drift_share(share, gates.get("drift_share", Threshold(max=0.5))))
        results.append(prediction_psi(psi, gates.get("prediction_psi", Threshold(max=0.25))))
    if policy.quality is not None:
        results.append(_quality_gate(provider, obj, policy.quality))
    return results


def _quality_gate(provider: MetricsProvider, obj: dict, rule) -> GateResult:
    """The canary's live quality against the champion's, from the labelled predictions each served."""
    if not InferenceServiceView(obj).has_payload_logger:
        return GateResult(
            "quality", Verdict.INCONCLUSIVE, "no payload logs, so no predictions to join labels with: deploy with one"
        )
    versions = {role: rev.version for role, rev in revisions(obj).items()}
    try:
        readings = provider.quality(obj["metadata"]["name"], versions)
        canary, champion = readings.get("canary"), readings.get("champion")
    except Exception as exc:  # the other gates still judge: a failing canary is still rolled back
        canary = champion = _unavailable("the live quality (drift service)", exc)
    return quality(canary, champion, rule.max_regression, rule.min_labels)


def _move_aliases(tracking_uri: str, name: str, decision: Decision) -> None:
    if decision.action not in (Action.PROMOTE, Action.ROLLBACK):
        return
    client = registry.connect(tracking_uri)
    state = decision.state
    if decision.action is Action.PROMOTE:
        client.set_registered_model_alias(name, registry.PREVIOUS, state.champion_version)
        client.set_registered_model_alias(name, registry.CHAMPION, state.canary_version)
    if decision.action in (Action.PROMOTE, Action.ROLLBACK):
        # The champion alias never moved during the rollout: a rollback leaves it where it was.
        if registry.CHALLENGER in client.get_registered_model(name).aliases:
            client.delete_registered_model_alias(name, registry.CHALLENGER)
        client.set_model_version_tag(name, state.canary_version, TAG_ROLLOUT, f"{decision.action}: {decision.reason}")


def reconcile_once(
    backend,
    tracking_uri: str,
    namespace: str,
    name: str,
    now: float | None = None,
    approved: bool = False,
    provider: MetricsProvider | None = None,
    metrics=None,
) -> Decision | None:
    """Advance the rollout of `namespace/name` by at most one decision; None if nothing is rolling out.

    `provider` defaults to scraping the revisions (and, on the local plane, its drift service);
    `metrics` (a `RolloutMetrics`) is updated with the phase, traffic and gate verdicts."""
    now = time.time() if now is None else now
    obj = backend.get(namespace, name)
    if obj is None or canary_percent(obj) is None:
        return None
    provider = provider or ScrapeProvider(
        getattr(backend, "drift_metrics_url", None), router_metrics_url=getattr(backend, "router_metrics_url", None)
    )
    annotations = obj["metadata"]["annotations"]
    policy = Policy.from_annotation(annotations[ANNOTATION_POLICY])
    roles = revisions(obj)
    if ANNOTATION_STATE not in annotations:
        # First sight of this canary: start the clock (and, for scraping, the metric baseline).
        percent = canary_percent(obj)
        step = policy.steps.index(percent) if percent in policy.steps else 0
        state = State(roles["canary"].version, roles["champion"].version, step=step, step_started=now)
        decision = Decision(Action.HOLD, state, f"rollout started: canary v{state.canary_version} at {percent} %")
        # A revision that cannot be read yet has no baseline: its first window counts from its process's start.
        baseline = measure(provider, name, roles, policy, None).baseline
        try:
            _write(backend, obj, decision, baseline, policy)
        except ConflictError as exc:
            return Decision(Action.HOLD, state, f"not started yet: {exc}; trying again on the next reconcile")
        _record(backend, obj, decision, "start", metrics, policy)
        return decision

    state = State.from_annotation(annotations[ANNOTATION_STATE])
    if state.phase in TERMINAL:
        return Decision(Action.HOLD, state, f"rollout already {state.phase}")
    stored = annotations.get(ANNOTATION_BASELINE)
    baseline = scrape.baseline_from_annotation(stored) if stored else None
    # A source that cannot be read leaves its gates inconclusive ("query failed" is not "no data"): the
    # machine holds on them, and still rolls back on any gate that failed.
    measurement = measure(provider, name, roles, policy, baseline)
    results = analyse(provider, obj, policy, measurement)
    if metrics is not None:
        metrics.gates(name, results)
    decision = decide(policy, state, results, now, approved)
    new_interval = decision.state.step_started != state.step_started
    carried = baseline if measurement.since is None else measurement.since
    if decision.action is Action.HOLD and decision.state == state and carried == baseline:
        return decision
    if carried != baseline:
        restarted = sorted(role for role, start in carried.items() if (baseline or {}).get(role) != start)
        logger.info("%s/%s: %s restarted; the window counts from the restart", namespace, name, ", ".join(restarted))
    try:
        _write(backend, obj, decision, measurement.baseline if new_interval else carried, policy)
    except ConflictError as exc:
        return Decision(Action.HOLD, state, f"not written: {exc}; deciding again on the next reconcile")
    try:
        _move_aliases(tracking_uri, name, decision)
    except Exception as exc:  # MLflow's client raises several kinds; none may undo or hide a written decision
        logger.error("%s/%s: %s written, the registry not updated", namespace, name, decision.action, exc_info=exc)
        decision = replace(
            decision, reason=f"{decision.reason}; the registry was not updated ({type(exc).__name__}: {exc})"
        )
    if decision.action is not Action.HOLD or decision.state.failures != state.failures:
        # Every transition and every failed analysis is an event (an inconclusive interval changes nothing).
        _record(backend, obj, decision, str(decision.action), metrics, policy)
    return decision


def operate(backend, tracking_uri: str, namespace: str, name: str, command: str, reason: str = "") -> Decision:
    """What a person (or an alert) asks of a rollout: `rollback`, `pause`, `resume`, or `approve` the last
    step (it still needs its gates to pass). A concurrent write is re-read and the command applied again."""
    return retry_on_conflict(lambda: _operate_once(backend, tracking_uri, namespace, name, command, reason))


def _operate_once(backend, tracking_uri: str, namespace: str, name: str, command: str, reason: str) -> Decision:
    obj = backend.get(namespace, name)
    if obj is None or canary_percent(obj) is None or ANNOTATION_STATE not in obj["metadata"]["annotations"]:
        raise LookupError(f"no rollout in progress for {namespace}/{name}")
    annotations = obj["metadata"]["annotations"]
    policy = Policy.from_annotation(annotations[ANNOTATION_POLICY])
    state = State.from_annotation(annotations[ANNOTATION_STATE])
    if state.phase in TERMINAL:
        return Decision(Action.HOLD, state, f"rollout already {state.phase}")
    now = time.time()
    if command == "rollback":
        decision = rollback_now(state, now, reason or "rolled back by an operator")
    elif command == "pause":
        entry = {"time": now, "action": "pause", "reason": reason or "paused by an operator", "step": state.step}
        new = replace(state, phase=Phase.PAUSED, reason=entry["reason"], history=[*state.history, entry])
        decision = Decision(Action.HOLD, new, entry["reason"])
    elif command == "resume":
        entry = {"time": now, "action": "resume", "reason": reason or "resumed by an operator", "step": state.step}
        new = replace(
            state, phase=Phase.PROGRESSING, step_started=now, reason=entry["reason"], history=[*state.history, entry]
        )
        decision = Decision(Action.HOLD, new, entry["reason"])
    elif command == "approve":
        entry = {"time": now, "action": "approve", "reason": reason or "last step approved", "step": state.step}
        new = replace(state, approved=True, reason=entry["reason"], history=[*state.history, entry])
        decision = Decision(Action.HOLD, new, entry["reason"])
    else:
        raise ValueError(f"unknown rollout command {command!r}; expected rollback, pause, resume or approve")
    if decision.state == state:
        return decision
    stored = annotations.get(ANNOTATION_BASELINE)
    _write(backend, obj, decision, scrape.baseline_from_annotation(stored) if stored else None, policy)
    _move_aliases(tracking_uri, name, decision)
    _record(backend, obj, decision, command, None, policy)
    return decision


def _record(backend, obj: dict, decision: Decision, action: str, metrics, policy: Policy) -> None:
    """Every transition: a log line, an event on the backend (Kubernetes Events on a cluster), metrics."""
    meta = obj["metadata"]
    state = decision.state
    message = f"v{state.canary_version}: {decision.reason}"
    logger.info("%s/%s %s %s", meta.get("namespace"), meta["name"], action, message)
    record = getattr(backend, "record_event", None)
    if record is not None:
        warning = decision.action is Action.ROLLBACK
        record(obj, reason=f"Rollout{action.title().replace('-', '')}", message=message, warning=warning)
    if metrics is not None:
        metrics.transition(meta["name"], action, state.phase, decision.traffic(policy))


def _write(backend, obj: dict, decision: Decision, baseline: dict | None, policy: Policy) -> None:
    view = InferenceServiceView(obj)
    new = view.promoted() if decision.action is Action.PROMOTE else view.with_canary_percent(decision.traffic(policy))
    new.pop("status", None)
    # resourceVersion: written only over what was read; a concurrent change makes the backend refuse.
    kept = ("name", "namespace", "labels", "annotations", "resourceVersion")
    new["metadata"] = {k: v for k, v in new["metadata"].items() if k in kept}
    new["metadata"]["annotations"][ANNOTATION_STATE] = decision.state.to_annotation()
    if baseline is not None:
        new["metadata"]["annotations"][ANNOTATION_BASELINE] = scrape.baseline_to_annotation(baseline)
    backend.apply(new)
