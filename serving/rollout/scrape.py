"""The embedded default's metric provider: scrape each revision's `/metrics` and turn lifetime
counters into per-interval windows (against a baseline taken when the step began).

The baseline is kept on the InferenceService (annotation) with the rest of the rollout state, so a
restarted loop computes the same windows. A revision whose process restarted (any series went down)
counts from zero; the loop then stores zero as its baseline, so the interval keeps counting from the
restart even once the new counters pass the old ones. On a cluster the Prometheus provider asks
`increase(...)` over the interval instead and needs no baseline.

On the local plane a revision's window also holds the requests routed to it that it never answered (its
process was gone: the plane answered 503 itself): the plane counts them, the revision cannot. That count
lives in the plane's process, so it resets with the plane, not with the revision.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace

from monitoring.metrics import PLANE_UNAVAILABLE_TOTAL, REQUEST_DURATION_SECONDS, REQUESTS_TOTAL
from serving.rollout.gates import Window


@dataclass(frozen=True)
class Counters:
    """Lifetime counters of one revision, as scraped; `unavailable` from the router in front of it."""

    ok: float = 0.0
    invalid: float = 0.0
    error: float = 0.0
    buckets: tuple[tuple[float, float], ...] = ()
    unavailable: float = 0.0  # requests routed to the revision that it never answered (the plane's count)

    def series(self) -> dict[str, float]:
        """Every series of the revision's own process by name (a latency bucket by its bound)."""
        buckets = {f"le={bound!r}": count for bound, count in self.buckets}
        return {"ok": self.ok, "invalid": self.invalid, "error": self.error, **buckets}

    def restarted_since(self, base: Counters) -> bool:
        """Whether the revision's process started again after `base` was scraped. A counter only goes
        down when its process restarts, and then every series of that process restarted with it (a
        series missing now counts as zero, as in a fresh process that has not served it yet)."""
        ours = self.series()
        return any(ours.get(name, 0.0) < value for name, value in base.series().items())

    def since(self, base: Counters) -> Counters:
        """What a window ending now starts from: `base`, or zero for the counters of a process that
        restarted after it (the revision's own, or the router's `unavailable`)."""
        start = Counters() if self.restarted_since(base) else base
        return replace(start, unavailable=0.0 if self.unavailable < base.unavailable else base.unavailable)

    def minus(self, base: Counters) -> Window:
        """The window since `base`. After a restart of the revision (any of its series went down) the
        window counts from zero, for every series: what the new process served. Nothing is negative and
        errors never exceed requests."""
        start = self.since(base)
        start_buckets = dict(start.buckets)
        buckets = tuple((b, c - start_buckets.get(b, 0.0)) for b, c in self.buckets)
        # Invalid requests are the client's doing: they neither count for nor against the canary.
        unanswered = self.unanswered_since(base)
        return Window(
            requests=(self.ok - start.ok) + (self.error - start.error) + unanswered,
            errors=self.error - start.error + unanswered,
            latency_buckets=buckets,
        )

    def unanswered_since(self, base: Counters) -> float:
        """Requests routed to the revision since `base` that the router answered in its place."""
        return self.unavailable - (base.unavailable if self.unavailable >= base.unavailable else 0.0)


def parse(text: str, model: str, version: str) -> Counters:
    """The counters of `model` `version` from a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    outcomes = {"ok": 0.0, "invalid": 0.0, "error": 0.0}
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if labels.get("model") != model or labels.get("version") != version:
                continue
            if sample.name == REQUESTS_TOTAL and labels.get("outcome") in outcomes:
                outcomes[labels["outcome"]] += sample.value
            elif sample.name == f"{REQUEST_DURATION_SECONDS}_bucket":
                bound = float(labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
    return Counters(**outcomes, buckets=tuple(sorted(buckets.items())))


def parse_unavailable(text: str, model: str, version: str, role: str) -> float:
    """The plane's count of `model` `version` requests (in `role`) no revision answered."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == PLANE_UNAVAILABLE_TOTAL
        and sample.labels.get("model") == model
        and sample.labels.get("version") == version
        and sample.labels.get("role") == role
    )


def scrape(url: str, model: str, version: str) -> Counters:
    import httpx

    return parse(httpx.get(f"{url}/metrics", timeout=5).text, model, version)


def baseline_to_annotation(baseline: dict[str, Counters]) -> str:
    return json.dumps({role: asdict(c) for role, c in baseline.items()})


def baseline_from_annotation(text: str) -> dict[str, Counters]:
    raw = json.loads(text)
    return {
        role: Counters(
            c["ok"], c["invalid"], c["error"], tuple(tuple(b) for b in c["buckets"]), c.get("unavailable", 0.0)
        )
        for role, c in raw.items()
    }
