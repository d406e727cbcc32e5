"""Prometheus alerting and recording rules, generated from the models' deployment specs.

The canary alerts enforce the very thresholds the rollout loop enforces: each model's
`deployment.gates` and `deployment.min_requests` are read through the same policy annotation the loop
reads (`serving.inference_service.rollout_policy` -> `serving.rollout.machine.Policy`), so a spec
change moves the loop's gates and the alerts together. The embedded default evaluates those gates in
the loop; a cluster evaluates these rules in Prometheus and acts on them through Alertmanager and the
Shepherd webhook (`shepherd_action` label).

Models not named by a spec get the spec defaults (`components.spec.Deployment()`); a model whose
thresholds differ from the defaults gets its own alert rules, and the default rules exclude it.

Write the files (the committed copies are golden files under test):

    python -m monitoring.rules --output monitoring/rules/shepherd.rules.yaml \
        --helm-output helm/shepherd/files/prometheus-rules.yaml

Timing budget (rollback within 15 s of the first failing response, see docs/alerts-and-dashboards.md):
scrape 5 s + canary group evaluation 5 s + `for: 0s` + Alertmanager group_wait 2 s + webhook < 1 s.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import yaml

from components.errors import ShepherdError
from components.spec import Deployment, load_spec
from monitoring.metrics import (
    ALERT_ACTION_LABEL,
    ALERT_ACTIONS,
    DRIFT_FEATURE_SCORE,
    DRIFT_REFERENCES,
    DRIFT_SHARE,
    DRIFT_WINDOW_ROWS,
    OUTCOMES,
    QUALITY,
    QUALITY_LABELLED_ROWS,
    QUALITY_MAXIMUM,
    QUALITY_MINIMUM,
    REQUEST_DURATION_SECONDS,
    REQUESTS_TOTAL,
    ROLES,
    ROLLOUT_CANARY_PERCENT,
)
from serving.inference_service import rollout_policy
from serving.rollout.gates import Threshold
from serving.rollout.machine import Policy
from serving.rollout.providers import PREDICTION_FEATURE

REPO = Path(__file__).resolve().parent.parent
RULES_FILE = REPO / "monitoring" / "rules" / "shepherd.rules.yaml"
HELM_RULES_FILE = REPO / "helm" / "shepherd" / "files" / "prometheus-rules.yaml"
SPECS_DIR = REPO / "specs"
# runbook_url = RUNBOOK + "#" + the alert name in lower case (the doc's heading anchors). Relative by
# default; `--runbook-base https://git.example.com/shepherd/blob/main/` makes it a clickable link.
RUNBOOK = "docs/alerts-and-dashboards.md"

# -- timing ----------------------------------------------------------------------------------------
# Rollback within ROLLBACK_BUDGET_SECONDS of the first failing response, worst case: two of the
# predictors' scrapes (a new canary revision has no increase() until Prometheus holds two samples of
# it; the Helm chart's PodMonitor must use SCRAPE_INTERVAL) + the canary group's evaluation interval +
# `for` + Alertmanager's group_wait (monitoring/alertmanager.py) + the webhook's call. `make bench`
# measured 15-18.5 s at 5 s/5 s, which is why both are 3 s.
ROLLBACK_BUDGET_SECONDS = 15
SCRAPE_INTERVAL = "3s"
# The fast window: 10 scrapes at the 3 s scrape interval, so one missed scrape does not blind it, and
# short enough that a canary which starts failing moves the ratio past 1 % at the first scrape after.
FAST_WINDOW = "30s"
CANARY_EVALUATION_INTERVAL = "3s"  # the group's own interval: a 30 s/1 m global default would blow the budget
SLOW_EVALUATION_INTERVAL = "30s"  # drift and serving health: minutes matter, not seconds
# Rollback alerts act on the first evaluation that sees the breach; the request (or row) guard, not a
# `for`, keeps them from acting on noise, exactly as the loop's gates do (too few requests = no verdict).
ROLLBACK_FOR = "0s"

# -- drift (monitoring/drift.py exports the gauges) -------------------------------------------------
# A canary's drift is judged by the spec's drift gates (deployment.gates.drift_share vs training,
# deployment.gates.prediction_psi vs the champion), like every other gate. A champion has no gates:
# it is retrained when its share reaches DRIFT_SHARE_THRESHOLD, the rule Evidently itself uses for
# dataset drift (share >= drift_share, 0.5), so the alert agrees with `shepherd_drift_detected` and
# with `shepherd drift check` (the embedded default's version of this alert).
DRIFT_SHARE_THRESHOLD = 0.5
DRIFT_MIN_WINDOW_ROWS = 100  # fewer logged rows than this: no verdict on the champion's drift
CHAMPION_DRIFT_FOR = "15m"  # a retraining run costs minutes of compute: only for drift that persists

# -- live quality (monitoring/quality.py exports the gauges, through the drift service) -------------
# A champion is retrained when its live quality, on the labelled predictions it served, breaks its own
# spec's evaluation bounds (evaluation.minimum / evaluation.maximum: the bars every version had to clear
# to be registered). The drift service exports those bounds beside the scores, so one rule judges every
# model by its own numbers. A metric at its bound passes, as in the evaluate step (`value >= minimum`).
QUALITY_MIN_LABELLED_ROWS = 200  # fewer labelled predictions in the revision's window: no verdict
CHAMPION_QUALITY_FOR = CHAMPION_DRIFT_FOR  # as for drift: a retraining run only for a drop that persists

# -- serving health ---------------------------------------------------------------------------------
NO_TRAFFIC_WINDOW = "10m"
NO_TRAFFIC_FOR = "5m"  # fires 10-15 min after a revision's last request
PREDICTOR_DOWN_FOR = "1m"  # a single missed scrape is not an outage
# The predictors' scrape job: `shepherd-predictor` (static config, ServiceMonitor) or
# `<namespace>/shepherd-predictor` (a PodMonitor of that name).
PREDICTOR_JOB_REGEX = "(.+/)?shepherd-predictor"

# -- names ------------------------------------------------------------------------------------------
_REQUESTS = REQUESTS_TOTAL.removesuffix("_total")
# Recording rules (level:metric:operations). "Requests" are the ones the model was asked to score (ok +
# error), as in the error-rate gate: a client's invalid request (4xx) counts neither for nor against it.
REVISION_REQUESTS = f"revision:{_REQUESTS}:increase{FAST_WINDOW}"
REVISION_ERROR_RATIO = f"revision:{_REQUESTS}_errors:ratio{FAST_WINDOW}"
REVISION_P99 = f"revision:{REQUEST_DURATION_SECONDS}:p99_rate{FAST_WINDOW}"
CANARY_P99_RATIO = f"model:{REQUEST_DURATION_SECONDS}:canary_p99_ratio_rate{FAST_WINDOW}"
RECORDING_RULES = (REVISION_REQUESTS, REVISION_ERROR_RATIO, REVISION_P99, CANARY_P99_RATIO)

CANARY_ERROR_RATE_HIGH = "ShepherdCanaryErrorRateHigh"
CANARY_LATENCY_HIGH = "ShepherdCanaryLatencyHigh"
CANARY_DRIFT = "ShepherdCanaryDrift"
CHAMPION_DRIFT = "ShepherdChampionDrift"
CHAMPION_QUALITY_BELOW_MINIMUM = "ShepherdChampionQualityBelowMinimum"
CHAMPION_QUALITY_ABOVE_MAXIMUM = "ShepherdChampionQualityAboveMaximum"
NO_TRAFFIC = "ShepherdNoTraffic"
PREDICTOR_DOWN = "ShepherdPredictorDown"
ALERTS = (
    CANARY_ERROR_RATE_HIGH,
    CANARY_LATENCY_HIGH,
    CANARY_DRIFT,
    CHAMPION_DRIFT,
    CHAMPION_QUALITY_BELOW_MINIMUM,
    CHAMPION_QUALITY_ABOVE_MAXIMUM,
    NO_TRAFFIC,
    PREDICTOR_DOWN,
)

# On each canary alert: whose thresholds it enforces, "defaults" or the model(s) whose spec sets its own
# (it also keeps one model's rules distinct from the defaults' for Prometheus and promtool).
THRESHOLDS_LABEL = "thresholds"
DEFAULTS = "defaults"

GROUP_CANARY = "shepherd-canary"
GROUP_DRIFT = "shepherd-drift"
GROUP_SERVING = "shepherd-serving"

LATENCY_QUANTILE = 0.99  # the gate's: latency_p99_ratio


def _value(value: str, allowed: Iterable[str], what: str) -> str:
    """A label value the metric contract defines (fails generation, not an alert, if it is renamed)."""
    if value not in allowed:
        raise ValueError(f"{what} {value!r} is not defined in monitoring/metrics.py; expected one of {list(allowed)}")
    return value


def _action(action: str) -> str:
    return _value(action, ALERT_ACTIONS, ALERT_ACTION_LABEL)


CANARY = _value("canary", ROLES, "role")
CHAMPION = _value("champion", ROLES, "role")
SERVER_OUTCOMES = tuple(_value(o, OUTCOMES, "outcome") for o in ("ok", "error"))
ERROR = _value("error", OUTCOMES, "outcome")
TRAINING = _value("training", DRIFT_REFERENCES, "reference")
CHAMPION_REFERENCE = _value("champion", DRIFT_REFERENCES, "reference")


@dataclass(frozen=True)
class CanaryThresholds:
    """What the rollout loop enforces on a canary: its gates and the request guard."""

    error_rate: Threshold
    latency_p99_ratio: Threshold
    min_requests: int
    drift_share: Threshold
    prediction_psi: Threshold
    latency_floor_seconds: float = 0.0

    @classmethod
    def of(cls, deployment: Deployment) -> CanaryThresholds:
        """Read through the policy annotation the loop itself reads, so both see the same numbers.

        `rollout_policy` only looks at `spec.deployment`, which is all the rules need.
        """
        annotation = json.dumps(rollout_policy(SimpleNamespace(deployment=deployment)))
        policy = Policy.from_annotation(annotation)
        gates = policy.gates
        return cls(
            gates["error_rate"],
            gates["latency_p99_ratio"],
            policy.min_requests,
            gates["drift_share"],
            gates["prediction_psi"],
            policy.latency_floor_seconds,
        )


DEFAULT_THRESHOLDS = CanaryThresholds.of(Deployment())


def _number(value: float) -> str:
    return repr(float(value))


def _outside(expr: str, threshold: Threshold) -> str:
    """PromQL keeping the samples of `expr` that fail `threshold` (Threshold.check passes at equality)."""
    parts = []
    if threshold.max is not None:
        parts.append(f"{expr} > {_number(threshold.max)}")
    if threshold.min is not None:
        parts.append(f"{expr} < {_number(threshold.min)}")
    return parts[0] if len(parts) == 1 else f"({parts[0]}) or ({parts[1]})"


def _allowed(threshold: Threshold, percent: bool = False, unit: str = "x") -> str:
    def show(v: float) -> str:
        return f"{v * 100:g}%" if percent else f"{v:g}{unit}"

    if threshold.min is not None and threshold.max is not None:
        return f"between {show(threshold.min)} and {show(threshold.max)}"
    return f"at most {show(threshold.max)}" if threshold.max is not None else f"at least {show(threshold.min)}"


def _matchers(*pairs: str, model: str = "") -> str:
    return "{" + ", ".join([*pairs, *([model] if model else [])]) + "}"


def _runbook(base: str, alert: str) -> str:
    return f"{base}#{alert.lower()}"


def recording_rules() -> list[dict]:
    """Per revision (model, version, role) over the fast window; alerts and dashboards both read them."""
    by = "model, version, role"
    requests = f'{REQUESTS_TOTAL}{{outcome=~"{"|".join(SERVER_OUTCOMES)}"}}'
    return [
        {"record": REVISION_REQUESTS, "expr": f"sum by ({by}) (increase({requests}[{FAST_WINDOW}]))"},
        {
            # increase/increase, not rate/rate: the same counts the gate divides (errors / requests).
            "record": REVISION_ERROR_RATIO,
            "expr": (
                f'sum by ({by}) (increase({REQUESTS_TOTAL}{{outcome="{ERROR}"}}[{FAST_WINDOW}]))\n'
                f"/\n{REVISION_REQUESTS}"
            ),
        },
        {
            "record": REVISION_P99,
            "expr": (
                f"histogram_quantile({LATENCY_QUANTILE}, "
                f"sum by ({by}, le) (rate({REQUEST_DURATION_SECONDS}_bucket[{FAST_WINDOW}])))"
            ),
        },
        {
            # Labelled like the canary (its version); the champion of the same model is the reference.
            "record": CANARY_P99_RATIO,
            "expr": (
                f'{REVISION_P99}{{role="{CANARY}"}}\n'
                f'/ on (model) group_left\nmax by (model) ({REVISION_P99}{{role="{CHAMPION}"}})'
            ),
        },
    ]


def canary_alerts(
    thresholds: CanaryThresholds, model: str = "", runbook: str = RUNBOOK, source: str = DEFAULTS
) -> list[dict]:
    """The two rollback alerts for the models `model` selects (a label matcher; empty: every model);
    `source` (the `thresholds` label) names whose thresholds they are: the spec defaults or a model's."""
    canary = f'role="{CANARY}"'
    champion = f'role="{CHAMPION}"'
    n = thresholds.min_requests
    error_ratio = f"{REVISION_ERROR_RATIO}{_matchers(canary, model=model)}"
    ratio = f"{CANARY_P99_RATIO}{_matchers(canary, model=model)}"
    p99 = f"{REVISION_P99}{_matchers(canary, model=model)}"
    latency = thresholds.latency_p99_ratio
    slow = f"{ratio} > {_number(latency.max)}" if latency.max is not None else ""
    if slow and thresholds.latency_floor_seconds:
        # As the gate: a canary under the floor is never "too slow" (milliseconds are noise).
        slow = f"({slow})\nand on (model, version, role)\n({p99} > {_number(thresholds.latency_floor_seconds)})"
    fast = f"{ratio} < {_number(latency.min)}" if latency.min is not None else ""
    latency_breach = f"({slow}) or ({fast})" if slow and fast else (slow or fast)
    guard_canary = f"and on (model, version, role)\n({REVISION_REQUESTS}{_matchers(canary, model=model)} >= {n})"
    guard_champion = f"and on (model)\n(sum by (model) ({REVISION_REQUESTS}{_matchers(champion, model=model)}) >= {n})"
    rollback = {"severity": "critical", ALERT_ACTION_LABEL: _action("rollback"), THRESHOLDS_LABEL: source}
    error_allowed = _allowed(thresholds.error_rate, percent=True)
    latency_allowed = _allowed(thresholds.latency_p99_ratio)
    return [
        {
            "alert": CANARY_ERROR_RATE_HIGH,
            "expr": f"({_outside(error_ratio, thresholds.error_rate)})\n{guard_canary}",
            "for": ROLLBACK_FOR,
            "labels": dict(rollback),
            "annotations": {
                "summary": (
                    "{{ $labels.model }} canary v{{ $labels.version }} fails {{ $value | humanizePercentage }} "
                    "of its requests"
                ),
                "description": (
                    "{{ $labels.model }} v{{ $labels.version }} (canary) answered {{ $value | humanizePercentage }} "
                    f"of the requests it scored with a server error (5xx) over the last {FAST_WINDOW}; the "
                    f"error_rate gate allows {error_allowed} (deployment.gates.error_rate), with at least {n} "
                    "requests (deployment.min_requests). Shepherd rolls the canary back to 0 % and restores "
                    "the @champion alias."
                ),
                "runbook_url": _runbook(runbook, CANARY_ERROR_RATE_HIGH),
            },
        },
        {
            "alert": CANARY_LATENCY_HIGH,
            "expr": f"({latency_breach})\n{guard_canary}\n{guard_champion}",
            "for": ROLLBACK_FOR,
            "labels": dict(rollback),
            "annotations": {
                "summary": (
                    "{{ $labels.model }} canary v{{ $labels.version }} p99 latency is "
                    '{{ $value | printf "%.2f" }}x the champion\'s'
                ),
                "description": (
                    "The p99 latency of {{ $labels.model }} v{{ $labels.version }} (canary) over the last "
                    f'{FAST_WINDOW} is {{{{ $value | printf "%.2f" }}}} times the champion\'s over the same '
                    f"window; the latency_p99_ratio gate allows {latency_allowed} "
                    f"(deployment.gates.latency_p99_ratio; a canary p99 under "
                    f"{thresholds.latency_floor_seconds * 1000:g} ms is never too slow: "
                    f"deployment.latency_floor_ms), with at least {n} requests on each revision "
                    "(deployment.min_requests). Shepherd rolls the canary back to 0 % and restores the "
                    "@champion alias."
                ),
                "runbook_url": _runbook(runbook, CANARY_LATENCY_HIGH),
            },
        },
    ]


