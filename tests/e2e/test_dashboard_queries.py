"""Every dashboard query against a real Prometheus that scrapes a real predictor under traffic and
evaluates the committed rules; then the rollback path end to end: a canary that starts failing
reaches the webhook through a real Alertmanager.

Scrape and evaluation intervals are the production ones (5 s), so the measured time is the one
docs/alerts-and-dashboards.md promises.
"""

from __future__ import annotations

import time

import pytest

from monitoring import dashboards, metrics, rules
from tests.support.prometheus import grafana_expr
from tests.unit.test_dashboards import exprs, metric_names

PREDICTOR_FAMILIES = {
    metrics.REQUESTS_TOTAL,
    *(
        f"{h}_{s}"
        for h in (metrics.REQUEST_DURATION_SECONDS, metrics.PREDICTION_SCORE)
        for s in ("bucket", "sum", "count")
    ),
    metrics.ROWS_TOTAL,
    *rules.RECORDING_RULES,
}
NEEDS_A_CANARY = {rules.CANARY_P99_RATIO}  # the real churn predictor serves alone


def _wait(condition, timeout: float, what: str, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(every)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def _run(prom, target: dict, model: str) -> list:
    """The query as Grafana runs it: instant for instant targets, else a range over the last 2 minutes."""
    expr = grafana_expr(target["expr"], model)
    if target.get("instant"):
        return prom.query(expr)
    now = time.time()
    return prom.query_range(expr, now - 120, now, "15s")


@pytest.fixture(scope="module")
def scraped(monitoring_stack):
    """The stack once the rules have values for the real predictor and the canary rollout."""
    prom = monitoring_stack.prometheus
    for model in ("churn", "fraud"):
        _wait(
            lambda m=model: prom.query(f'{rules.REVISION_REQUESTS}{{model="{m}"}} > 0'),
            90,
            f"the recording rules to see {model}'s requests",
        )
    _wait(lambda: prom.query(f'{rules.CANARY_P99_RATIO}{{model="fraud"}}'), 30, "the canary p99 ratio")
    return monitoring_stack


def test_every_panel_query_runs_and_predictor_panels_show_data(scraped):
    prom = scraped.prometheus
    empty_for_churn, empty_for_all, ran = [], [], 0
    for dashboard in dashboards.DASHBOARDS:
        board = dashboards.build(dashboard)
        for panel in (p for p in board["panels"] if p["type"] != "row"):
            for target in panel["targets"]:
                where = f"{board['title']} / {panel['title']} [{target['refId']}]"
                names = metric_names(target["expr"])
                all_models = _run(prom, target, ".*")  # raises with Prometheus' error if it is refused
                churn = _run(prom, target, "churn")
                ran += 1
                if names <= PREDICTOR_FAMILIES:
                    if not all_models:
                        empty_for_all.append(where)
                    if not churn and not names & NEEDS_A_CANARY:
                        empty_for_churn.append(where)
        for annotation in board["annotations"]["list"]:
            if "expr" in annotation:
                now = time.time()
                prom.query_range(grafana_expr(annotation["expr"]), now - 3600, now, annotation["step"])
                ran += 1
    assert ran == sum(len(exprs(dashboards.build(d))) for d in dashboards.DASHBOARDS)  # none skipped
    assert not empty_for_all, f"no data with model=All: {empty_for_all}"
    assert not empty_for_churn, f"no data for the real predictor: {empty_for_churn}"


def test_the_model_variable_lists_the_served_models(scraped):
    variable = next(v for v in dashboards.build(dashboards.ROLLOUTS)["templating"]["list"] if v["name"] == "model")
    metric = variable["query"]["query"].removeprefix("label_values(").split(",")[0]
    found = {s["metric"]["model"] for s in scraped.prometheus.query(f"group by (model) ({metric})")}
    assert {"churn", "fraud"} <= found


def test_the_committed_rules_load_and_evaluate_cleanly(scraped):
    prom = scraped.prometheus

    def evaluated():
        groups = prom.rule_groups()
        return groups if all(r["health"] != "unknown" for g in groups for r in g["rules"]) else None

    groups = _wait(evaluated, 60, "every rule to be evaluated once")
    assert {g["name"] for g in groups} == {rules.GROUP_CANARY, rules.GROUP_DRIFT, rules.GROUP_SERVING}
    broken = [(r["name"], r.get("lastError")) for g in groups for r in g["rules"] if r["health"] != "ok"]
    assert not broken
    assert {g["name"]: g["interval"] for g in groups}[rules.GROUP_CANARY] == float(
        rules.CANARY_EVALUATION_INTERVAL.removesuffix("s")
    )


def test_a_failing_canary_reaches_the_webhook(scraped):
    prom, webhook, canary = scraped.prometheus, scraped.webhook, scraped.canary
    # Healthy first: enough canary requests to be judged, one evaluation past, nothing fired.
    _wait(lambda: prom.query(f'{rules.REVISION_REQUESTS}{{model="fraud", role="canary"}} >= 50'), 60, "a judged canary")
    time.sleep(6)
    assert not [a for a in prom.alerts() if a["labels"].get("model") == "fraud"], "a healthy canary raised an alert"
    assert not webhook.deliveries, [d.body for d in webhook.deliveries]

    canary.failing = True

    def rollback_for_fraud(delivery):
        return any(
            a["status"] == "firing"
            and a["labels"].get("alertname") == rules.CANARY_ERROR_RATE_HIGH
            and a["labels"].get("model") == "fraud"
            for a in delivery.body.get("alerts", [])
        )

    delivery = webhook.wait_for(rollback_for_fraud, timeout=60)
    assert delivery is not None, f"no rollback delivered; Prometheus alerts: {prom.alerts()}"
    # Speed is measured by `make bench` (benchmarks/rollback.py), not asserted here: shared machines are noisy.
    elapsed = delivery.at - canary.first_failure
    print(f"\nfirst failing response -> webhook: {elapsed:.1f} s (budget {rules.ROLLBACK_BUDGET_SECONDS} s)")

    assert delivery.authorization == "Bearer e2e-webhook-token"
    assert delivery.body["receiver"] == "shepherd-webhook"
    assert delivery.body["groupLabels"] == {"alertname": rules.CANARY_ERROR_RATE_HIGH, "model": "fraud"}
    alert = next(a for a in delivery.body["alerts"] if a["labels"]["alertname"] == rules.CANARY_ERROR_RATE_HIGH)
    assert {k: alert["labels"][k] for k in ("model", "version", "role", "severity", metrics.ALERT_ACTION_LABEL)} == {
        "model": "fraud",
        "version": "2",
        "role": "canary",
        "severity": "critical",
        metrics.ALERT_ACTION_LABEL: "rollback",
    }
    assert alert["annotations"]["runbook_url"] == f"{rules.RUNBOOK}#{rules.CANARY_ERROR_RATE_HIGH.lower()}"
    assert alert["annotations"]["summary"].startswith("fraud canary v2 fails ")

    # What on-call sees: the Rollouts dashboard's alert table lists it, Alertmanager holds it.
    board = dashboards.build(dashboards.ROLLOUTS)
    table = next(p for p in board["panels"] if p["title"] == "Firing Shepherd alerts")
    rows = _run(prom, table["targets"][0], "fraud")
    assert [r["metric"]["alertname"] for r in rows] == [rules.CANARY_ERROR_RATE_HIGH]
    held = [a["labels"]["alertname"] for a in scraped.alertmanager.alerts() if a["labels"].get("model") == "fraud"]
    assert rules.CANARY_ERROR_RATE_HIGH in held
