"""Rollout gates in the style of Flagger: each returns pass, fail or inconclusive with a reason a
person can read. "No data" is inconclusive (hold), never a pass; thresholds may be ranges.

Each gate reads its own source. A source that cannot be read ("query failed", not "no data") is
passed in as `Unavailable`: that gate is inconclusive and says why, and the other gates still judge,
so a failing error rate rolls the canary back whatever the drift service or Prometheus are doing."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class GateResult:
    gate: str
    verdict: Verdict
    reason: str
    value: float | None = None


@dataclass(frozen=True)
class Unavailable:
    """A gate's source could not be read: what (`source`) and why (`error`)."""

    source: str  # e.g. "the drift service", "the canary's request counters"
    error: str  # e.g. "scraping http://127.0.0.1:8080/drift/metrics: HTTP 500 Internal Server Error"

    def __str__(self) -> str:
        return f"no verdict: {self.source} could not be read ({self.error})"


def _unread(gate: str, *sources) -> GateResult | None:
    """The gate's inconclusive result if any of its sources could not be read, else None."""
    missing = list(dict.fromkeys(s for s in sources if isinstance(s, Unavailable)))  # each source once
    if not missing:
        return None
    return GateResult(gate, Verdict.INCONCLUSIVE, "; ".join(str(s) for s in missing))


@dataclass(frozen=True)
class Window:
    """What one revision did during the analysis interval (deltas, not lifetime totals)."""

    requests: float
    errors: float  # 5xx: the server's failures; a client's 4xx is not the canary's fault
    # (upper bound, cumulative count), +Inf last; Unavailable when the histogram could not be read
    latency_buckets: tuple[tuple[float, float], ...] | Unavailable = ()

    def quantile(self, q: float) -> float | None:
        """Prometheus' histogram_quantile over the window's buckets (linear within a bucket)."""
        if isinstance(self.latency_buckets, Unavailable):
            return None
        if not self.latency_buckets or self.latency_buckets[-1][1] <= 0:
            return None
        total = self.latency_buckets[-1][1]
        rank = q * total
        lower_bound, lower_count = 0.0, 0.0
        for bound, count in self.latency_buckets:
            if count >= rank:
                if math.isinf(bound):
                    return lower_bound  # as Prometheus: the highest finite bound
                if count == lower_count:
                    return bound
                return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
            lower_bound, lower_count = bound, count
        return lower_bound


@dataclass(frozen=True)
class Threshold:
    """An allowed range; either end may be open."""

    min: float | None = None
    max: float | None = None

    def check(self, value: float) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)

    def __str__(self) -> str:
        if self.min is not None and self.max is not None:
            return f"within [{self.min:g}, {self.max:g}]"
        return f"≤ {self.max:g}" if self.max is not None else f"≥ {self.min:g}"


def error_rate(canary: Window | Unavailable, threshold: Threshold, min_requests: int) -> GateResult:
    """Share of the canary's requests that failed on the server side."""
    if unread := _unread("error_rate", canary):
        return unread
    if canary.requests < min_requests:
        return GateResult(
            "error_rate",
            Verdict.INCONCLUSIVE,
            f"canary served {canary.requests:.0f} requests, fewer than the {min_requests} needed",
        )
    rate = canary.errors / canary.requests
    verdict = Verdict.PASS if threshold.check(rate) else Verdict.FAIL
    return GateResult(
        "error_rate",
        verdict,
        f"canary error rate {rate:.2%} ({canary.errors:.0f}/{canary.requests:.0f}), allowed {threshold}",
        rate,
    )


def latency_ratio(
    canary: Window | Unavailable,
    champion: Window | Unavailable,
    threshold: Threshold,
    min_requests: int,
    quantile: float = 0.99,
    floor_seconds: float = 0.0,
) -> GateResult:
    """The canary's p99 latency relative to the champion's over the same interval. Above the range's max
    it fails only if the canary's p99 is also above `floor_seconds` (milliseconds are noise, not a
    regression); below the range's min it fails whatever the floor (too fast: not doing the work?)."""
    name = f"latency_p{round(quantile * 100)}_ratio"
    if unread := _unread(name, canary, champion):
        return unread
    if canary.requests < min_requests or champion.requests < min_requests:
        return GateResult(
            name,
            Verdict.INCONCLUSIVE,
            f"too few requests to compare latency "
            f"(canary {canary.requests:.0f}, champion {champion.requests:.0f}; need {min_requests})",
        )
    if unread := _unread(name, canary.latency_buckets, champion.latency_buckets):
        return unread
    ours, theirs = canary.quantile(quantile), champion.quantile(quantile)
    if ours is None or theirs is None or theirs <= 0:
        return GateResult(name, Verdict.INCONCLUSIVE, "no latency histogram for one of the revisions")
    ratio = ours / theirs
    measured = f"canary p{round(quantile * 100)} {ours * 1000:.1f} ms vs champion {theirs * 1000:.1f} ms = {ratio:.2f}x"
    too_slow = threshold.max is not None and ratio > threshold.max
    if too_slow and ours <= floor_seconds:
        return GateResult(
            name, Verdict.PASS, f"{measured}, under the {floor_seconds * 1000:g} ms floor where ratios are noise", ratio
        )
    verdict = Verdict.PASS if threshold.check(ratio) else Verdict.FAIL
    return GateResult(name, verdict, f"{measured}, allowed {threshold}", ratio)


