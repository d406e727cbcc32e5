"""Metric providers behind one interface: what the canary and the champion did during the analysis
interval, and what the drift service says about the canary.

- `ScrapeProvider` (the embedded default): reads each revision's `/metrics` and the drift service's
  `/metrics` directly, and the local plane's count of requests a revision never answered (its process
  was gone), which are that revision's errors. Counters are lifetime totals, so the interval's window
  is the difference from a baseline taken when the interval began, kept on the InferenceService
  (annotation) so a restarted loop computes the same windows.
- `PrometheusProvider` (clusters, and the end-to-end test): PromQL over Prometheus' HTTP API;
  `increase(...[interval])` needs no baseline.

Both distinguish "no data" (a window with zero requests, a missing drift series: the gate is
inconclusive) from "query failed". A query that fails makes only the windows it feeds `Unavailable`
(the canary's counters, the champion's, a latency histogram); `drift` raises `MetricsUnavailable`.
Either way only the gates reading that source are inconclusive: the others still judge the canary.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace
from typing import Protocol

from monitoring.metrics import (
    DRIFT_FEATURE_SCORE,
    DRIFT_SHARE,
    QUALITY,
    QUALITY_LABELLED_ROWS,
    REQUEST_DURATION_SECONDS,
    REQUESTS_TOTAL,
)
from serving.rollout import scrape
from serving.rollout.gates import QualityReading, Unavailable, Window

PREDICTION_FEATURE = "prediction"  # the drift service's column for the predicted probability


class MetricsUnavailable(RuntimeError):
    """The metric source could not be read (as opposed to: it has no data yet)."""


@dataclass(frozen=True)
class Revision:
    role: str  # champion | canary
    version: str
    url: str | None = None  # where the revision serves (the scrape provider reads its /metrics)


@dataclass(frozen=True)
class Measurement:
    canary: Window | Unavailable
    champion: Window | Unavailable
    baseline: dict | None = None  # lifetime counters to store for the next interval (scrape provider)
    # What this interval's windows were counted from (scrape provider): the stored baseline, with zero
    # for a revision that restarted since. Stored when it changes, so the window keeps counting from the
    # restart (the new process's counters may later pass the old baseline, and hide the restart).
    since: dict | None = None


@dataclass(frozen=True)
class DriftReading:
    """The drift service's latest view of the canary; None where it has no result yet."""

    share_vs_training: float | None
    prediction_psi: float | None


class MetricsProvider(Protocol):
    def measure(
        self, model: str, revisions: dict[str, Revision], interval_seconds: float, baseline: dict | None
    ) -> Measurement:
        """The interval's window of each role; a role (or its latency histogram) whose source cannot be
        read is `Unavailable`. Raising `MetricsUnavailable` makes both roles unavailable."""

    def drift(self, model: str, canary_version: str) -> DriftReading:
        """The drift service's view of the canary; `MetricsUnavailable` when it cannot be read."""

    def quality(self, model: str, versions: dict[str, str]) -> dict[str, QualityReading | None]:
        """Live quality of each role's version (`versions`: role -> version); None where the drift service
        has scored no labelled predictions of it; `MetricsUnavailable` when it cannot be read."""


def quality_readings(samples, model: str, versions: dict[str, str]) -> dict[str, QualityReading | None]:
    """Each role's QualityReading from (name, labels, value) samples of the quality gauges."""
    metrics: dict[str, dict[str, float]] = {role: {} for role in versions}
    labelled: dict[str, float] = {}
    for name, labels, value in samples:
        role = labels.get("role")
        if labels.get("model") != model or role not in versions or labels.get("version") != versions[role]:
            continue
        if name == QUALITY and labels.get("metric"):
            metrics[role][labels["metric"]] = value
        elif name == QUALITY_LABELLED_ROWS:
            labelled[role] = value
    return {role: QualityReading(int(labelled[role]), metrics[role]) if role in labelled else None for role in versions}


