"""The embedded default's metric provider: scrape each revision's `/metrics` and turn lifetime
counters into per-interval windows (against a baseline taken when the step began).

The baseline is kept on the InferenceService (annotation) with the rest of the rollout state, so a
restarted loop computes the same windows. A revision whose process restarted (any series went down)
counts from zero; the loop then stores zero as its baseline, so the interval keeps counting from the
restart even once the new counters pass the old ones. On a cluster the Prometheus provider asks
`increase(...)` over the interval instead and needs no baseline.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from monitoring.metrics import REQUEST_DURATION_SECONDS, REQUESTS_TOTAL
from serving.rollout.gates import Window

ANNOTATION_BASELINE = "shepherd.io/rollout-baseline"


@dataclass(frozen=True)
class Counters:
    """Lifetime counters of one revision, as scraped."""

    ok: float = 0.0
    invalid: float = 0.0
    error: float = 0.0
    buckets: tuple[tuple[float, float], ...] = ()

    def series(self) -> dict[str, float]:
        """Every series of the revision by name (a latency bucket by its bound)."""
        buckets = {f"le={bound!r}": count for bound, count in self.buckets}
        return {"ok": self.ok, "invalid": self.invalid, "error": self.error, **buckets}

    def restarted_since(self, base: Counters) -> bool:
        """Whether the revision's process started again after `base` was scraped. A counter only goes
        down when its process restarts, and then every series of that process restarted with it (a
        series missing now counts as zero, as in a fresh process that has not served it yet)."""
        ours = self.series()
        return any(ours.get(name, 0.0) < value for name, value in base.series().items())

    def since(self, base: Counters) -> Counters:
        """What a window ending now starts from: `base`, or zero if the process restarted after it."""
        return Counters() if self.restarted_since(base) else base

    def minus(self, base: Counters) -> Window:
        """The window since `base`. After a restart of the revision (any of its series went down) the
        window counts from zero, for every series: what the new process served. Nothing is negative and
        errors never exceed requests."""
        start = self.since(base)
        start_buckets = dict(start.buckets)
        buckets = tuple((b, c - start_buckets.get(b, 0.0)) for b, c in self.buckets)
        # Invalid requests are the client's doing: they neither count for nor against the canary.
        return Window(
            requests=(self.ok - start.ok) + (self.error - start.error),
            errors=self.error - start.error,
            latency_buckets=buckets,
        )


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


def scrape(url: str, model: str, version: str) -> Counters:
    import httpx

    return parse(httpx.get(f"{url}/metrics", timeout=5).text, model, version)


def baseline_to_annotation(baseline: dict[str, Counters]) -> str:
    return json.dumps({role: asdict(c) for role, c in baseline.items()})


def baseline_from_annotation(text: str) -> dict[str, Counters]:
    raw = json.loads(text)
    return {
        role: Counters(c["ok"], c["invalid"], c["error"], tuple(tuple(b) for b in c["buckets"]))
        for role, c in raw.items()
    }
