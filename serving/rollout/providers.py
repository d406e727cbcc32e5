"""Metric providers behind one interface: what the canary and the champion did during the analysis
interval, and what the drift service says about the canary.

- `ScrapeProvider` (the embedded default): reads each revision's `/metrics` and the drift service's
  `/metrics` directly. Counters are lifetime totals, so the interval's window is the difference from a
  baseline taken when the interval began, kept on the InferenceService (annotation) so a restarted
  loop computes the same windows.
- `PrometheusProvider` (clusters, and the end-to-end test): PromQL over Prometheus' HTTP API;
  `increase(...[interval])` needs no baseline.

Both distinguish "no data" (a window with zero requests, a missing drift series: the gate is
inconclusive) from "query failed" (`MetricsUnavailable`: the loop holds and says why).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from monitoring.metrics import (
    DRIFT_FEATURE_SCORE,
    DRIFT_SHARE,
    REQUEST_DURATION_SECONDS,
    REQUESTS_TOTAL,
)
from serving.rollout import scrape
from serving.rollout.gates import Window

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
    canary: Window
    champion: Window
    baseline: dict | None = None  # lifetime counters to store for the next interval (scrape provider)


@dataclass(frozen=True)
class DriftReading:
    """The drift service's latest view of the canary; None where it has no result yet."""

    share_vs_training: float | None
    prediction_psi: float | None


class MetricsProvider(Protocol):
    def measure(
        self, model: str, revisions: dict[str, Revision], interval_seconds: float, baseline: dict | None
    ) -> Measurement: ...

    def drift(self, model: str, canary_version: str) -> DriftReading: ...


class ScrapeProvider:
    """Each revision's `/metrics`, and the drift service's, read directly."""

    def __init__(self, drift_metrics_url: str | None = None, timeout: float = 5):
        self.drift_metrics_url = drift_metrics_url
        self.timeout = timeout

    def _get(self, url: str) -> str:
        import httpx

        try:
            response = httpx.get(url, timeout=self.timeout)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise MetricsUnavailable(f"scraping {url}: {exc}") from exc
        return response.text

    def measure(self, model, revisions, interval_seconds, baseline):
        current = {
            role: scrape.parse(self._get(f"{rev.url}/metrics"), model, rev.version) for role, rev in revisions.items()
        }
        base = baseline or {}
        canary = current["canary"].minus(base.get("canary", scrape.Counters()))
        champion = current["champion"].minus(base.get("champion", scrape.Counters()))
        return Measurement(canary, champion, current)

    def drift(self, model, canary_version):
        if not self.drift_metrics_url:
            return DriftReading(None, None)
        from prometheus_client.parser import text_string_to_metric_families

        share = psi = None
        for family in text_string_to_metric_families(self._get(self.drift_metrics_url)):
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
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise MetricsUnavailable(f"Prometheus at {self.url}: {exc}") from exc
        if body.get("status") != "success":
            raise MetricsUnavailable(f"Prometheus rejected {promql!r}: {body.get('error', response.text)}")
        return body["data"]["result"]

    def _window(self, model: str, rev: Revision, interval: str) -> Window:
        selector = f'model="{model}",version="{rev.version}",role="{rev.role}"'
        outcomes = {
            r["metric"].get("outcome"): float(r["value"][1])
            for r in self.query(f"sum by (outcome) (increase({REQUESTS_TOTAL}{{{selector}}}[{interval}]))")
        }
        buckets = sorted(
            (float(r["metric"]["le"]), float(r["value"][1]))
            for r in self.query(f"sum by (le) (increase({REQUEST_DURATION_SECONDS}_bucket{{{selector}}}[{interval}]))")
        )
        finite = [(b, c) for b, c in buckets if not math.isnan(c)]
        ok, error = outcomes.get("ok", 0.0), outcomes.get("error", 0.0)
        return Window(requests=ok + error, errors=error, latency_buckets=tuple(finite))

    def measure(self, model, revisions, interval_seconds, baseline):
        # At least two scrapes inside the range, or increase() has nothing to work with.
        interval = f"{max(int(interval_seconds), 10)}s"
        canary, champion = (self._window(model, revisions[role], interval) for role in ("canary", "champion"))
        if champion.requests == 0:
            # At 100 % the champion serves nothing: compare with what it served over the last hour.
            champion = self._window(model, revisions["champion"], "1h")
        return Measurement(canary, champion)

    def drift(self, model, canary_version):
        selector = f'model="{model}",version="{canary_version}",role="canary"'
        share = self.query(f'{DRIFT_SHARE}{{{selector},reference="training"}}')
        psi = self.query(f'{DRIFT_FEATURE_SCORE}{{{selector},reference="champion",feature="{PREDICTION_FEATURE}"}}')
        return DriftReading(float(share[0]["value"][1]) if share else None, float(psi[0]["value"][1]) if psi else None)
