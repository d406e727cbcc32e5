"""Grafana dashboards: the committed JSON is what the generator writes; every panel tells on-call what
it shows (title, unit, description); every query names only metrics from monitoring/metrics.py or the
recording rules, and parses (promtool, offline). The queries run against a real Prometheus in
tests/e2e/test_dashboard_queries.py."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from monitoring import dashboards, metrics, rules
from tests.conftest import REPO
from tests.support.prometheus import grafana_expr, run_tool

DOC = REPO / "docs" / "alerts-and-dashboards.md"
HISTOGRAMS = (metrics.REQUEST_DURATION_SECONDS, metrics.PREDICTION_SCORE)
KNOWN = (
    {v for k, v in vars(metrics).items() if k.isupper() and isinstance(v, str) and v.startswith("shepherd_")}
    | {f"{h}_{suffix}" for h in HISTOGRAMS for suffix in ("bucket", "sum", "count")}
    | set(rules.RECORDING_RULES)
    | {"ALERTS", "up"}
)
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset"}


def metric_names(expr: str) -> set[str]:
    """The metric (and recording rule) names a PromQL expression selects."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # ranges, durations, $__rate_interval
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][\w:]*", expr):
        rest = expr[match.end() :].lstrip()
        if match.group() not in PROMQL_WORDS and not rest.startswith("("):
            names.add(match.group())
    return names


def all_dashboards() -> list[dict]:
    return [dashboards.build(d) for d in dashboards.DASHBOARDS]


def panels(board: dict) -> list[dict]:
    return [p for p in board["panels"] if p["type"] != "row"]


def exprs(board: dict) -> list[tuple[str, str]]:
    """(where, expr) for every panel target, annotation and variable query of a dashboard."""
    out = [(f"{board['title']} / {p['title']}", t["expr"]) for p in panels(board) for t in p["targets"]]
    out += [
        (f"{board['title']} / annotation {a['name']}", a["expr"]) for a in board["annotations"]["list"] if "expr" in a
    ]
    return out


def test_metric_names_finds_what_a_query_selects():
    """The checker itself: it must see through functions, matchers, ranges, grouping and numbers."""
    expr = 'sum by (le) (rate(foo_bucket{a="b,c"}[$__rate_interval])) / on (x) group_left bar:baz > 1e-05 and up'
    assert metric_names(expr) == {"foo_bucket", "bar:baz", "up"}
    assert metric_names("histogram_quantile(0.99, x)") == {"x"}
    assert metric_names("shepherd_made_up_total") - KNOWN == {"shepherd_made_up_total"}


def test_committed_dashboards_are_what_the_generator_writes(tmp_path):
    assert dashboards.main(["--output", str(tmp_path / "a"), "--helm-output", str(tmp_path / "b")]) == 0
    for dashboard in dashboards.DASHBOARDS:
        name = dashboards.filename(dashboard)
        generated = (tmp_path / "a" / name).read_text()
        for committed in (dashboards.DASHBOARDS_DIR / name, dashboards.HELM_DASHBOARDS_DIR / name):
            assert committed.read_text() == generated, f"{committed} is stale; regenerate with `make monitoring-assets`"
    committed = {p.name for p in dashboards.DASHBOARDS_DIR.glob("*.json")}
    assert committed == {dashboards.filename(d) for d in dashboards.DASHBOARDS}, "a dashboard file nobody generates"


@pytest.mark.parametrize("board", all_dashboards(), ids=lambda b: b["uid"])
def test_every_panel_says_what_it_shows(board):
    assert board["title"] in {"Shepherd / Rollouts", "Shepherd / Model health"}
    for panel in panels(board):
        where = f"{board['title']} / {panel.get('title')!r}"
        assert panel["title"].strip(), where
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{where}: no unit"
        # Written for someone woken at 3 a.m.: what it is, what normal looks like, what to do.
        assert len(panel["description"]) >= 120, f"{where}: the description is too thin to act on"
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
        assert panel["targets"], f"{where}: no query"
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"]), where