def canary_drift_alerts(
    thresholds: CanaryThresholds, model: str = "", runbook: str = RUNBOOK, source: str = DEFAULTS
) -> list[dict]:
    """The loop's two drift gates as rollback alerts, for the models `model` selects (empty: every model).
    No row guard: the drift service publishes a result only for windows of at least its `--min-rows`,
    and no result is no verdict, as in the gates."""
    canary = f'role="{CANARY}"'
    training = f'reference="{TRAINING}"'
    champion = f'reference="{CHAMPION_REFERENCE}"'
    prediction = f'feature="{PREDICTION_FEATURE}"'
    share = DRIFT_SHARE + _matchers(canary, training, model=model)
    psi = DRIFT_FEATURE_SCORE + _matchers(canary, champion, prediction, model=model)
    rollback = {"severity": "critical", ALERT_ACTION_LABEL: _action("rollback"), THRESHOLDS_LABEL: source}
    back = "Shepherd rolls the canary back to 0 % and restores the @champion alias."
    return [
        {
            "alert": CANARY_DRIFT,
            "expr": _outside(share, thresholds.drift_share),
            "for": ROLLBACK_FOR,
            "labels": {**rollback, "gate": "drift_share"},
            "annotations": {
                "summary": (
                    "{{ $labels.model }} canary v{{ $labels.version }}: {{ $value | humanizePercentage }} "
                    "of its input features drifted from training"
                ),
                "description": (
                    "The drift service finds {{ $value | humanizePercentage }} of the input features of "
                    "{{ $labels.model }} v{{ $labels.version }} (canary) drifted (PSI) from the training data; "
                    f"the drift_share gate allows {_allowed(thresholds.drift_share, percent=True)} "
                    f"(deployment.gates.drift_share). {back}"
                ),
                "runbook_url": _runbook(runbook, CANARY_DRIFT),
            },
        },
        {
            "alert": CANARY_DRIFT,
            "expr": _outside(psi, thresholds.prediction_psi),
            "for": ROLLBACK_FOR,
            "labels": {**rollback, "gate": "prediction_psi"},
            "annotations": {
                "summary": (
                    "{{ $labels.model }} canary v{{ $labels.version }}: predictions moved from the champion's "
                    '(PSI {{ $value | printf "%.2f" }})'
                ),
                "description": (
                    "The predictions of {{ $labels.model }} v{{ $labels.version }} (canary) differ "
                    "from the champion's on the same traffic by a PSI of "
                    '{{ $value | printf "%.3f" }}; the prediction_psi gate allows '
                    f"{_allowed(thresholds.prediction_psi, unit='')} (deployment.gates.prediction_psi). {back}"
                ),
                "runbook_url": _runbook(runbook, CANARY_DRIFT),
            },
        },
    ]


