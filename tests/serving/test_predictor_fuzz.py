"""Property-based fuzzing of a real predictor process over HTTP (tests/support/payload_fuzz.py): 5,000
generated requests per protocol, never a 5xx, every refusal `{"error": "<field>: <rule>"}`, valid
requests in between all answered, every answer counted, and no memory kept from any of it."""

from __future__ import annotations

import httpx
import pytest

from tests.support.payload_fuzz import FuzzReport, fuzz
from tests.support.predictor_process import running_predictor, sample

EXAMPLES = 5_000
WARMUP_EXAMPLES = 500
RSS_GROWTH_ALLOWED = 0.10
SERIES = 'shepherd_predictor_requests_total{{model="churn",outcome="{}",role="champion",version="1"}}'


@pytest.fixture(scope="module")
def predictor(registered_churn, tmp_path_factory):
    with running_predictor(
        registered_churn["tracking_uri"], "models:/churn@champion", tmp_path_factory.mktemp("fuzz")
    ) as running:
        yield running


def outcomes(client: httpx.Client) -> dict[str, float]:
    metrics = client.get("/metrics").text
    return {o: sample(metrics, SERIES.format(o)) for o in ("ok", "invalid", "error")}


def answered(report: FuzzReport) -> dict[str, float]:
    """The outcomes the server should have counted for what `report` saw."""
    counted = {"ok": report.valid_sent, "invalid": 0, "error": 0}
    for status, n in report.statuses.items():
        counted["ok" if status < 400 else "invalid" if status < 500 else "error"] += n
    return counted


@pytest.mark.timeout(600)
@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_generated_requests_never_get_a_5xx_and_leave_no_memory(predictor, churn_spec, protocol):
    with httpx.Client(base_url=predictor.base_url, timeout=30) as client:
        # Warm up on other generated requests (another seed): first-time paths allocate for good.
        fuzz(predictor.base_url, churn_spec, "churn", protocol, WARMUP_EXAMPLES, client, seed=1)
        warm_rss = predictor.rss_kib()
        before = outcomes(client)

        report = fuzz(predictor.base_url, churn_spec, "churn", protocol, EXAMPLES, client, seed=0)

        assert report.sent >= EXAMPLES
        assert report.valid_sent >= EXAMPLES // 20
        assert not [s for s in report.statuses if s >= 500], report.statuses
        # Both kinds of answers were exercised, not only refusals.
        assert report.statuses.get(200, 0) >= EXAMPLES // 20 and report.statuses.get(400, 0) >= EXAMPLES // 2
        after = outcomes(client)
        assert {o: after[o] - before[o] for o in after} == answered(report)
    rss = predictor.rss_kib()
    assert rss <= warm_rss * (1 + RSS_GROWTH_ALLOWED), f"RSS grew from {warm_rss} KiB warm to {rss} KiB"