@pytest.mark.parametrize("board", all_dashboards(), ids=lambda b: b["uid"])
def test_queries_use_only_defined_metric_names(board):
    for where, expr in exprs(board):
        unknown = metric_names(expr) - KNOWN
        assert not unknown, f"{where}: {sorted(unknown)} not defined in monitoring/metrics.py or monitoring/rules.py"
    used = {name for _, expr in exprs(board) for name in metric_names(expr)}
    assert used & {metrics.REQUESTS_TOTAL, metrics.DRIFT_SHARE}, "the dashboard queries none of Shepherd's metrics"


def test_the_dashboards_cover_what_on_call_needs():
    used = {name for board in all_dashboards() for _, expr in exprs(board) for name in metric_names(expr)}
    needed = {
        metrics.ROLLOUT_PHASE,
        metrics.ROLLOUT_CANARY_PERCENT,
        metrics.ROLLOUT_GATE_VERDICT,
        metrics.ROLLOUT_TRANSITIONS_TOTAL,
        metrics.REQUESTS_TOTAL,
        rules.REVISION_ERROR_RATIO,
        rules.REVISION_P99,
        rules.CANARY_P99_RATIO,
        "ALERTS",
        metrics.DRIFT_SHARE,
        metrics.DRIFT_FEATURE_SCORE,
        f"{metrics.PREDICTION_SCORE}_bucket",
        metrics.ROWS_TOTAL,
    }
    assert needed <= used, f"not on any dashboard: {sorted(needed - used)}"


def test_every_query_parses(tmp_path):
    """promtool parses each query (template variables filled as Grafana fills them) as a recording rule."""
    queries = [(where, grafana_expr(expr, "churn")) for board in all_dashboards() for where, expr in exprs(board)]
    group = {
        "name": "dashboards",
        "rules": [{"record": f"dashboard:query:{i}", "expr": q} for i, (_, q) in enumerate(queries)],
    }
    path = tmp_path / "queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [group]}))
    result = run_tool("promtool", "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout
    # and a broken query does not parse (the check can fail)
    group["rules"].append({"record": "dashboard:query:broken", "expr": "sum by (model (rate(x[1m]))"})
    path.write_text(yaml.safe_dump({"groups": [group]}))
    assert run_tool("promtool", "check", "rules", str(path)).returncode != 0


@pytest.mark.parametrize("board", all_dashboards(), ids=lambda b: b["uid"])
def test_variables_layout_and_links(board):
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    model = variables["model"]
    assert model["query"]["query"] == f"label_values({metrics.REQUESTS_TOTAL}, model)"
    assert (model["includeAll"], model["multi"], model["allValue"]) == (True, True, ".*")
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    cells = set()
    for panel in board["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        area = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & area, f"{panel['title']!r} overlaps another panel"
        cells |= area
    assert json.loads(json.dumps(board)) == board  # plain JSON


def test_rollbacks_and_promotions_are_annotations():
    board = dashboards.build(dashboards.ROLLOUTS)
    names = {a["name"]: a for a in board["annotations"]["list"]}
    assert {"Promotions", "Rollbacks"} <= set(names)
    assert 'action="rollback"' in names["Rollbacks"]["expr"] and 'action="promote"' in names["Promotions"]["expr"]
    assert all(
        metric_names(names[n]["expr"]) == {metrics.ROLLOUT_TRANSITIONS_TOTAL} for n in ("Promotions", "Rollbacks")
    )


def test_the_alert_thresholds_are_drawn_where_the_alerts_compare():
    board = dashboards.build(dashboards.ROLLOUTS)
    lines = {
        p["targets"][0]["expr"].split("{")[0]: p["fieldConfig"]["defaults"]["thresholds"]["steps"][1]["value"]
        for p in panels(board)
        if "thresholds" in p["fieldConfig"]["defaults"]
    }
    assert lines[rules.REVISION_ERROR_RATIO] == rules.DEFAULT_THRESHOLDS.error_rate.max
    assert lines[rules.CANARY_P99_RATIO] == rules.DEFAULT_THRESHOLDS.latency_p99_ratio.max
    assert lines[rules.REVISION_REQUESTS] == rules.DEFAULT_THRESHOLDS.min_requests


def test_every_panel_is_explained_in_the_docs():
    doc = DOC.read_text()
    for board in all_dashboards():
        assert f"### {board['title']}" in doc
        for panel in panels(board):
            assert f"| {panel['title']} |" in doc, f"{board['title']} / {panel['title']!r} is not in {DOC.name}"
