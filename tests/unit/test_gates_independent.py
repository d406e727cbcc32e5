"""Every gate reads its own source: a source that cannot be read leaves its gates inconclusive with the
reason, and never hides another gate's failure. A canary failing every request is rolled back while the
drift service is SIGKILLed or answering 500s, while Prometheus cannot answer the drift query, while the
champion's /metrics is gone or the registry cannot be written; a healthy canary whose drift cannot be read
holds and never promotes, and says why.

The loop runs whole (reconcile_once): the object lives in an API server that refuses stale writes, the
registry is real MLflow, the revisions and the drift service answer over real HTTP (or the test's metric
provider answers, at that edge), and the faults are the ones seen: a closed port, a 500, a garbage body.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import parse_qs, urlparse

import pytest
from prometheus_client import CollectorRegistry

from components import registry
from monitoring.metrics import ROLLOUT_GATE_VERDICT
from serving.inference_service import ANNOTATION_POLICY
from serving.local_plane import free_port
from serving.rollout.controller import RolloutMetrics
from serving.rollout.gates import Unavailable, Verdict, Window
from serving.rollout.loop import TAG_ROLLOUT, analyse, canary_percent, measure, reconcile_once, revisions
from serving.rollout.machine import Action, Phase, Policy, State
from serving.rollout.providers import DriftReading, Measurement, MetricsUnavailable, PrometheusProvider
from tests.unit.rollout_edges import (
    INTERVAL,
    NAME,
    NS,
    DriftService,
    HttpEdge,
    RevisionProcess,
    deploy,
    registry_with_two_versions,
    rollout_spec,
)

BUCKETS = ((0.005, 90.0), (0.01, 100.0), (float("inf"), 100.0))
HEALTHY = Window(100.0, 0.0, BUCKETS)
ALL_FAILING = Window(100.0, 100.0, ())  # every request a 5xx: no latency samples (errors are not timed)
CHAMPION = Window(900.0, 0.0, BUCKETS)
DRIFT_DOWN = MetricsUnavailable(
    "scraping http://127.0.0.1:9/drift/metrics: ConnectError: [Errno 111] Connection refused"
)
CALM = DriftReading(0.05, 0.01)


@pytest.fixture(scope="module")
def spec(churn_spec):
    return rollout_spec(churn_spec)


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    return registry_with_two_versions(tmp_path_factory.mktemp("gates-registry"))


@pytest.fixture
def tracking_uri(mlflow_uri):
    """The registry as a deploy leaves it: v1 @champion, v2 @challenger, no rollout outcome yet."""
    client = registry.connect(mlflow_uri)
    client.set_registered_model_alias(NAME, registry.CHAMPION, "1")
    client.set_registered_model_alias(NAME, registry.CHALLENGER, "2")
    if TAG_ROLLOUT in client.get_model_version(NAME, "2").tags:
        client.delete_model_version_tag(NAME, "2", TAG_ROLLOUT)
    return mlflow_uri


class Answers:
    """The metric provider at its edge: each source answers what the test says, or raises."""

    def __init__(self, canary=HEALTHY, champion=CHAMPION, drift=CALM, counters=None):
        self.canary, self.champion, self.drift_answer, self.counters = canary, champion, drift, counters

    def measure(self, model, revisions, interval_seconds, baseline):
        if self.counters is not None:
            raise self.counters
        return Measurement(self.canary, self.champion)

    def drift(self, model, canary_version):
        if isinstance(self.drift_answer, Exception):
            raise self.drift_answer
        return self.drift_answer


def policy_of(api) -> Policy:
    return Policy.from_annotation(api.get(NS, NAME)["metadata"]["annotations"][ANNOTATION_POLICY])


def one_analysis(api, provider) -> dict:
    obj = api.get(NS, NAME)
    results = analyse(provider, obj, policy_of(api), measure(provider, NAME, revisions(obj), policy_of(api), None))
    return {r.gate: r for r in results}


def verdicts(metrics: RolloutMetrics) -> dict[str, str]:
    """gate -> the verdict the controller exports for it (what a dashboard shows)."""
    found = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == ROLLOUT_GATE_VERDICT and sample.value == 1.0:
                found[sample.labels["gate"]] = sample.labels["verdict"]
    return found


def run_intervals(api, uri, provider, count, metrics=None, start=1000.0):
    """Start the rollout, then one reconcile per elapsed interval; the decisions after the start."""
    reconcile_once(api, uri, NS, NAME, start, provider=provider, metrics=metrics)
    decisions = []
    for i in range(1, count + 1):
        decision = reconcile_once(api, uri, NS, NAME, start + i * (INTERVAL + 1), provider=provider, metrics=metrics)
        decisions.append(decision)
        if decision.action is Action.ROLLBACK:
            break
    return decisions


def assert_rolled_back(api, uri, decisions, why="canary error rate 100.00% (100/100)"):
    assert [d.action for d in decisions] == [Action.HOLD, Action.ROLLBACK], [d.reason for d in decisions]
    assert decisions[0].state.failures == 1 and why in decisions[0].reason
    assert "rolled back after 2 failed analyses" in decisions[1].reason and why in decisions[1].reason
    served = api.get(NS, NAME)
    assert canary_percent(served) == 0
    assert (
        State.from_annotation(served["metadata"]["annotations"]["shepherd.io/rollout-state"]).phase is Phase.ROLLED_BACK
    )
    assert api.recorded[-1]["reason"] == "RolloutRollback" and api.recorded[-1]["type"] == "Warning"
    client = registry.connect(uri)
    assert str(client.get_model_version_by_alias(NAME, registry.CHAMPION).version) == "1"
    assert registry.CHALLENGER not in client.get_registered_model(NAME).aliases
    assert client.get_model_version(NAME, "2").tags[TAG_ROLLOUT].startswith("rollback")


@pytest.mark.parametrize(
    "drift_fault",
    [DRIFT_DOWN, KeyError("share")],  # the contract's "query failed", and a provider outside the contract
    ids=["drift-unavailable", "drift-raises-anything"],
)
def test_a_failing_canary_is_rolled_back_while_the_drift_read_raises(spec, tracking_uri, drift_fault):
    api = deploy(spec)
    provider = Answers(canary=ALL_FAILING, drift=drift_fault)

    gates = one_analysis(api, provider)
    assert gates["error_rate"].verdict is Verdict.FAIL and "100.00% (100/100)" in gates["error_rate"].reason
    for gate in ("drift_share", "prediction_psi"):
        assert gates[gate].verdict is Verdict.INCONCLUSIVE
        assert gates[gate].reason.startswith("no verdict: the drift service could not be read (")
    if isinstance(drift_fault, MetricsUnavailable):
        assert str(DRIFT_DOWN) in gates["drift_share"].reason
    else:
        assert "KeyError: 'share'" in gates["drift_share"].reason

    metrics = RolloutMetrics(CollectorRegistry())
    assert_rolled_back(api, tracking_uri, run_intervals(api, tracking_uri, provider, 4, metrics))
    assert verdicts(metrics)["error_rate"] == "fail" and verdicts(metrics)["drift_share"] == "inconclusive"


@pytest.mark.parametrize("percent", [10, 100], ids=["first-step", "full-traffic"])
def test_a_healthy_canary_whose_drift_cannot_be_read_holds_and_says_why(spec, tracking_uri, percent):
    api = deploy(spec, percent=percent)
    decisions = run_intervals(api, tracking_uri, Answers(drift=DRIFT_DOWN), 5)
    assert {d.action for d in decisions} == {Action.HOLD}  # at full traffic the next pass would promote
    for decision in decisions:
        assert decision.reason.startswith("inconclusive, holding: no verdict: the drift service could not be read")
        assert str(DRIFT_DOWN) in decision.reason and decision.state.failures == 0
    assert canary_percent(api.get(NS, NAME)) == percent
    assert registry.CHALLENGER in registry.connect(tracking_uri).get_registered_model(NAME).aliases
    # Once the drift service answers again, the same canary is promoted (or stepped): holding was the only cause.
    later = reconcile_once(api, tracking_uri, NS, NAME, 2000.0, provider=Answers())
    assert later.action is (Action.PROMOTE if percent == 100 else Action.STEP)


def test_no_data_and_query_failed_say_different_things(spec):
    api = deploy(spec)
    no_data = one_analysis(api, Answers(drift=DriftReading(None, None)))["drift_share"]
    failed = one_analysis(api, Answers(drift=DRIFT_DOWN))["drift_share"]
    assert no_data.verdict is failed.verdict is Verdict.INCONCLUSIVE
    assert "no result for the canary yet" in no_data.reason and "could not be read" in failed.reason


def test_unreadable_request_counters_hold_with_a_reason_per_gate(spec, tracking_uri):
    api = deploy(spec, percent=100)
    down = MetricsUnavailable("Prometheus at http://prometheus:9090: ConnectError: [Errno 111] Connection refused")
    provider = Answers(counters=down)
    gates = one_analysis(api, provider)
    for gate in ("error_rate", "latency_p99_ratio"):
        assert gates[gate].verdict is Verdict.INCONCLUSIVE
        assert gates[gate].reason == f"no verdict: the request counters could not be read ({down})"
    assert gates["drift_share"].verdict is gates["prediction_psi"].verdict is Verdict.PASS
    decisions = run_intervals(api, tracking_uri, provider, 3)
    assert {d.action for d in decisions} == {Action.HOLD}
    assert all("error_rate" not in d.reason and "could not be read" in d.reason for d in decisions)


def test_a_drifted_canary_is_rolled_back_while_its_counters_cannot_be_read(spec, tracking_uri):
    api = deploy(spec)
    provider = Answers(
        counters=MetricsUnavailable("Prometheus at http://prometheus:9090: timed out"), drift=DriftReading(0.9, 0.01)
    )
    decisions = run_intervals(api, tracking_uri, provider, 4)
    assert_rolled_back(api, tracking_uri, decisions, why="90% of the canary's features drifted from training")


def test_the_error_rate_is_judged_when_only_the_champion_cannot_be_read(spec):
    api = deploy(spec)
    gone = Unavailable("the champion's request counters", "scraping http://champion/metrics: ConnectError")
    gates = one_analysis(api, Answers(canary=ALL_FAILING, champion=gone))
    assert gates["error_rate"].verdict is Verdict.FAIL
    assert gates["latency_p99_ratio"].verdict is Verdict.INCONCLUSIVE and str(gone) == gates["latency_p99_ratio"].reason


def test_a_rollback_stands_when_the_registry_cannot_be_written(spec, tmp_path):
    api = deploy(spec)
    (tmp_path / "registry").write_text("not a directory")  # MLflow cannot open a database under a file
    broken = f"sqlite:///{tmp_path / 'registry' / 'mlflow.db'}"
    decisions = run_intervals(api, broken, Answers(canary=ALL_FAILING), 3)
    assert [d.action for d in decisions] == [Action.HOLD, Action.ROLLBACK]
    assert "the registry was not updated" in decisions[-1].reason
    assert canary_percent(api.get(NS, NAME)) == 0  # the traffic moved first, whatever the registry does
    assert api.recorded[-1]["reason"] == "RolloutRollback" and "registry was not updated" in api.recorded[-1]["message"]
    assert reconcile_once(api, broken, NS, NAME, 5000.0, provider=Answers()).reason == "rollout already rolled-back"


# The default path, over real HTTP: the loop scrapes each revision's /metrics and the drift service's.


@dataclass
class Plane:
    champion: RevisionProcess
    canary: RevisionProcess
    drift: DriftService


@pytest.fixture
def plane():
    started = Plane(
        RevisionProcess(NAME, "1", "champion"), RevisionProcess(NAME, "2", "canary"), DriftService(NAME, "2")
    )
    yield started
    for process in (started.champion, started.canary, started.drift):
        process.kill()


def _scraped(spec, plane, percent=10):
    api = deploy(spec, percent, champion_url=plane.champion.url, canary_url=plane.canary.url)
    api.drift_metrics_url = plane.drift.metrics_url  # as the local plane's backend names its drift service
    return api


def _drive(api, uri, plane, canary_ok, canary_error, intervals=3):
    reconcile_once(api, uri, NS, NAME, 1000.0)
    decisions = []
    for i in range(1, intervals + 1):
        plane.champion.serve(ok=540)
        plane.canary.serve(ok=canary_ok, error=canary_error)
        decisions.append(reconcile_once(api, uri, NS, NAME, 1000.0 + i * (INTERVAL + 1)))
        if decisions[-1].action is Action.ROLLBACK:
            break
    return decisions


@pytest.mark.parametrize("fault", ["drift-killed", "drift-500", "drift-garbage", "champion-killed"])
def test_the_scraped_loop_rolls_back_a_failing_canary_whatever_else_is_down(spec, tracking_uri, plane, fault):
    api = _scraped(spec, plane)
    if fault == "drift-killed":
        plane.drift.kill()  # SIGKILL: nothing listens on the port any more
    elif fault == "drift-500":
        plane.drift.failing = True
    elif fault == "drift-garbage":
        plane.drift.garbage = True
    reconcile_once(api, tracking_uri, NS, NAME, 1000.0)  # the baseline is taken with the champion still up
    if fault == "champion-killed":
        plane.champion.kill()
    decisions = []
    for i in range(1, 4):
        if fault != "champion-killed":
            plane.champion.serve(ok=540)
        plane.canary.serve(error=100)
        decisions.append(reconcile_once(api, tracking_uri, NS, NAME, 1000.0 + i * (INTERVAL + 1)))
        if decisions[-1].action is Action.ROLLBACK:
            break
    assert_rolled_back(api, tracking_uri, decisions)


def test_the_scraped_loop_holds_a_healthy_canary_while_the_drift_service_is_killed(spec, tracking_uri, plane):
    api = _scraped(spec, plane, percent=100)
    plane.drift.kill()
    decisions = _drive(api, tracking_uri, plane, canary_ok=60, canary_error=0)
    assert {d.action for d in decisions} == {Action.HOLD}
    assert all(f"could not be read (scraping {plane.drift.metrics_url}: ConnectError" in d.reason for d in decisions)


def test_an_unreadable_canary_is_held_not_judged(spec, tracking_uri, plane):
    api = _scraped(spec, plane)
    plane.canary.garbage = True  # a proxy answers for it
    decisions = _drive(api, tracking_uri, plane, canary_ok=0, canary_error=100)
    assert {d.action for d in decisions} == {Action.HOLD}
    assert all("the canary's request counters could not be read" in d.reason for d in decisions)
    assert all("not Prometheus' text format" in d.reason for d in decisions)


# The cluster's path: PromQL over Prometheus' HTTP API (the server is the test's, at that edge).


class PrometheusApi:
    """Answers the loop's PromQL as Prometheus would: the canary fails `canary_errors` of its 100 requests,
    the champion serves 900 well. A query containing one of `broken` gets a proxy's 503 instead."""

    def __init__(self, canary_errors: float, broken: tuple[str, ...] = ()):
        self.canary_errors, self.broken = canary_errors, broken
        self.server = HttpEdge(self._answer)

    def _answer(self, path: str) -> tuple[int, bytes]:
        query = parse_qs(urlparse(path).query).get("query", [""])[0]
        if any(b in query for b in self.broken):
            return 503, b"<html>503 Service Unavailable</html>"
        result = []
        canary = 'role="canary"' in query
        if "sum by (outcome)" in query:
            errors = self.canary_errors if canary else 0.0
            ok = 100.0 - errors if canary else 900.0
            result = [{"metric": {"outcome": o}, "value": [0, str(v)]} for o, v in (("ok", ok), ("error", errors))]
        elif "sum by (le)" in query:
            counts = {"0.005": 90.0, "0.01": 100.0, "+Inf": 100.0}
            result = [{"metric": {"le": le}, "value": [0, str(c)]} for le, c in counts.items()]
        return 200, json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}}).encode()

    def kill(self):
        self.server.kill()


