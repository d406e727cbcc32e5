"""One reconcile of a canary rollout: read the InferenceService, measure the interval, decide, and
write the decision back (traffic, state annotation) together with the MLflow aliases.

Stateless by design: everything it needs is on the object (policy, state, metric baseline), so any
process can run the next reconcile after a restart.
"""

from __future__ import annotations

import copy

from components import registry
from serving.inference_service import ANNOTATION_CHAMPION, ANNOTATION_POLICY, ANNOTATION_VERSION
from serving.rollout import scrape
from serving.rollout.gates import Threshold, error_rate, latency_ratio
from serving.rollout.machine import ANNOTATION_STATE, Action, Decision, Policy, State, decide

TAG_ROLLOUT = "shepherd.rollout"  # on the canary's version: how its rollout ended, and why


def canary_percent(obj: dict) -> int | None:
    spec = obj["spec"]
    if spec.get("canary"):
        return int(spec["canary"][0]["trafficPercent"])
    percent = spec["predictor"].get("canaryTrafficPercent")
    return None if percent is None else int(percent)


def with_canary_percent(obj: dict, percent: int) -> dict:
    obj = copy.deepcopy(obj)
    if obj["spec"].get("canary"):
        obj["spec"]["canary"][0]["trafficPercent"] = percent
    else:
        obj["spec"]["predictor"]["canaryTrafficPercent"] = percent
    return obj


def promoted(obj: dict) -> dict:
    """The object with the canary as the only predictor, at 100 %."""
    obj = copy.deepcopy(obj)
    spec = obj["spec"]
    if spec.get("canary"):
        spec["predictor"] = spec.pop("canary")[0]["predictor"]
    else:
        spec["predictor"].pop("canaryTrafficPercent", None)
    obj["metadata"]["annotations"].pop(ANNOTATION_CHAMPION, None)
    return obj


def _revisions(obj: dict) -> dict[str, dict]:
    """role -> {url, version} from the status the plane (or KServe) reports."""
    traffic = obj.get("status", {}).get("components", {}).get("predictor", {}).get("traffic", [])
    out = {}
    for entry in traffic:
        role = "canary" if entry.get("latestRevision") and len(traffic) > 1 else "champion"
        out[role] = {"url": entry.get("url"), "version": entry["revisionName"].rsplit("-v", 1)[-1]}
    return out


def _measure(obj: dict) -> dict[str, scrape.Counters]:
    model = obj["metadata"]["name"]
    return {role: scrape.scrape(rev["url"], model, rev["version"]) for role, rev in _revisions(obj).items()}


def _move_aliases(tracking_uri: str, name: str, decision: Decision) -> None:
    client = registry.connect(tracking_uri)
    state = decision.state
    if decision.action is Action.PROMOTE:
        client.set_registered_model_alias(name, registry.PREVIOUS, state.champion_version)
        client.set_registered_model_alias(name, registry.CHAMPION, state.canary_version)
    if decision.action in (Action.PROMOTE, Action.ROLLBACK):
        client.delete_registered_model_alias(name, registry.CHALLENGER)
        client.set_model_version_tag(name, state.canary_version, TAG_ROLLOUT, f"{decision.action}: {decision.reason}")


def reconcile_once(
    backend, tracking_uri: str, namespace: str, name: str, now: float, approved: bool = False
) -> Decision | None:
    """Advance the rollout of `namespace/name` by at most one decision; None if nothing is rolling out."""
    obj = backend.get(namespace, name)
    if obj is None or canary_percent(obj) is None:
        return None
    annotations = obj["metadata"]["annotations"]
    policy = Policy.from_annotation(annotations[ANNOTATION_POLICY])
    if ANNOTATION_STATE not in annotations:
        # First sight of this canary: start the clock and the metric baseline.
        percent = canary_percent(obj)
        step = policy.steps.index(percent) if percent in policy.steps else 0
        state = State(
            annotations[ANNOTATION_VERSION],
            annotations[ANNOTATION_CHAMPION],
            step=step,
            step_started=now,
            reason="rollout started",
        )
        decision = Decision(Action.HOLD, state, "rollout started")
        _write(backend, obj, decision, _measure(obj), policy)
        return decision

    state = State.from_annotation(annotations[ANNOTATION_STATE])
    baseline = scrape.baseline_from_annotation(annotations.get(scrape.ANNOTATION_BASELINE, "{}"))
    current = _measure(obj)
    canary = current["canary"].minus(baseline.get("canary", scrape.Counters()))
    champion = current["champion"].minus(baseline.get("champion", scrape.Counters()))
    if champion.requests < policy.min_requests:
        # At 100 % the champion serves nothing: compare with everything it served before instead.
        champion = current["champion"].minus(scrape.Counters())
    gates = policy.gates
    results = [
        error_rate(canary, gates.get("error_rate", Threshold(max=0.01)), policy.min_requests),
        latency_ratio(canary, champion, gates.get("latency_p99_ratio", Threshold(max=1.5)), policy.min_requests),
    ]
    decision = decide(policy, state, results, now, approved)
    if decision.action is Action.HOLD and decision.state == state:
        return decision
    new_interval = decision.state.step_started != state.step_started
    _write(backend, obj, decision, current if new_interval else baseline, policy)
    _move_aliases(tracking_uri, name, decision)
    return decision


def _write(backend, obj: dict, decision: Decision, baseline: dict, policy: Policy) -> None:
    new = promoted(obj) if decision.action is Action.PROMOTE else with_canary_percent(obj, decision.traffic(policy))
    new.pop("status", None)
    new["metadata"] = {k: v for k, v in new["metadata"].items() if k in ("name", "namespace", "labels", "annotations")}
    new["metadata"]["annotations"][ANNOTATION_STATE] = decision.state.to_annotation()
    new["metadata"]["annotations"][scrape.ANNOTATION_BASELINE] = scrape.baseline_to_annotation(baseline)
    backend.apply(new)
