"""Counter windows across resets. The scrape provider turns a revision's lifetime counters into the
interval's window against a stored baseline; a process that restarts (or is replaced) between two scrapes
starts every series from zero again. Any series going down (ok, invalid, error, any latency bucket) is such
a restart, and the window then counts what the new process served: never negative, never an error rate
outside [0, 1], and exactly the requests sent in between whenever nothing restarted.

The fuzzer drives the predictor's own metric definitions (monitoring.metrics.PredictorMetrics, counted as
the predictor counts) and reads them back through a real exposition and `scrape.parse`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from monitoring.metrics import LATENCY_BUCKETS, PredictorMetrics
from serving.inference_service import ANNOTATION_BASELINE
from serving.rollout import scrape
from serving.rollout.gates import Window
from serving.rollout.loop import reconcile_once
from serving.rollout.machine import Action
from serving.rollout.scrape import Counters
from tests.unit.rollout_edges import INTERVAL, NAME, NS, RevisionProcess, deploy, rollout_spec

BOUNDS = (*LATENCY_BUCKETS, math.inf)
LATENCIES = (0.0003, 0.0005, 0.003, 0.05, 0.3, 2.5, 9.0)  # inside buckets, on a bound (le), past the last


def test_a_restart_with_only_errors_since_is_all_errors():
    """A revision restarted after the baseline (ok 7 -> 0) and has failed 42 requests since: 42/42."""
    window = Counters(ok=0, error=42).minus(Counters(ok=7))
    assert (window.requests, window.errors) == (42, 42)


def test_a_restart_is_seen_in_any_series_not_only_the_total():
    """Errors 40 -> 0 is a restart even though the total went up (0 + 40 -> 50 + 0): 50 requests, no errors."""
    window = Counters(ok=50).minus(Counters(error=40))
    assert (window.requests, window.errors) == (50, 0)


def test_a_latency_bucket_going_down_is_a_restart_too():
    before = Counters(ok=5, buckets=((0.01, 4.0), (math.inf, 5.0)))
    after = Counters(ok=10, error=2, buckets=((0.01, 3.0), (math.inf, 10.0)))  # 0.01 bucket 4 -> 3
    assert after.restarted_since(before)
    assert after.minus(before) == Window(12, 2, ((0.01, 3.0), (math.inf, 10.0)))


def test_a_series_missing_after_a_restart_counts_as_zero():
    before = Counters(ok=5, buckets=((0.01, 5.0), (math.inf, 5.0)))
    after = Counters(error=3)  # a fresh process that has not timed a request yet exports no buckets
    assert after.restarted_since(before) and after.minus(before) == Window(3, 3, ())


def test_requests_the_router_answered_for_a_dead_revision_are_its_errors():
    """The plane answered 503 for 6 requests routed to a revision whose process was gone, and the new
    process has served 10 since it came back: 16 requests, 6 errors."""
    before = Counters(ok=40, error=1, unavailable=2)
    after = Counters(ok=10, unavailable=8)  # the revision restarted; the router's count did not
    assert after.minus(before) == Window(16, 6, ())


def test_the_routers_count_resets_with_the_plane_not_with_the_revision():
    before = Counters(ok=40, error=1, unavailable=9)
    after = Counters(ok=45, error=1, unavailable=3)  # the plane restarted; the revision did not
    assert not after.restarted_since(before)
    assert after.minus(before) == Window(8, 3, ())
    assert after.unanswered_since(before) == 3


def test_the_baseline_annotation_keeps_the_routers_count():
    baseline = {"canary": Counters(ok=3, unavailable=4, buckets=((0.01, 3.0),))}
    assert scrape.baseline_from_annotation(scrape.baseline_to_annotation(baseline)) == baseline
    assert scrape.baseline_from_annotation('{"canary": {"ok": 1, "invalid": 0, "error": 0, "buckets": []}}') == {
        "canary": Counters(ok=1)
    }  # written before the router's count existed


def test_no_restart_is_a_plain_difference():
    before = Counters(ok=5, invalid=1, error=1, buckets=((0.01, 5.0), (math.inf, 5.0)))
    after = Counters(ok=9, invalid=4, error=2, buckets=((0.01, 7.0), (math.inf, 9.0)))
    assert not after.restarted_since(before)
    assert after.minus(before) == Window(5, 1, ((0.01, 2.0), (math.inf, 4.0)))


# The fuzzer: random traffic, restarts and replacements, scraped between; the loop's baseline kept as the
# loop keeps it (a new interval takes the current counters; a restart seen rebases the window to zero).


class Process:
    """One predictor process: the predictor's metric definitions in a fresh registry, counted as it counts
    (an ok request is timed; a 5xx and a 4xx are not)."""

    def __init__(self):
        labels = {"model": NAME, "version": "2", "role": "canary"}
        self.registry = CollectorRegistry()
        metrics = PredictorMetrics.create(self.registry)
        self.requests = {o: metrics.requests.labels(**labels, outcome=o) for o in ("ok", "invalid", "error")}
        self.duration = metrics.duration.labels(**labels)

    def handle(self, outcome: str, latency: float) -> None:
        self.requests[outcome].inc()
        if outcome == "ok":
            self.duration.observe(latency)

    def scrape(self) -> Counters:
        return scrape.parse(generate_latest(self.registry).decode(), NAME, "2")


@dataclass
class Sent:
    """What was really sent, counted by the test."""

    ok: int = 0
    error: int = 0
    latencies: list[float] = field(default_factory=list)

    def add(self, outcome: str, latency: float) -> None:
        if outcome == "ok":
            self.ok += 1
            self.latencies.append(latency)
        elif outcome == "error":
            self.error += 1

    def window(self) -> Window:
        buckets = tuple((b, float(sum(1 for x in self.latencies if x <= b))) for b in BOUNDS)
        return Window(float(self.ok + self.error), float(self.error), buckets)


OUTCOMES = st.sampled_from(["ok", "ok", "ok", "error", "invalid"])
REQUEST = st.tuples(st.just("request"), OUTCOMES, st.sampled_from(LATENCIES))
BURST = st.tuples(st.just("burst"), OUTCOMES, st.integers(1, 400))  # enough to pass an old baseline
EVENTS = st.lists(
    st.one_of(
        REQUEST,
        REQUEST,
        BURST,
        st.just(("restart",)),  # the process starts again: every counter back to zero
        st.tuples(st.just("replace"), st.integers(0, 400), st.integers(0, 40)),  # a new process, busy already
        st.just(("scrape",)),
        st.just(("new-interval",)),  # the loop took a new baseline (a step, a failed analysis)
    ),
    max_size=60,
)


def check(window: Window, sent: Window, exact: bool) -> None:
    assert window.requests >= 0 and 0 <= window.errors <= window.requests
    if window.requests:
        assert 0.0 <= window.errors / window.requests <= 1.0
    assert window.requests <= sent.requests and window.errors <= sent.errors  # never more than was sent
    assert all(count >= 0 for _, count in window.latency_buckets)
    sent_buckets = dict(sent.latency_buckets)
    assert all(count <= sent_buckets[b] for b, count in window.latency_buckets)
    if exact:
        assert window == sent


@settings(max_examples=400, deadline=None)
@given(before=st.lists(REQUEST, max_size=20), events=EVENTS)
def test_windows_across_restarts_are_never_negative_and_exact_without_one(before, events):
    process, since_start = Process(), Sent()  # since_start: what the running process served
    for _, outcome, latency in before:  # traffic before the rollout: in the baseline, not in any window
        process.handle(outcome, latency)
        since_start.add(outcome, latency)
    base = process.scrape()
    since_base = Sent()  # what was sent since the baseline was taken
    restarted = False  # did the process restart since the baseline?

    def serve(outcome, latency):
        process.handle(outcome, latency)
        since_base.add(outcome, latency)
        since_start.add(outcome, latency)

    for event in events:
        kind = event[0]
        if kind == "request":
            serve(event[1], event[2])
        elif kind == "burst":
            for _ in range(event[2]):
                serve(event[1], 0.003)
        elif kind in ("restart", "replace"):
            process, since_start, restarted = Process(), Sent(), True
            if kind == "replace":
                for outcome, n in (("ok", event[1]), ("error", event[2])):
                    for _ in range(n):
                        serve(outcome, 0.02)
        else:
            current = process.scrape()
            window = current.minus(base)
            check(window, since_base.window(), exact=not restarted)
            if current.restarted_since(base):
                assert window == since_start.window()  # a restart seen: exactly what the new process served
            if kind == "new-interval":
                base, since_base, restarted = current, Sent(), False
            elif current.since(base) != base:  # the loop stores zero: the window keeps counting from the restart
                base, restarted = current.since(base), False
                since_base = Sent(since_start.ok, since_start.error, list(since_start.latencies))


# The loop itself, over real HTTP: the restart seen mid-interval is kept on the object.


@pytest.fixture
def revisions():
    champion, canary = RevisionProcess(NAME, "1", "champion"), RevisionProcess(NAME, "2", "canary")
    yield champion, canary
    champion.kill()
    canary.kill()


def test_the_loop_keeps_counting_a_restarted_canary_from_its_restart(churn_spec, revisions):
    champion, canary = revisions
    api = deploy(rollout_spec(churn_spec), champion_url=champion.url, canary_url=canary.url, drift=False)
    canary.serve(ok=500)  # served before the rollout started: in the baseline
    uri = "sqlite:///unused.db"  # nothing here moves an alias
    reconcile_once(api, uri, NS, NAME, 1000.0)

    canary.restart()
    canary.serve(ok=20, error=3)
    early = reconcile_once(api, uri, NS, NAME, 1030.0)  # mid-interval: no decision, but the restart is seen
    assert early.action is Action.HOLD and "runs until" in early.reason
    stored = api.get(NS, NAME)["metadata"]["annotations"][ANNOTATION_BASELINE]
    assert scrape.baseline_from_annotation(stored)["canary"] == Counters()

    # The new process now passes the old baseline in every series: only the stored zero still knows it restarted.
    canary.serve(ok=600)
    champion.serve(ok=600)
    decision = reconcile_once(api, uri, NS, NAME, 1000.0 + INTERVAL + 1)
    # 3 errors in the 623 requests the new process served (0.48 %); against the old baseline it would
    # have been 3 in 123 (2.4 %) and a failed analysis.
    assert decision.action is Action.STEP, decision.reason