def champion_drift_alerts(runbook: str = RUNBOOK) -> list[dict]:
    share = _number(DRIFT_SHARE_THRESHOLD)
    rows = f"and on (model, version, role)\n({DRIFT_WINDOW_ROWS} >= {DRIFT_MIN_WINDOW_ROWS})"
    return [
        {
            "alert": CHAMPION_DRIFT,
            "expr": f'({DRIFT_SHARE}{{role="{CHAMPION}", reference="{TRAINING}"}} >= {share})\n{rows}',
            "for": CHAMPION_DRIFT_FOR,
            "labels": {"severity": "warning", ALERT_ACTION_LABEL: _action("retrain")},
            "annotations": {
                "summary": (
                    "{{ $labels.model }} champion v{{ $labels.version }}: {{ $value | humanizePercentage }} "
                    "of features drifted from training data"
                ),
                "description": (
                    "For the last "
                    f"{CHAMPION_DRIFT_FOR}, {{{{ $value | humanizePercentage }}}} (now) of the features of "
                    "{{ $labels.model }} v{{ $labels.version }} (champion) drifted from the data it was "
                    f"trained on; the limit is a share below {DRIFT_SHARE_THRESHOLD:.0%} "
                    "(monitoring.rules.DRIFT_SHARE_THRESHOLD). Shepherd starts a retraining run on fresh "
                    "data; the new version goes through evaluation and a canary like any other."
                ),
                "runbook_url": _runbook(runbook, CHAMPION_DRIFT),
            },
        },
    ]


