"""Prometheus rules and the Alertmanager config, checked by the real tools: `promtool check rules`,
`promtool test rules` (every alert firing and not firing, thresholds on their boundary), `amtool
check-config` and `amtool config routes test`. Each tool is also shown to fail on a wrong input, so
these tests can fail."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import yaml

from components.spec import Deployment, Gates, Range
from monitoring import alertmanager, rules
from monitoring.metrics import ALERT_ACTION_LABEL, ALERT_ACTIONS
from serving.inference_service import ANNOTATION_POLICY, build_inference_service
from serving.rollout.machine import Policy
from tests.conftest import REPO
from tests.support.prometheus import run_tool

RULES_DIR = REPO / "monitoring" / "rules"
PROMTOOL_TESTS = RULES_DIR / "shepherd.rules.test.yaml"
DOC = REPO / "docs" / "alerts-and-dashboards.md"
REGENERATE = "regenerate with `make monitoring-assets`"


def _alerts(groups: list[dict]) -> list[dict]:
    return [r for g in groups for r in g["rules"] if "alert" in r]


def _seconds(duration: str) -> float:
    return sum(
        float(n) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[u] for n, u in re.findall(r"(\d+)(ms|s|m|h)", duration)
    )


def test_committed_rule_files_are_what_the_generator_writes(tmp_path):
    out, helm = tmp_path / "rules.yaml", tmp_path / "helm.yaml"
    assert rules.main(["--output", str(out), "--helm-output", str(helm)]) == 0
    assert rules.RULES_FILE.read_text() == out.read_text(), f"{rules.RULES_FILE} is stale; {REGENERATE}"
    assert rules.HELM_RULES_FILE.read_text() == helm.read_text(), f"{rules.HELM_RULES_FILE} is stale; {REGENERATE}"
    assert list(yaml.safe_load(helm.read_text())) == ["groups"]  # what the chart's PrometheusRule embeds


def test_promtool_accepts_the_rules():
    result = run_tool("promtool", "check", "rules", str(rules.RULES_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    count = sum(len(g["rules"]) for g in yaml.safe_load(rules.RULES_FILE.read_text())["groups"])
    assert f"SUCCESS: {count} rules found" in result.stdout


def test_promtool_unit_tests_pass():
    """Each alert firing and silent: healthy canaries, thresholds on their boundary (the gate passes at
    equality), the request and row guards, champion drift -> retrain, resolved after a rollback."""
    result = run_tool("promtool", "test", "rules", str(PROMTOOL_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    tested = {
        t["alertname"]
        for case in yaml.safe_load(PROMTOOL_TESTS.read_text())["tests"]
        for t in case.get("alert_rule_test", [])
    }
    assert tested == set(rules.ALERTS)


def test_a_wrong_expectation_makes_promtool_fail(tmp_path):
    """Proof the promtool tests can fail: expect the boundary case (exactly 1 % errors) to fire."""
    shutil.copy(rules.RULES_FILE, tmp_path / rules.RULES_FILE.name)
    suite = yaml.safe_load(PROMTOOL_TESTS.read_text())
    first = suite["tests"][0]["alert_rule_test"][0]
    assert first["alertname"] == rules.CANARY_ERROR_RATE_HIGH
    first["exp_alerts"].append({"exp_labels": {"model": "loans", "version": "7", "role": "canary"}})
    (tmp_path / "wrong.test.yaml").write_text(yaml.safe_dump(suite))
    result = run_tool("promtool", "test", "rules", str(tmp_path / "wrong.test.yaml"))
    assert result.returncode != 0
    assert "FAILED" in result.stdout + result.stderr and 'model="loans"' in result.stdout + result.stderr


def test_the_promtool_tests_pin_the_thresholds(tmp_path):
    """Rules generated with another error-rate limit (3 %) fail the committed tests: the 2 % canary
    no longer fires."""
    loose = {"churn": Deployment(gates=Gates(error_rate=Range(max=0.03)))}
    # Every model of the test file gets the loose gate: it is the default group's threshold now.
    groups = rules.rule_groups()
    groups[0]["rules"] = rules.recording_rules() + rules.canary_alerts(
        rules.CanaryThresholds.of(loose["churn"]), "", rules.RUNBOOK
    )
    (tmp_path / rules.RULES_FILE.name).write_text(rules.render(groups))
    shutil.copy(PROMTOOL_TESTS, tmp_path / PROMTOOL_TESTS.name)
    result = run_tool("promtool", "test", "rules", str(tmp_path / PROMTOOL_TESTS.name))
    assert result.returncode != 0
    assert rules.CANARY_ERROR_RATE_HIGH in result.stdout + result.stderr


def test_thresholds_are_the_ones_the_rollout_loop_reads(churn_spec):
    """The alert thresholds come from the policy annotation the loop itself reads off the object."""
    obj = build_inference_service(churn_spec, "2", champion_version="1", canary_percent=10)
    policy = Policy.from_annotation(obj["metadata"]["annotations"][ANNOTATION_POLICY])
    thresholds = rules.CanaryThresholds.of(churn_spec.deployment)
    assert thresholds.error_rate == policy.gates["error_rate"]
    assert thresholds.latency_p99_ratio == policy.gates["latency_p99_ratio"]
    assert thresholds.min_requests == policy.min_requests
    assert thresholds.drift_share == policy.gates["drift_share"]
    assert thresholds.prediction_psi == policy.gates["prediction_psi"]

    committed = {r["alert"]: r["expr"] for r in _alerts(yaml.safe_load(rules.RULES_FILE.read_text())["groups"])}
    assert f"> {policy.gates['error_rate'].max!r}" in committed[rules.CANARY_ERROR_RATE_HIGH]
    assert f"> {policy.gates['latency_p99_ratio'].max!r}" in committed[rules.CANARY_LATENCY_HIGH]
    assert f">= {policy.min_requests}" in committed[rules.CANARY_ERROR_RATE_HIGH]


def _counter(model: str, role: str, outcome: str, per_step: int) -> dict:
    version = "2" if role == "canary" else "1"
    name = (
        f'shepherd_predictor_requests_total{{model="{model}", version="{version}", role="{role}", outcome="{outcome}"}}'
    )
    return {"series": name, "values": f"0+{per_step}x20"}


def _buckets(model: str, role: str, counts: dict[str, int]) -> list[dict]:
    """Cumulative latency buckets growing by `counts[le]` per scrape."""
    version = "2" if role == "canary" else "1"
    name = 'shepherd_predictor_request_duration_seconds_bucket{model="%s", version="%s", role="%s", le="%s"}'
    return [{"series": name % (model, version, role, le), "values": f"0+{n}x20"} for le, n in counts.items()]


SLOW = {"0.001": 0, "0.005": 0, "0.01": 50, "+Inf": 50}  # every request in 5-10 ms: p99 9.95 ms
FAST = {"0.001": 50, "0.005": 50, "0.01": 50, "+Inf": 50}  # every request within 1 ms: p99 0.99 ms


def _fired(groups: list[dict], alertname: str, model: str, value: str) -> dict:
    """A canary alert as promtool must see it: labels, and the annotations expanded for `value`."""
    own = f'model=~"{model}"'
    rule = next(r for r in _alerts(groups) if r["alert"] == alertname and (own in r["expr"]) == (model == "fraud"))

    def expand(text: str) -> str:
        text = text.replace("{{ $labels.model }}", model).replace("{{ $labels.version }}", "2")
        return text.replace("{{ $value | humanizePercentage }}", value).replace('{{ $value | printf "%.2f" }}', value)

    labels = {"model": model, "version": "2", "role": "canary", "severity": "critical", ALERT_ACTION_LABEL: "rollback"}
    labels[rules.THRESHOLDS_LABEL] = model if model == "fraud" else rules.DEFAULTS
    return {"exp_labels": labels, "exp_annotations": {k: expand(v) for k, v in rule["annotations"].items()}}


def test_a_model_with_its_own_gates_gets_its_own_rules(tmp_path):
    """fraud's spec allows 5 % errors, judges from 10 requests and wants its p99 ratio within [0.5, 1.5];
    every other model keeps the defaults. promtool shows each model judged by its own thresholds."""
    fraud = Deployment(
        gates=Gates(error_rate=Range(max=0.05), latency_p99_ratio=Range(min=0.5, max=1.5)), min_requests=10
    )
    groups = rules.rule_groups({"fraud": fraud, "churn": Deployment()})
    exprs = [r["expr"] for r in _alerts(groups) if r["alert"] == rules.CANARY_ERROR_RATE_HIGH]
    assert len(exprs) == 2 and 'model!~"fraud"' in exprs[0] and 'model=~"fraud"' in exprs[1]
    assert "< 0.5" in next(r["expr"] for r in _alerts(groups) if 'model=~"fraud"' in r["expr"] and "p99" in r["expr"])
    (tmp_path / "own.rules.yaml").write_text(rules.render(groups))
    assert run_tool("promtool", "check", "rules", str(tmp_path / "own.rules.yaml")).returncode == 0

    error_rate, latency = rules.CANARY_ERROR_RATE_HIGH, rules.CANARY_LATENCY_HIGH
    suite = {
        "rule_files": ["own.rules.yaml"],
        "evaluation_interval": "5s",
        "tests": [
            {
                # 3 % errors: above churn's 1 %, within fraud's 5 %. `late` (defaults) fails every one of
                # its 12 requests per window: below the default guard of 50, silent.
                "interval": "5s",
                "input_series": [
                    _counter("churn", "canary", "ok", 97),
                    _counter("churn", "canary", "error", 3),
                    _counter("fraud", "canary", "ok", 97),
                    _counter("fraud", "canary", "error", 3),
                    _counter("late", "canary", "ok", 0),
                    _counter("late", "canary", "error", 2),
                ],
                "alert_rule_test": [
                    {
                        "alertname": error_rate,
                        "eval_time": "1m",
                        "exp_alerts": [_fired(groups, error_rate, "churn", "3%")],
                    }
                ],
            },
            {
                # The same 12 failing requests per window on fraud: enough for its guard of 10.
                "interval": "5s",
                "input_series": [_counter("fraud", "canary", "ok", 0), _counter("fraud", "canary", "error", 2)],
                "alert_rule_test": [
                    {
                        "alertname": error_rate,
                        "eval_time": "1m",
                        "exp_alerts": [_fired(groups, error_rate, "fraud", "100%")],
                    }
                ],
            },
            {
                # fraud's canary answers 10x *faster* than its champion (p99 0.99 ms vs 9.95 ms): below the
                # range's min of 0.5, a sign it is not doing the work. churn's, as fast, has no min: silent.
                "interval": "5s",
                "input_series": [
                    *(_counter(m, role, "ok", 50) for m in ("fraud", "churn") for role in ("champion", "canary")),
                    *_buckets("fraud", "champion", SLOW),
                    *_buckets("churn", "champion", SLOW),
                    *_buckets("fraud", "canary", FAST),
                    *_buckets("churn", "canary", FAST),
                ],
                "alert_rule_test": [
                    {"alertname": latency, "eval_time": "1m", "exp_alerts": [_fired(groups, latency, "fraud", "0.10")]}
                ],
            },
        ],
    }
    (tmp_path / "own.test.yaml").write_text(yaml.safe_dump(suite, sort_keys=False))
    result = run_tool("promtool", "test", "rules", str(tmp_path / "own.test.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_says_what_it_is_and_what_shepherd_does():
    groups = yaml.safe_load(rules.RULES_FILE.read_text())["groups"]
    anchors = {_slug(h) for h in re.findall(r"^#+ (.+)$", DOC.read_text(), flags=re.M)}
    seen = set()
    for rule in _alerts(groups):
        seen.add(rule["alert"])
        assert rule["labels"]["severity"] in {"critical", "warning"}
        assert rule["labels"][ALERT_ACTION_LABEL] in ALERT_ACTIONS
        assert "model" not in rule["labels"], "the model label comes from the series, never a constant"
        assert "{{ $labels.model }}" in rule["annotations"]["summary"]
        assert "{{ $labels.model }}" in rule["annotations"]["description"]
        if rule["alert"] != rules.NO_TRAFFIC:  # its value is always 0
            assert "$value" in rule["annotations"]["description"], f"{rule['alert']}: say what was measured"
        doc, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert doc == rules.RUNBOOK and anchor in anchors, f"{rule['alert']}: no section #{anchor} in {DOC.name}"
        # every aggregation keeps the model label, so the alert can say which model
        for grouping in re.findall(r"\bby \(([^)]*)\)", rule["expr"]):
            assert "model" in grouping, f"{rule['alert']}: `by ({grouping})` drops the model label"
    assert seen == set(rules.ALERTS)
    actions = {r["alert"]: r["labels"][ALERT_ACTION_LABEL] for r in _alerts(groups)}
    assert actions == {
        rules.CANARY_ERROR_RATE_HIGH: "rollback",
        rules.CANARY_LATENCY_HIGH: "rollback",
        rules.CANARY_DRIFT: "rollback",
        rules.CHAMPION_DRIFT: "retrain",
        rules.CHAMPION_QUALITY_BELOW_MINIMUM: "retrain",
        rules.CHAMPION_QUALITY_ABOVE_MAXIMUM: "retrain",
        rules.NO_TRAFFIC: "none",
        rules.PREDICTOR_DOWN: "none",
    }


def _slug(heading: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_the_rollback_path_fits_the_timing_budget():
    """Worst case from the first failing response to the webhook call, by the configured intervals."""
    group = next(g for g in rules.rule_groups() if g["name"] == rules.GROUP_CANARY)
    rollback_for = {r["for"] for r in group["rules"] if r.get("labels", {}).get(ALERT_ACTION_LABEL) == "rollback"}
    worst = (
        2 * _seconds(rules.SCRAPE_INTERVAL)  # a new revision: increase() needs two samples of it
        + _seconds(group["interval"])
        + max(_seconds(f) for f in rollback_for)
        + _seconds(alertmanager.DEFAULT_TIMING.group_wait)
        + 1.0  # Prometheus -> Alertmanager -> webhook over the network, and the webhook's own work
    )
    assert worst <= rules.ROLLBACK_BUDGET_SECONDS, f"worst case {worst:g} s > {rules.ROLLBACK_BUDGET_SECONDS} s"


def test_canary_drift_uses_the_drift_gates_and_champion_drift_the_module_default():
    spec = Deployment(gates=Gates(drift_share=Range(max=0.3), prediction_psi=Range(max=0.1)))
    groups = rules.rule_groups({"fraud": spec})
    canary = [r["expr"] for r in _alerts(groups) if r["alert"] == rules.CANARY_DRIFT and 'model=~"fraud"' in r["expr"]]
    assert canary == [
        'shepherd_drift_share{role="canary", reference="training", model=~"fraud"} > 0.3',
        'shepherd_drift_feature_score{role="canary", reference="champion", feature="prediction", model=~"fraud"} > 0.1',
    ]
    (champion,) = [r for r in _alerts(groups) if r["alert"] == rules.CHAMPION_DRIFT]
    assert f">= {rules.DRIFT_SHARE_THRESHOLD!r}" in champion["expr"]
    assert f">= {rules.DRIFT_MIN_WINDOW_ROWS}" in champion["expr"]
    assert champion["for"] == rules.CHAMPION_DRIFT_FOR


def test_the_promtool_suite_uses_models_no_spec_names():
    """Its models get the spec defaults whatever the bundled specs say, so a spec edit cannot change
    what the suite tests (the spec's own thresholds are covered by the golden file)."""
    text = PROMTOOL_TESTS.read_text()
    for model in rules.bundled_deployments():
        assert f'model="{model}"' not in text and f"model: {model}\n" not in text, model


def test_a_spec_that_breaks_its_rules_is_refused_by_the_cli(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: Not_A_DNS_Label\n")
    assert rules.main(["--output", str(tmp_path / "out.yaml"), "--spec", str(bad)]) == 2
    assert "breaks" in capsys.readouterr().err and not (tmp_path / "out.yaml").exists()


# -- Alertmanager ------------------------------------------------------------------------------------


@pytest.fixture
def am_config(tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret")
    path = tmp_path / "alertmanager.yml"
    path.write_text(alertmanager.render(alertmanager.config("http://127.0.0.1:9/alerts", token)))
    return path


def test_amtool_accepts_the_alertmanager_config(am_config):
    result = run_tool("amtool", "check-config", str(am_config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout and "2 receivers" in result.stdout


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        ({ALERT_ACTION_LABEL: "rollback", "alertname": rules.CANARY_ERROR_RATE_HIGH}, alertmanager.WEBHOOK_RECEIVER),
        ({ALERT_ACTION_LABEL: "retrain", "alertname": rules.CHAMPION_DRIFT}, alertmanager.WEBHOOK_RECEIVER),
        ({ALERT_ACTION_LABEL: "none", "alertname": rules.PREDICTOR_DOWN}, alertmanager.NULL_RECEIVER),
        ({"alertname": "Watchdog"}, alertmanager.NULL_RECEIVER),
    ],
)
def test_actionable_alerts_go_to_the_webhook_the_rest_to_null(am_config, labels, receiver):
    pairs = [f"{k}={v}" for k, v in {**labels, "model": "churn"}.items()]
    result = run_tool("amtool", "config", "routes", "test", f"--config.file={am_config}", *pairs)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == receiver


def test_the_webhook_gets_a_bearer_token_from_a_file_and_fast_grouping(am_config):
    cfg = yaml.safe_load(am_config.read_text())
    route = cfg["route"]["routes"][0]
    assert route["group_by"] == ["alertname", "model"]
    assert (route["group_wait"], route["repeat_interval"]) == ("2s", "30m")
    hook = next(r for r in cfg["receivers"] if r["name"] == alertmanager.WEBHOOK_RECEIVER)["webhook_configs"][0]
    assert hook["http_config"]["authorization"] == {
        "type": "Bearer",
        "credentials_file": str(am_config.parent / "token"),
    }
    fast = alertmanager.config("http://h/alerts", "/t", alertmanager.Timing("1s", "5s", "1h"))
    assert fast["route"]["routes"][0]["group_wait"] == "1s"


def test_amtool_rejects_a_broken_config(tmp_path, am_config):
    """Proof amtool's check can fail: a route to a receiver that does not exist."""
    cfg = yaml.safe_load(am_config.read_text())
    cfg["route"]["routes"][0]["receiver"] = "nobody"
    broken = tmp_path / "broken.yml"
    broken.write_text(yaml.safe_dump(cfg))
    result = run_tool("amtool", "check-config", str(broken))
    assert result.returncode != 0
    assert "nobody" in result.stdout + result.stderr


def test_a_webhook_url_must_be_http():
    with pytest.raises(ValueError, match="expected an http"):
        alertmanager.config("shepherd-webhook:8080", "/token")


def test_the_alertmanager_cli_writes_the_config(tmp_path):
    out = tmp_path / "am.yml"
    args = ["--webhook-url", "http://w/alerts", "--credentials-file", "/t", "--output", str(out), "--group-wait", "1s"]
    assert alertmanager.main(args) == 0
    assert yaml.safe_load(out.read_text())["route"]["routes"][0]["group_wait"] == "1s"
    assert json.dumps(yaml.safe_load(out.read_text()))  # plain data, no Python objects
