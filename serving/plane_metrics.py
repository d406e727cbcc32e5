"""The local plane's `/metrics`: its own series plus every running revision's, in one exposition.

Each revision's `/metrics` is scraped when the plane's is, its samples get a `revision` label (as
Prometheus adds target labels), and families with one name are merged, so each family has one HELP
and one TYPE line. A revision that does not answer is left out and reported by
`shepherd_plane_revision_up{revision} 0`. Prometheus can still scrape each revision itself: the plane's
`/sd/predictors` lists them (HTTP service discovery).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from monitoring.metrics import PLANE_REQUESTS_TOTAL, PLANE_RESTARTS_TOTAL, PLANE_REVISION_UP, PLANE_UNAVAILABLE_TOTAL

logger = logging.getLogger("shepherd.plane.metrics")

REVISION_LABEL = "revision"
SCRAPE_TIMEOUT_SECONDS = 2.0


def outcome_of(status: int) -> str:
    """`ok` for 2xx/3xx, `invalid` for a client's mistake (4xx), `error` for a 5xx."""
    return "error" if status >= 500 else "invalid" if status >= 400 else "ok"


@dataclass
class PlaneMetrics:
    """The plane's own series, in their own registry."""

    registry: CollectorRegistry
    requests: Counter
    unavailable: Counter
    restarts: Counter

    @classmethod
    def create(cls) -> PlaneMetrics:
        registry = CollectorRegistry()
        ProcessCollector(registry=registry)  # the plane's own memory and CPU, next to the revisions'
        requests = Counter(
            PLANE_REQUESTS_TOTAL.removesuffix("_total"),
            "Prediction requests the plane's router answered, by the role of the revision and the outcome.",
            ["model", "role", "outcome"],
            registry=registry,
        )
        unavailable = Counter(
            PLANE_UNAVAILABLE_TOTAL.removesuffix("_total"),
            "Prediction requests no revision answered (gone or silent): the plane answered 503/504 itself.",
            ["model", "version", "role"],
            registry=registry,
        )
        restarts = Counter(
            PLANE_RESTARTS_TOTAL.removesuffix("_total"),
            "Processes the plane restarted after they exited: a revision (by name) or the drift service.",
            ["component"],
            registry=registry,
        )
        return cls(registry, requests, unavailable, restarts)

    def count(self, model: str, version: str, role: str, status: int, answered: bool = True) -> None:
        """One prediction request; `answered` False when no revision did (the plane's own 503/504)."""
        self.requests.labels(model=model, role=role, outcome=outcome_of(status)).inc()
        if not answered:
            self.unavailable.labels(model=model, version=version, role=role).inc()

    def router_exposition(self) -> bytes:
        """The plane's own series only (what the rollout loop reads next to each revision's)."""
        return generate_latest(self.registry)


class _Families(Collector):
    def __init__(self, families: list[Metric]):
        self.families = families

    def collect(self):
        return iter(self.families)


def merge(own: str, scraped: dict[str, str | None]) -> bytes:
    """One text exposition of the plane's own (`own`) and each revision's (`scraped`: revision name ->
    its exposition, or None if it did not answer), every revision sample labelled with its revision."""
    families: dict[str, Metric] = {}
    up = GaugeMetricFamily(PLANE_REVISION_UP, "1 if the revision's /metrics answered this scrape.", labels=["revision"])
    sources = [({}, own)]
    for revision, text in scraped.items():
        up.add_metric([revision], 0.0 if text is None else 1.0)
        if text is not None:
            sources.append(({REVISION_LABEL: revision}, text))
    for extra, text in sources:
        try:
            parsed = list(text_string_to_metric_families(text))
        except ValueError as exc:  # one revision's bad exposition must not hide the others
            logger.warning("unreadable /metrics of %s: %s", extra or "the plane", exc)
            continue
        for family in parsed:
            target = families.setdefault(
                family.name, Metric(family.name, family.documentation, family.type, family.unit)
            )
            if target.type != family.type:
                logger.warning("%s: a %s in %s, a %s elsewhere", family.name, family.type, extra, target.type)
                continue
            target.samples.extend(s._replace(labels={**s.labels, **extra}) for s in family.samples)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families([*families.values(), up]))
    return generate_latest(registry)


async def scrape(client, targets: dict[str, str]) -> dict[str, str | None]:
    """Each revision's `/metrics` (revision name -> base URL), concurrently; None where it failed."""

    async def one(url: str) -> str | None:
        try:
            response = await client.get(f"{url}/metrics", timeout=SCRAPE_TIMEOUT_SECONDS)
            return response.text if response.status_code == 200 else None
        except Exception:  # a revision going away while scraped
            return None

    texts = await asyncio.gather(*(one(url) for url in targets.values()))
    return dict(zip(targets, texts, strict=True))


async def exposition(metrics: PlaneMetrics, client, targets: dict[str, str]) -> bytes:
    scraped = await scrape(client, targets)
    own = generate_latest(metrics.registry).decode()  # parsed back like the revisions': one form to merge
    return await asyncio.to_thread(merge, own, scraped)