def champion_quality_alerts(runbook: str = RUNBOOK) -> list[dict]:
    """The champion's live quality against its spec's evaluation bounds: retrain when it breaks one.

    One rule per direction for every model and metric: the bounds are series (`QUALITY_MINIMUM`,
    `QUALITY_MAXIMUM`, per model and metric), so a metric without a bound in the spec is never judged,
    and `positive_rate` / `predicted_positive_rate` (no bounds) never are."""
    rows = f"and on (model, version, role)\n({QUALITY_LABELLED_ROWS} >= {QUALITY_MIN_LABELLED_ROWS})"
    retrain = {"severity": "warning", ALERT_ACTION_LABEL: _action("retrain")}
    alerts = []
    for name, op, bound_metric, bound, field_name, side in (
        (CHAMPION_QUALITY_BELOW_MINIMUM, "<", QUALITY_MINIMUM, "minimum", "evaluation.minimum", "below"),
        (CHAMPION_QUALITY_ABOVE_MAXIMUM, ">", QUALITY_MAXIMUM, "maximum", "evaluation.maximum", "above"),
    ):
        # The bound's value for the description, read when the alert is sent; left out if it is missing.
        bound_value = (
            '{{ with printf "' + bound_metric + '{model=%q, metric=%q}" $labels.model $labels.metric | query }}'
            ': {{ . | first | value | printf "%.3f" }}{{ end }}'
        )
        alerts.append(
            {
                "alert": name,
                "expr": (
                    f'({QUALITY}{{role="{CHAMPION}"}}\n{op} on (model, metric) group_left\n'
                    # max by: one bound per model and metric even with several drift-service replicas
                    f"max by (model, metric) ({bound_metric}))\n{rows}"
                ),
                "for": CHAMPION_QUALITY_FOR,
                "labels": dict(retrain),
                "annotations": {
                    "summary": (
                        "{{ $labels.model }} champion v{{ $labels.version }}: live {{ $labels.metric }} "
                        f'{{{{ $value | printf "%.3f" }}}} is {side} its {bound}'
                    ),
                    "description": (
                        f"For the last {CHAMPION_QUALITY_FOR}, the {{{{ $labels.metric }}}} of "
                        "{{ $labels.model }} v{{ $labels.version }} (champion) on the latest labelled "
                        f'predictions it served is {{{{ $value | printf "%.3f" }}}} (now), {side} the {bound} '
                        f"its spec sets ({field_name}{bound_value}), judged on at least "
                        f"{QUALITY_MIN_LABELLED_ROWS} labelled predictions "
                        "(monitoring.rules.QUALITY_MIN_LABELLED_ROWS). Shepherd starts a retraining run on "
                        "fresh data; the new version goes through evaluation and a canary like any other."
                    ),
                    "runbook_url": _runbook(runbook, name),
                },
            }
        )
    return alerts