class ScrapeProvider:
    """Each revision's `/metrics`, and the drift service's, read directly."""

    def __init__(self, drift_metrics_url: str | None = None, timeout: float = 5, router_metrics_url: str | None = None):
        self.drift_metrics_url = drift_metrics_url
        self.router_metrics_url = router_metrics_url  # the local plane's own series
        self.timeout = timeout

    def _get(self, url: str) -> str:
        import httpx

        try:
            response = httpx.get(url, timeout=self.timeout)
        except httpx.HTTPError as exc:
            raise MetricsUnavailable(f"scraping {url}: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise MetricsUnavailable(f"scraping {url}: HTTP {response.status_code} {response.reason_phrase}")
        return response.text

    def _counters(self, model: str, rev: Revision | None, role: str) -> scrape.Counters:
        if rev is None or not rev.url:
            raise MetricsUnavailable(f"the InferenceService's status has no URL for the {role} yet")
        url = f"{rev.url}/metrics"
        text = self._get(url)
        try:
            return scrape.parse(text, model, rev.version)
        except ValueError as exc:  # not a Prometheus exposition (a proxy's error page, a truncated body)
            raise MetricsUnavailable(f"scraping {url}: not Prometheus' text format ({exc})") from exc

    def _router(self) -> str | None:
        """The router's own exposition, or None (no router, or it cannot be read: nothing added)."""
        if not self.router_metrics_url:
            return None
        try:
            return self._get(self.router_metrics_url)
        except MetricsUnavailable:
            return None

    def measure(self, model, revisions, interval_seconds, baseline):
        """Each revision's window from its own scrape: one that cannot be read leaves the other's intact.
        A revision that cannot be read while the router answered 503 in its place gets a window of
        those failures alone."""
        base = baseline or {}
        windows: dict[str, Window | Unavailable] = {}
        current: dict[str, scrape.Counters] = {}
        since = dict(base)
        router = self._router()
        for role in ("canary", "champion"):
            rev, start_of_step = revisions.get(role), base.get(role, scrape.Counters())
            unavailable = start_of_step.unavailable  # unknown: counted as unchanged
            if router is not None and rev is not None:
                with contextlib.suppress(ValueError):  # an unreadable exposition adds nothing
                    unavailable = scrape.parse_unavailable(router, model, rev.version, role)
            try:
                counters = replace(self._counters(model, rev, role), unavailable=unavailable)
            except MetricsUnavailable as exc:
                if router is not None and role in base:
                    gone = scrape.Counters(unavailable=unavailable).unanswered_since(start_of_step)
                    latency = Unavailable(f"the {role}'s latency histogram", str(exc))
                    windows[role] = Window(requests=gone, errors=gone, latency_buckets=latency)
                else:
                    windows[role] = Unavailable(f"the {role}'s request counters", str(exc))
                continue
            start = counters.since(base.get(role, scrape.Counters()))
            windows[role], current[role] = counters.minus(start), counters
            if role in base:
                since[role] = start
        # A revision that could not be read keeps its old baseline: its next window spans more time
        # rather than starting from an unknown point.
        return Measurement(
            windows["canary"],
            windows["champion"],
            baseline={**base, **current},
            since=since if baseline is not None else None,
        )

    def drift(self, model, canary_version):
        if not self.drift_metrics_url:
            return DriftReading(None, None)
        from prometheus_client.parser import text_string_to_metric_families

        text = self._get(self.drift_metrics_url)
        try:
            families = list(text_string_to_metric_families(text))
        except ValueError as exc:
            raise MetricsUnavailable(f"scraping {self.drift_metrics_url}: not Prometheus' text format ({exc})") from exc
        share = psi = None
        for family in families:
            for s in family.samples:
                labels = s.labels
                if labels.get("model") != model or labels.get("version") != canary_version:
                    continue
                if labels.get("role") != "canary":
                    continue
                if s.name == DRIFT_SHARE and labels.get("reference") == "training":
                    share = s.value
                elif (
                    s.name == DRIFT_FEATURE_SCORE
                    and labels.get("reference") == "champion"
                    and labels.get("feature") == PREDICTION_FEATURE
                ):
                    psi = s.value
        return DriftReading(share, psi)

    def quality(self, model, versions):
        if not self.drift_metrics_url:
            return dict.fromkeys(versions)
        from prometheus_client.parser import text_string_to_metric_families

        text = self._get(self.drift_metrics_url)
        try:
            samples = [(s.name, s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples]
        except ValueError as exc:
            raise MetricsUnavailable(f"scraping {self.drift_metrics_url}: not Prometheus' text format ({exc})") from exc
        return quality_readings(samples, model, versions)


class PrometheusProvider:
    """PromQL over the Prometheus HTTP API."""

    def __init__(self, url: str, timeout: float = 10):
        self.url = url.rstrip("/")
        self.timeout = timeout

    def query(self, promql: str) -> list[dict]:
        """An instant query's result vector; raises MetricsUnavailable when Prometheus cannot answer."""
        import httpx

        try:
            response = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=self.timeout)
        except httpx.HTTPError as exc:
            raise MetricsUnavailable(f"Prometheus at {self.url}: {type(exc).__name__}: {exc}") from exc
        try:
            body = response.json()
        except ValueError as exc:  # not Prometheus answering: a proxy's error page, say
            status = f"HTTP {response.status_code} {response.reason_phrase}"
            raise MetricsUnavailable(f"Prometheus at {self.url}: {status}, not a JSON answer") from exc
        if not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error", response.text) if isinstance(body, dict) else response.text
            raise MetricsUnavailable(f"Prometheus rejected {promql!r}: {error}")
        try:
            return list(body["data"]["result"])
        except (KeyError, TypeError) as exc:
            raise MetricsUnavailable(f"Prometheus answered {promql!r} without a result: {exc!r}") from exc

    def values(self, promql: str, label: str | None = None) -> list[tuple[str | None, float]]:
        """(value of `label`, sample value) for each series of an instant query's result."""
        result = self.query(promql)
        try:
            return [(r["metric"].get(label) if label else None, float(r["value"][1])) for r in result]
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise MetricsUnavailable(f"Prometheus answered {promql!r} with an unexpected result: {exc!r}") from exc

    def _window(self, model: str, rev: Revision | None, role: str, interval: str) -> Window | Unavailable:
        """The revision's window: the request counts and the latency histogram are read (and may fail) apart,
        so a histogram query that times out leaves the error-rate gate its counts."""
        if rev is None:
            return Unavailable(f"the {role}'s request counters", f"the InferenceService names no {role} version")
        selector = f'model="{model}",version="{rev.version}",role="{role}"'
        try:
            outcomes = dict(
                self.values(f"sum by (outcome) (increase({REQUESTS_TOTAL}{{{selector}}}[{interval}]))", "outcome")
            )
        except MetricsUnavailable as exc:
            return Unavailable(f"the {role}'s request counters", str(exc))
        latency: tuple[tuple[float, float], ...] | Unavailable
        try:
            buckets = self.values(
                f"sum by (le) (increase({REQUEST_DURATION_SECONDS}_bucket{{{selector}}}[{interval}]))", "le"
            )
            latency = tuple(sorted((float(le), c) for le, c in buckets if not math.isnan(c)))
        except (MetricsUnavailable, TypeError, ValueError) as exc:
            latency = Unavailable(f"the {role}'s latency histogram", str(exc))
        ok, error = outcomes.get("ok", 0.0), outcomes.get("error", 0.0)
        return Window(requests=ok + error, errors=error, latency_buckets=latency)

    def measure(self, model, revisions, interval_seconds, baseline):
        # At least two scrapes inside the range, or increase() has nothing to work with.
        interval = f"{max(int(interval_seconds), 10)}s"
        canary, champion = (self._window(model, revisions.get(role), role, interval) for role in ("canary", "champion"))
        if isinstance(champion, Window) and champion.requests == 0:
            # At 100 % the champion serves nothing: compare with what it served over the last hour.
            champion = self._window(model, revisions.get("champion"), "champion", "1h")
        return Measurement(canary, champion)

    def drift(self, model, canary_version):
        selector = f'model="{model}",version="{canary_version}",role="canary"'
        share = self.values(f'{DRIFT_SHARE}{{{selector},reference="training"}}')
        psi = self.values(f'{DRIFT_FEATURE_SCORE}{{{selector},reference="champion",feature="{PREDICTION_FEATURE}"}}')
        return DriftReading(share[0][1] if share else None, psi[0][1] if psi else None)

    def quality(self, model, versions):
        samples = []
        for name in (QUALITY, QUALITY_LABELLED_ROWS):
            for series in self.query(f'{name}{{model="{model}"}}'):
                try:
                    samples.append((name, series["metric"], float(series["value"][1])))
                except (KeyError, IndexError, TypeError, ValueError) as exc:
                    raise MetricsUnavailable(f"Prometheus answered {name} with an unexpected result: {exc!r}") from exc
        return quality_readings(samples, model, versions)