def drift_share(share: float | Unavailable | None, threshold: Threshold) -> GateResult:
    """Share of the canary's input features whose distribution moved from the training reference."""
    if unread := _unread("drift_share", share):
        return unread
    if share is None:
        return GateResult(
            "drift_share", Verdict.INCONCLUSIVE, "the drift service has no result for the canary yet (too few rows)"
        )
    verdict = Verdict.PASS if threshold.check(share) else Verdict.FAIL
    return GateResult(
        "drift_share",
        verdict,
        f"{share:.0%} of the canary's features drifted from training, allowed {threshold}",
        share,
    )


def prediction_psi(psi: float | Unavailable | None, threshold: Threshold) -> GateResult:
    """How far the canary's predicted probabilities moved from the champion's (PSI over the same traffic)."""
    if unread := _unread("prediction_psi", psi):
        return unread
    if psi is None:
        return GateResult(
            "prediction_psi",
            Verdict.INCONCLUSIVE,
            "the drift service has no canary-vs-champion comparison yet (too few rows)",
        )
    verdict = Verdict.PASS if threshold.check(psi) else Verdict.FAIL
    return GateResult(
        "prediction_psi", verdict, f"canary predictions vs champion PSI {psi:.3f}, allowed {threshold}", psi
    )


@dataclass(frozen=True)
class QualityReading:
    """One revision's live quality: its labelled predictions and their metrics (from the drift service)."""

    labelled: int
    metrics: dict[str, float]


def quality(
    canary: QualityReading | Unavailable | None,
    champion: QualityReading | Unavailable | None,
    max_regression: dict[str, float],
    min_labels: int,
) -> GateResult:
    """The canary's live quality against the champion's, each on the labelled predictions it served:
    inconclusive until both have `min_labels`; fails when the canary is worse by more than allowed."""
    from components.spec import higher_is_better

    if unread := _unread("quality", canary, champion):
        return unread
    have = {"canary": canary.labelled if canary else 0, "champion": champion.labelled if champion else 0}
    if min(have.values()) < min_labels:
        return GateResult(
            "quality",
            Verdict.INCONCLUSIVE,
            f"too few labelled predictions to compare quality (canary {have['canary']}, champion "
            f"{have['champion']}; need {min_labels}): labels come back with `shepherd feedback`",
        )
    worse, fine, undefined = [], [], []
    for metric, allowed in sorted(max_regression.items()):
        ours, theirs = canary.metrics.get(metric), champion.metrics.get(metric)
        if ours is None or theirs is None:
            undefined.append(metric)
            continue
        worse_by = theirs - ours if higher_is_better(metric) else ours - theirs
        text = f"{metric} {ours:.3f} vs champion {theirs:.3f}"
        if worse_by > allowed + 1e-9:  # a boundary value written in the spec is allowed, float noise or not
            worse.append((worse_by - allowed, f"{text}: worse by {worse_by:.3f}, allowed {allowed:g}"))
        else:
            fine.append(text)
    on = f"on {have['canary']} and {have['champion']} labelled predictions"
    if worse:
        worst = max(worse)[0]
        return GateResult("quality", Verdict.FAIL, "canary " + "; ".join(t for _, t in worse) + f" ({on})", worst)
    if undefined:  # never promote on a metric that could not be computed
        return GateResult(
            "quality",
            Verdict.INCONCLUSIVE,
            f"{', '.join(undefined)} not defined on the labelled predictions yet (one class only?)",
        )
    reason = "canary " + "; ".join(fine) + f", within the allowed regression ({on})"
    return GateResult("quality", Verdict.PASS, reason, 0.0)