def serving_alerts(runbook: str = RUNBOOK, predictor_job: str = PREDICTOR_JOB_REGEX) -> list[dict]:
    by = "model, version, role"
    window = NO_TRAFFIC_WINDOW
    up = f'up{{job=~"{predictor_job}"}}'
    none = {ALERT_ACTION_LABEL: _action("none")}
    return [
        {
            "alert": NO_TRAFFIC,
            # A canary the rollout set to 0 % (rolled back) is meant to be idle.
            "expr": (
                f'(sum by ({by}) (increase({REQUESTS_TOTAL}{{role="{CHAMPION}"}}[{window}])) == 0)\nor\n'
                f'(sum by ({by}) (increase({REQUESTS_TOTAL}{{role="{CANARY}"}}[{window}])) == 0\n'
                f" unless on (model) ({ROLLOUT_CANARY_PERCENT} == 0))"
            ),
            "for": NO_TRAFFIC_FOR,
            "labels": {"severity": "warning", **none},
            "annotations": {
                "summary": "{{ $labels.model }} v{{ $labels.version }} ({{ $labels.role }}) serves no requests",
                "description": (
                    "{{ $labels.model }} v{{ $labels.version }} ({{ $labels.role }}) has not received a single "
                    f"request (not even an invalid one) in any {window} window for the last {NO_TRAFFIC_FOR}. "
                    "Its clients stopped calling, the router does not send it its share, or it is down. "
                    "Shepherd takes no action: a canary without traffic never passes its gates, it holds."
                ),
                "runbook_url": _runbook(runbook, NO_TRAFFIC),
            },
        },
        {
            "alert": PREDICTOR_DOWN,
            # 0: the target does not answer the scrape; 1: it answers but exports no Shepherd metrics.
            "expr": f"({up} == 0)\nor\n({up} unless on (job, instance) {REQUESTS_TOTAL})",
            "for": PREDICTOR_DOWN_FOR,
            "labels": {"severity": "critical", **none},
            "annotations": {
                "summary": "Predictor {{ $labels.instance }} ({{ $labels.model }}) is down",
                "description": (
                    "The predictor at {{ $labels.instance }} (job {{ $labels.job }}, model {{ $labels.model }}) "
                    "{{ if eq $value 0.0 }}does not answer Prometheus' scrapes{{ else }}answers but exports no "
                    f"{REQUESTS_TOTAL} series (wrong port or not a Shepherd predictor){{{{ end }}}} "
                    f"for {PREDICTOR_DOWN_FOR}. Shepherd takes no action; the rollout gates see no data and hold."
                ),
                "runbook_url": _runbook(runbook, PREDICTOR_DOWN),
            },
        },
    ]