@pytest.mark.parametrize(
    "broken",
    [("shepherd_drift",), ("_bucket", "shepherd_drift")],
    ids=["drift-query-fails", "drift-and-histogram-queries-fail"],
)
def test_prometheus_path_rolls_back_while_some_queries_fail(spec, tracking_uri, broken):
    prometheus = PrometheusApi(canary_errors=100.0, broken=broken)
    try:
        provider = PrometheusProvider(prometheus.server.url)
        api = deploy(spec)
        gates = one_analysis(api, provider)
        assert gates["error_rate"].verdict is Verdict.FAIL
        assert gates["drift_share"].verdict is Verdict.INCONCLUSIVE and "503" in gates["drift_share"].reason
        if "_bucket" in broken:
            assert "the canary's latency histogram could not be read" in gates["latency_p99_ratio"].reason
        assert_rolled_back(api, tracking_uri, run_intervals(api, tracking_uri, provider, 4))
    finally:
        prometheus.kill()


def test_prometheus_down_holds_with_every_gate_saying_why(spec, tracking_uri):
    provider = PrometheusProvider(f"http://127.0.0.1:{free_port()}", timeout=2)  # nothing listens there
    api = deploy(spec, percent=100)
    gates = one_analysis(api, provider)
    assert {g.verdict for g in gates.values()} == {Verdict.INCONCLUSIVE}
    assert all("could not be read (Prometheus at http://127.0.0.1:" in g.reason for g in gates.values())
    decisions = run_intervals(api, tracking_uri, provider, 2)
    assert {d.action for d in decisions} == {Action.HOLD}