def thresholds_by_model(deployments: Mapping[str, Deployment]) -> dict[CanaryThresholds, list[str]]:
    """Models whose thresholds differ from the spec defaults, grouped by identical thresholds."""
    sets: dict[CanaryThresholds, list[str]] = {}
    for model in sorted(deployments):
        thresholds = CanaryThresholds.of(deployments[model])
        if thresholds != DEFAULT_THRESHOLDS:
            sets.setdefault(thresholds, []).append(model)
    return sets


def rule_groups(
    deployments: Mapping[str, Deployment] | None = None,
    *,
    runbook: str = RUNBOOK,
    canary_interval: str = CANARY_EVALUATION_INTERVAL,
    slow_interval: str = SLOW_EVALUATION_INTERVAL,
    predictor_job: str = PREDICTOR_JOB_REGEX,
) -> list[dict]:
    """The Prometheus rule groups for the models in `deployments` (model name -> its deployment spec)
    and, with the spec defaults, for every other model."""
    special = thresholds_by_model(deployments or {})
    named = sorted(m for models in special.values() for m in models)
    canary_rules = recording_rules()
    # The recording rules come first in the same group: Prometheus evaluates a group in order, so the
    # alerts see this evaluation's values (another group could lag one interval behind).
    drift_rules = []
    sets = [(DEFAULT_THRESHOLDS, f'model!~"{"|".join(named)}"' if named else "", DEFAULTS)]
    sets += [(t, f'model=~"{"|".join(models)}"', "|".join(models)) for t, models in special.items()]
    for thresholds, selector, source in sets:
        canary_rules += canary_alerts(thresholds, selector, runbook, source)
        drift_rules += canary_drift_alerts(thresholds, selector, runbook, source)
    return [
        {"name": GROUP_CANARY, "interval": canary_interval, "rules": canary_rules},
        # Live quality comes from the drift service too, at the same pace: one group for the drift service's series.
        {
            "name": GROUP_DRIFT,
            "interval": slow_interval,
            "rules": drift_rules + champion_drift_alerts(runbook) + champion_quality_alerts(runbook),
        },
        {"name": GROUP_SERVING, "interval": slow_interval, "rules": serving_alerts(runbook, predictor_job)},
    ]


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (PromQL) as literal blocks: readable in review and in `kubectl get -o yaml`."""


_Dumper.add_representer(
    str,
    lambda dumper, value: dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None),
)

HEADER = (
    "# Generated by `python -m monitoring.rules` from the models' deployment specs (components/spec.py);\n"
    "# do not edit: change the spec or monitoring/rules.py and regenerate. See docs/alerts-and-dashboards.md.\n"
)


def render(groups: list[dict]) -> str:
    """The rule file text (`groups:` at the top, as `promtool` and a PrometheusRule's spec expect)."""
    return HEADER + yaml.dump({"groups": groups}, Dumper=_Dumper, sort_keys=False, width=1000, allow_unicode=True)


def deployments_from_specs(paths: Iterable[Path]) -> dict[str, Deployment]:
    out = {}
    for path in paths:
        spec = load_spec(path)
        out[spec.name] = spec.deployment
    return out


def bundled_deployments() -> dict[str, Deployment]:
    """The deployments of the specs shipped in specs/: what the committed rule files are built from."""
    return deployments_from_specs(sorted(SPECS_DIR.glob("*.yaml")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, required=True, help="rule file to write")
    parser.add_argument("--helm-output", type=Path, default=None, help="also write this copy (the Helm chart's)")
    parser.add_argument(
        "--spec",
        type=Path,
        action="append",
        default=None,
        help="model spec whose deployment thresholds to use (repeatable; default: every specs/*.yaml)",
    )
    parser.add_argument("--runbook-base", default="", help="prefix for runbook_url, e.g. a repository blob URL")
    args = parser.parse_args(argv)
    try:
        deployments = deployments_from_specs(args.spec) if args.spec else bundled_deployments()
    except ShepherdError as exc:  # a SpecError names the file and the rule it breaks
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    text = render(rule_groups(deployments, runbook=args.runbook_base + RUNBOOK))
    for path in filter(None, (args.output, args.helm_output)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
