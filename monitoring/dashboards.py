"""Grafana dashboards, built from one Python definition over the metric names of monitoring/metrics.py
and the recording rules of monitoring/rules.py (so a renamed metric breaks generation and tests, not a
dashboard at 3 a.m.).

"Shepherd / Rollouts": what each rollout is doing and why (phase, canary traffic, gate verdicts, the
values the rollback alerts compare, promotions and rollbacks as annotations, firing alerts).
"Shepherd / Model health": drift per revision and reference, per-feature drift, live quality on the
labels fed back (with the spec's bounds the champion-quality alerts compare), the prediction score
distribution, request and row volume.

Plain dicts in Grafana's dashboard JSON model (schemaVersion 39); the Helm chart ships the JSON files
for Grafana's dashboard sidecar. Write them (the committed copies are golden files under test):

    python -m monitoring.dashboards --output monitoring/dashboards --helm-output helm/shepherd/files/dashboards
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

from monitoring.metrics import (
    DRIFT_DETECTED,
    DRIFT_EVENTS_TOTAL,
    DRIFT_FEATURE_SCORE,
    DRIFT_SHARE,
    DRIFT_WINDOW_ROWS,
    FEEDBACK_LABELS_TOTAL,
    PREDICTION_SCORE,
    QUALITY,
    QUALITY_LABEL_DELAY_SECONDS,
    QUALITY_LABELLED_ROWS,
    QUALITY_MAXIMUM,
    QUALITY_MINIMUM,
    REQUESTS_TOTAL,
    ROLLOUT_CANARY_PERCENT,
    ROLLOUT_GATE_VERDICT,
    ROLLOUT_PHASE,
    ROLLOUT_TRANSITIONS_TOTAL,
    ROWS_TOTAL,
)
from monitoring.rules import (
    CANARY_P99_RATIO,
    CHAMPION_DRIFT_FOR,
    CHAMPION_QUALITY_ABOVE_MAXIMUM,
    CHAMPION_QUALITY_BELOW_MINIMUM,
    CHAMPION_QUALITY_FOR,
    DEFAULT_THRESHOLDS,
    DRIFT_SHARE_THRESHOLD,
    FAST_WINDOW,
    QUALITY_MIN_LABELLED_ROWS,
    REVISION_ERROR_RATIO,
    REVISION_P99,
    REVISION_REQUESTS,
    RUNBOOK,
)
from serving.rollout.machine import Action
from serving.rollout.providers import PREDICTION_FEATURE

REPO = Path(__file__).resolve().parent.parent
DASHBOARDS_DIR = REPO / "monitoring" / "dashboards"
HELM_DASHBOARDS_DIR = REPO / "helm" / "shepherd" / "files" / "dashboards"

SCHEMA_VERSION = 39
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
MODEL = 'model=~"$model"'
REVISION = "{{model}} v{{version}} {{role}}"
BY_REVISION = "model, version, role"
RATE = "$__rate_interval"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""
    instant: bool = False
    format: str = "time_series"  # or table, heatmap


@dataclass(frozen=True)
class Panel:
    """One panel: what it shows (title, unit) and what on-call should make of it (description)."""

    title: str
    description: str
    unit: str
    queries: tuple[Query, ...]
    kind: str = "timeseries"
    width: int = 12
    height: int = 8
    threshold: float | None = None  # drawn as a dashed red line: the limit an alert compares with
    options: dict = field(default_factory=dict)
    custom: dict = field(default_factory=dict)  # fieldConfig.defaults.custom
    defaults: dict = field(default_factory=dict)  # more fieldConfig.defaults (min, max, mappings)
    overrides: tuple[dict, ...] = ()
    transformations: tuple[dict, ...] = ()


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


@dataclass(frozen=True)
class Annotation:
    name: str
    expr: str
    color: str
    title: str
    text: str


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    rows: tuple[Row, ...]
    annotations: tuple[Annotation, ...] = ()
    model_values_from: str = REQUESTS_TOTAL


def _color_by_name(pattern: str, color: str) -> dict:
    return {
        "matcher": {"id": "byRegexp", "options": pattern},
        "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": color}}],
    }


def _bound_line(pattern: str) -> dict:
    """A series that is a limit (a spec's bound, per model): dashed red, like a panel's threshold line."""
    return {
        "matcher": {"id": "byRegexp", "options": pattern},
        "properties": [
            {"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}},
            {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
            {"id": "custom.fillOpacity", "value": 0},
        ],
    }


RUNBOOK_NOTE = f"Runbooks: {RUNBOOK}."
_ERROR_MAX = DEFAULT_THRESHOLDS.error_rate.max
_LATENCY_MAX = DEFAULT_THRESHOLDS.latency_p99_ratio.max
_MIN_REQUESTS = DEFAULT_THRESHOLDS.min_requests
_DEFAULT_LINE = "The dashed line is the spec default; a model's own spec (deployment.gates) may set another limit."

ROLLOUTS = Dashboard(
    uid="shepherd-rollouts",
    title="Shepherd / Rollouts",
    description="Canary rollouts: phase, traffic, gate verdicts, the values the rollback alerts compare, alerts.",
    annotations=(
        Annotation(
            "Promotions",
            f'sum by (model, action) (increase({ROLLOUT_TRANSITIONS_TOTAL}{{{MODEL}, action="{Action.PROMOTE}"}}[1m]))'
            " > 0",
            "green",
            "{{model}} promoted",
            "The canary passed every step and became the champion (@champion moved, @previous kept).",
        ),
        Annotation(
            "Rollbacks",
            f'sum by (model, action) (increase({ROLLOUT_TRANSITIONS_TOTAL}{{{MODEL}, action="{Action.ROLLBACK}"}}[1m]))'
            " > 0",
            "red",
            "{{model}} rolled back",
            "The canary was set to 0 % and the aliases restored (failed gates, a rollback alert, or an operator).",
        ),
    ),
    rows=(
        Row(
            "Rollout state",
            (
                Panel(
                    "Rollout phase",
                    "The phase each model's rollout is in now: progressing (stepping the canary up), paused (an "
                    "operator paused it), awaiting-approval (manual_approval: run `shepherd rollout promote`), "
                    "promoted or rolled-back. Empty: the rollout controller exports nothing (is it running?).",
                    "none",
                    (Query(f"max by (model, phase) ({ROLLOUT_PHASE}{{{MODEL}}}) == 1", "{{model}}: {{phase}}", True),),
                    kind="stat",
                    width=6,
                    options={"textMode": "name", "colorMode": "none", "graphMode": "none", "reduceOptions": {}},
                ),
                Panel(
                    "Canary traffic",
                    "Share of each model's requests the router sends to the canary. It climbs through "
                    "deployment.canary_steps while the gates pass; a drop to 0 is a rollback (see the red "
                    "annotations), a jump to 100 followed by the line disappearing is a promotion.",
                    "percent",
                    (Query(f"{ROLLOUT_CANARY_PERCENT}{{{MODEL}}}", "{{model}}"),),
                    width=9,
                    defaults={"min": 0, "max": 100},
                    custom={"lineInterpolation": "stepAfter", "fillOpacity": 10},
                ),
                Panel(
                    "Gate verdicts",
                    "The last verdict of each gate per model: pass (green), inconclusive (yellow: fewer requests "
                    "than deployment.min_requests, the loop holds) or fail (red: failure_limit failures in a row "
                    "roll the canary back). A long yellow stretch means the canary gets too little traffic to "
                    "be judged.",
                    "none",
                    (Query(f"{ROLLOUT_GATE_VERDICT}{{{MODEL}}} == 1", "{{model}} {{gate}}: {{verdict}}"),),
                    kind="state-timeline",
                    width=9,
                    options={"showValue": "never", "mergeValues": True},
                    overrides=(
                        _color_by_name(".*: pass", "green"),
                        _color_by_name(".*: inconclusive", "yellow"),
                        _color_by_name(".*: fail", "red"),
                    ),
                ),
                Panel(
                    "Rollout transitions",
                    "Decisions the rollout loop took per model: step (canary traffic up), promote, rollback, "
                    "await-approval. Several rollbacks of the same model in a row: the challengers keep "
                    "failing; look at their version tags (shepherd.rollout) for the reason.",
                    "short",
                    (
                        Query(
                            f"sum by (model, action) (increase({ROLLOUT_TRANSITIONS_TOTAL}{{{MODEL}}}[{RATE}])) > 0",
                            "{{model}} {{action}}",
                        ),
                    ),
                    width=24,
                    height=6,
                    custom={"drawStyle": "bars", "fillOpacity": 80},
                ),
            ),
        ),
        Row(
            "Traffic and gates per revision",
            (
                Panel(
                    "Request rate by revision",
                    "Requests per second each served version receives (all outcomes). Canary / (canary + "
                    "champion) should match the canary traffic panel; if the canary gets nothing while its "
                    "traffic is above 0, the router is not splitting (ShepherdNoTraffic fires after minutes).",
                    "reqps",
                    (
                        Query(
                            f"sum by ({BY_REVISION}) (rate({REQUESTS_TOTAL}{{{MODEL}}}[{RATE}]))",
                            REVISION,
                        ),
                    ),
                ),
                Panel(
                    "Requests by outcome",
                    "ok: scored; invalid: the client's mistake (4xx naming the field, not the model's fault, "
                    "never counted against a canary); error: a server error (5xx), the error-rate gate's "
                    "numerator. A rise of invalid on every revision at once is an upstream payload change.",
                    "reqps",
                    (
                        Query(
                            f"sum by (model, role, outcome) (rate({REQUESTS_TOTAL}{{{MODEL}}}[{RATE}]))",
                            "{{model}} {{role}} {{outcome}}",
                        ),
                    ),
                    custom={"stacking": {"mode": "normal"}, "fillOpacity": 30},
                    overrides=(_color_by_name(".* error", "red"), _color_by_name(".* invalid", "orange")),
                ),
                Panel(
                    f"Server error ratio over {FAST_WINDOW} (ShepherdCanaryErrorRateHigh)",
                    f"errors / (ok + errors) per revision over the last {FAST_WINDOW}: exactly what "
                    "ShepherdCanaryErrorRateHigh compares (recording rule "
                    f"{REVISION_ERROR_RATIO}). A canary above the line with enough requests is rolled back "
                    f"within seconds. {_DEFAULT_LINE} {RUNBOOK_NOTE}",
                    "percentunit",
                    (Query(f"{REVISION_ERROR_RATIO}{{{MODEL}}}", REVISION),),
                    threshold=_ERROR_MAX,
                ),
                Panel(
                    f"Requests scored in the last {FAST_WINDOW} (the alerts' request guard)",
                    f"ok + error requests per revision in the fast window. Below the line ({_MIN_REQUESTS}, "
                    "deployment.min_requests by default) the rollback alerts and the gates give no verdict: "
                    "a failing canary with this little traffic is caught by the loop's per-interval gates, "
                    "not by the fast alerts.",
                    "short",
                    (Query(f"{REVISION_REQUESTS}{{{MODEL}}}", REVISION),),
                    threshold=_MIN_REQUESTS,
                ),
                Panel(
                    f"p99 latency by revision over {FAST_WINDOW}",
                    "99th percentile of the time to validate and score one request, per revision (recording "
                    f"rule {REVISION_P99}). The model's own time only: network and router time are not in it. "
                    "A canary far above its champion trips ShepherdCanaryLatencyHigh.",
                    "s",
                    (Query(f"{REVISION_P99}{{{MODEL}}}", REVISION),),
                ),
                Panel(
                    "Canary p99 / champion p99 (ShepherdCanaryLatencyHigh)",
                    "The canary's p99 divided by its champion's over the same window: what "
                    "ShepherdCanaryLatencyHigh and the latency_p99_ratio gate compare. 1 is as fast as the "
                    f"champion; above the line the canary is rolled back. {_DEFAULT_LINE} {RUNBOOK_NOTE}",
                    "suffix:×",
                    (Query(f"{CANARY_P99_RATIO}{{{MODEL}}}", "{{model}} v{{version}}"),),
                    threshold=_LATENCY_MAX,
                ),
            ),
        ),
        Row(
            "Alerts",
            (
                Panel(
                    "Firing Shepherd alerts",
                    "Shepherd alerts firing now. shepherd_action says what Shepherd does on its own: rollback "
                    "(canary to 0 %), retrain (a retraining run starts) or none (a person must look). Each "
                    f"alert's runbook_url leads to what to check. {RUNBOOK_NOTE}",
                    "none",
                    (
                        Query(
                            f'ALERTS{{alertname=~"Shepherd.*", alertstate="firing", {MODEL}}}',
                            instant=True,
                            format="table",
                        ),
                    ),
                    kind="table",
                    width=24,
                    height=6,
                    transformations=(
                        {
                            "id": "organize",
                            "options": {"excludeByName": {"Time": True, "Value": True, "__name__": True}},
                        },
                    ),
                ),
                Panel(
                    "Alert history",
                    "When each Shepherd alert was pending (condition true, waiting out its `for`) and firing. "
                    "Rollback alerts have no `for`: they go straight to firing.",
                    "none",
                    (
                        Query(
                            f'ALERTS{{alertname=~"Shepherd.*", {MODEL}}}',
                            "{{alertname}} {{model}} v{{version}} ({{alertstate}})",
                        ),
                    ),
                    kind="state-timeline",
                    width=24,
                    height=6,
                    options={"showValue": "never", "mergeValues": True},
                    overrides=(_color_by_name(".*\\(firing\\)", "red"), _color_by_name(".*\\(pending\\)", "yellow")),
                ),
            ),
        ),
    ),
)

_PSI_NOTE = (
    "Scores are PSI (population stability index, the drift service's one test for every column): 0 is "
    "the same distribution, above 0.1 the service counts the feature as drifted, above 0.25 is a large shift."
)
_GATES = DEFAULT_THRESHOLDS

MODEL_HEALTH = Dashboard(
    uid="shepherd-model-health",
    title="Shepherd / Model health",
    description=(
        "Input drift per revision, live quality on the labels fed back, the prediction score distribution, "
        "request and row volume."
    ),
    rows=(
        Row(
            "Drift",
            (
                Panel(
                    "Drift share by revision and reference",
                    "Share of input features whose PSI drift test fired, per revision, against the training data "
                    "or (canary only) the champion's live window. A canary above its drift_share gate vs "
                    f"training (dashed line: the default, {_GATES.drift_share.max:.0%}) is rolled back "
                    "(ShepherdCanaryDrift); a champion at or above "
                    f"{DRIFT_SHARE_THRESHOLD:.0%} vs training for {CHAMPION_DRIFT_FOR} is retrained "
                    f"(ShepherdChampionDrift). {RUNBOOK_NOTE}",
                    "percentunit",
                    (Query(f"{DRIFT_SHARE}{{{MODEL}}}", "{{model}} v{{version}} {{role}} vs {{reference}}"),),
                    threshold=_GATES.drift_share.max,
                    defaults={"min": 0, "max": 1},
                ),
                Panel(
                    "Canary predictions vs champion (prediction_psi gate)",
                    "PSI between the canary's predictions and the champion's on the same traffic (the "
                    "positive-class probability, the predicted class or the predicted value, per task): "
                    "what the prediction_psi gate and ShepherdCanaryDrift compare. Near 0: the two models agree "
                    "on this population. Above the dashed line (the default gate, "
                    f"{_GATES.prediction_psi.max:g}) the canary is rolled back, even if its error rate and "
                    f"latency are fine: it would change the decisions made on its scores. {RUNBOOK_NOTE}",
                    "none",
                    (
                        Query(
                            f'{DRIFT_FEATURE_SCORE}{{{MODEL}, role="canary", reference="champion", '
                            f'feature="{PREDICTION_FEATURE}"}}',
                            "{{model}} v{{version}}",
                        ),
                    ),
                    threshold=_GATES.prediction_psi.max,
                ),
                Panel(
                    "Dataset drift detected",
                    "Evidently's dataset-drift verdict per revision and reference (drift when the drift share "
                    f"reaches {DRIFT_SHARE_THRESHOLD:.0%}, the champion-drift alert's rule too). Red on the "
                    "champion vs training for long: expect a retraining run.",
                    "none",
                    (Query(f"{DRIFT_DETECTED}{{{MODEL}}}", "{{model}} v{{version}} {{role}} vs {{reference}}"),),
                    kind="state-timeline",
                    options={"showValue": "never", "mergeValues": True},
                    defaults={
                        "mappings": [
                            {
                                "type": "value",
                                "options": {
                                    "0": {"text": "no drift", "color": "green"},
                                    "1": {"text": "drift", "color": "red"},
                                },
                            }
                        ]
                    },
                ),
                Panel(
                    "Per-feature drift score (top 10)",
                    "Which features drive the drift: the ten highest scores per feature and reference ("
                    f"`{PREDICTION_FEATURE}` is the prediction's score). {_PSI_NOTE} Check a drifting "
                    "feature's upstream source and recent changes before blaming the model.",
                    "none",
                    (
                        Query(
                            f"topk(10, max by (model, role, reference, feature) ({DRIFT_FEATURE_SCORE}{{{MODEL}}}))",
                            "{{model}} {{role}} vs {{reference}}: {{feature}}",
                            instant=True,
                        ),
                    ),
                    kind="bargauge",
                    options={"displayMode": "basic", "orientation": "horizontal", "reduceOptions": {}},
                ),
                Panel(
                    "Rows in the drift window",
                    "Logged rows in each revision's current drift window (request and response paired). The "
                    "drift service computes drift only once a window holds its --min-rows (200 by default): "
                    "until then the drift gates are inconclusive and the drift alerts silent. A canary at a "
                    "small traffic step takes a while to fill its window.",
                    "short",
                    (Query(f"{DRIFT_WINDOW_ROWS}{{{MODEL}}}", REVISION),),
                ),
                Panel(
                    "Payload events received by the drift service",
                    "KServe payload-log CloudEvents the drift service receives, by outcome (invalid: an event "
                    "it could not read). A flat line while the models serve traffic: the payload logger or the "
                    "drift service is broken, and the drift panels are stale.",
                    "cps",
                    (Query(f"sum by (outcome) (rate({DRIFT_EVENTS_TOTAL}[{RATE}]))", "{{outcome}}"),),
                ),
            ),
        ),
        Row(
            "Live quality",
            (
                Panel(
                    f"Live ROC AUC by revision ({CHAMPION_QUALITY_BELOW_MINIMUM})",
                    "ROC AUC of each served revision (champion and canary) on its latest labelled predictions "
                    "(labels come back with `shepherd feedback`; `shepherd quality <model>` prints the same "
                    "numbers). The dashed red line is the model's evaluation.minimum from its champion's spec: "
                    f"a champion below it for {CHAMPION_QUALITY_FOR}, on at least {QUALITY_MIN_LABELLED_ROWS} "
                    f"labelled predictions, is retrained ({CHAMPION_QUALITY_BELOW_MINIMUM}). 0.5 is a coin "
                    f"toss. No line: no labels yet, or a window with one class only. {RUNBOOK_NOTE}",
                    "none",
                    (
                        Query(f'{QUALITY}{{{MODEL}, metric="roc_auc"}}', REVISION),
                        Query(
                            f'max by (model, metric) ({QUALITY_MINIMUM}{{{MODEL}, metric="roc_auc"}})',
                            "{{model}} minimum",
                        ),
                    ),
                    defaults={"max": 1},
                    overrides=(_bound_line(".* minimum"),),
                ),
                Panel(
                    f"Live log loss by revision ({CHAMPION_QUALITY_ABOVE_MAXIMUM})",
                    "Log loss of each served revision on its latest labelled predictions: lower is better, it "
                    "punishes confident wrong scores. The dashed red line is the model's evaluation.maximum: "
                    f"a champion above it for {CHAMPION_QUALITY_FOR}, on at least {QUALITY_MIN_LABELLED_ROWS} "
                    f"labelled predictions, is retrained ({CHAMPION_QUALITY_ABOVE_MAXIMUM}). {RUNBOOK_NOTE}",
                    "none",
                    (
                        Query(f'{QUALITY}{{{MODEL}, metric="log_loss"}}', REVISION),
                        Query(
                            f'max by (model, metric) ({QUALITY_MAXIMUM}{{{MODEL}, metric="log_loss"}})',
                            "{{model}} maximum",
                        ),
                    ),
                    width=6,
                    defaults={"min": 0},
                    overrides=(_bound_line(".* maximum"),),
                ),
                Panel(
                    f"Live calibration error by revision ({CHAMPION_QUALITY_ABOVE_MAXIMUM})",
                    "Expected calibration error (ece, 10 bins) on the latest labelled predictions: how far the "
                    "predicted probabilities are from the observed rates (0: a score of 0.3 is right 30 % of "
                    "the time). The dashed red line is evaluation.maximum; a champion above it for "
                    f"{CHAMPION_QUALITY_FOR} is retrained. Ranking (ROC AUC) can hold while calibration "
                    "drifts: thresholds on the score then decide wrongly.",
                    "none",
                    (
                        Query(f'{QUALITY}{{{MODEL}, metric="ece"}}', REVISION),
                        Query(
                            f'max by (model, metric) ({QUALITY_MAXIMUM}{{{MODEL}, metric="ece"}})',
                            "{{model}} maximum",
                        ),
                    ),
                    width=6,
                    defaults={"min": 0},
                    overrides=(_bound_line(".* maximum"),),
                ),
                Panel(
                    "Live quality by revision: multiclass and regression (share metrics)",
                    "Multiclass: accuracy, macro F1, balanced accuracy and each class's recall (recall.<class>) "
                    "of the predicted classes; regression: R² and MAPE; on the latest labelled predictions. A "
                    "champion below its evaluation.minimum (or above its maximum) for "
                    f"{CHAMPION_QUALITY_FOR} is retrained, as for a binary model. {RUNBOOK_NOTE}",
                    "none",
                    (
                        Query(
                            f'{QUALITY}{{{MODEL}, metric=~"accuracy|macro_f1|balanced_accuracy|recall[.].+|r2|mape"}}',
                            "{{model}} v{{version}} {{role}} {{metric}}",
                        ),
                    ),
                    width=12,
                ),
                Panel(
                    "Live error by revision: regression (target units)",
                    "RMSE and MAE of the predicted values on the latest labelled predictions, in the target's "
                    "units (e.g. dollars). A rise on the champion with a flat drift share: the relation between "
                    "inputs and target changed (concept drift), retraining on fresh labels is the fix.",
                    "short",
                    (Query(f'{QUALITY}{{{MODEL}, metric=~"rmse|mae"}}', "{{model}} v{{version}} {{role}} {{metric}}"),),
                    width=12,
                ),
                Panel(
                    "Labelled predictions in the quality window",
                    "Predictions with a label fed back, per revision, in its quality window (the latest "
                    "labelled predictions, 1000 by default: the drift service's --quality-window). Below the "
                    f"line ({QUALITY_MIN_LABELLED_ROWS}) the champion-quality alerts give no verdict. Flat "
                    "while the model serves: labels stopped coming back (is the `shepherd feedback` job "
                    "running?).",
                    "short",
                    (Query(f"{QUALITY_LABELLED_ROWS}{{{MODEL}}}", REVISION),),
                    width=8,
                    threshold=QUALITY_MIN_LABELLED_ROWS,
                ),
                Panel(
                    "Median label delay by revision",
                    "Median time from a prediction to its label, over the revision's quality window. Live "
                    "quality describes predictions this old: a champion's quality drop shows here only a label "
                    "delay after it began, and a new revision gets its first numbers only that long after it "
                    "starts serving.",
                    "s",
                    (Query(f"{QUALITY_LABEL_DELAY_SECONDS}{{{MODEL}}}", REVISION),),
                    width=8,
                ),
                Panel(
                    "Feedback labels received by outcome",
                    "Labels per second the drift service receives (`shepherd feedback`, POST "
                    "/models/<model>/feedback), by outcome: accepted (recorded), duplicate (the same label "
                    "again: harmless, resends are safe), skipped (no logged prediction to join, with "
                    "--skip-unknown) or rejected (the batch was refused; the response names labels[i] and the "
                    "field). A rise of rejected or skipped: the label feed broke.",
                    "suffix: labels/s",
                    (
                        Query(
                            f"sum by (model, outcome) (rate({FEEDBACK_LABELS_TOTAL}{{{MODEL}}}[{RATE}]))",
                            "{{model}} {{outcome}}",
                        ),
                    ),
                    width=8,
                    custom={"stacking": {"mode": "normal"}, "fillOpacity": 30},
                    overrides=(_color_by_name(".* rejected", "red"), _color_by_name(".* skipped", "orange")),
                ),
            ),
        ),
        Row(
            "Predictions",
            (
                Panel(
                    "Prediction score distribution",
                    "How many rows got each prediction score (all selected models' revisions together): the "
                    "positive-class probability (binary), the predicted class's index in target.classes "
                    "(multiclass: one bucket per class), the predicted value (regression: buckets at the "
                    "training target's deciles). A shift of mass between buckets without a change in the "
                    "inputs' drift is a model change; with it, the world changed.",
                    "short",
                    (
                        Query(
                            f"sum by (le) (increase({PREDICTION_SCORE}_bucket{{{MODEL}}}[{RATE}]))",
                            "{{le}}",
                            format="heatmap",
                        ),
                    ),
                    kind="heatmap",
                    width=12,
                    options={
                        "calculate": False,
                        "yAxis": {"axisLabel": "prediction score (bucket upper bound)"},
                        "cellGap": 1,
                        "color": {"mode": "scheme", "scheme": "Blues"},
                    },
                ),
                Panel(
                    "Mean prediction score by revision",
                    "Average score per revision: the positive-class probability (binary), the predicted value "
                    "(regression). Canary and champion see the same population (the split is random), so a "
                    "gap between them is the models disagreeing; a move of both together is the population "
                    "changing.",
                    "none",
                    (
                        Query(
                            f"sum by ({BY_REVISION}) (rate({PREDICTION_SCORE}_sum{{{MODEL}}}[{RATE}]))\n"
                            f"/\nsum by ({BY_REVISION}) (rate({PREDICTION_SCORE}_count{{{MODEL}}}[{RATE}]))",
                            REVISION,
                        ),
                    ),
                    width=12,
                ),
                Panel(
                    "Score quantiles by revision",
                    "10th, 50th and 90th percentile of the prediction score per revision (interpolated "
                    "within its buckets: 0.1 wide for probabilities, the training deciles for values). A "
                    "collapsed band (p10 close to p90) means the model has stopped discriminating.",
                    "none",
                    tuple(
                        Query(
                            f"histogram_quantile({q}, sum by ({BY_REVISION}, le) "
                            f"(rate({PREDICTION_SCORE}_bucket{{{MODEL}}}[{RATE}])))",
                            f"{REVISION} p{round(q * 100)}",
                        )
                        for q in (0.1, 0.5, 0.9)
                    ),
                    width=24,
                ),
            ),
        ),
        Row(
            "Volume",
            (
                Panel(
                    "Request rate by revision",
                    "Requests per second per served version, all outcomes. Drops to zero: clients stopped "
                    "calling or the revision is down (ShepherdNoTraffic / ShepherdPredictorDown).",
                    "reqps",
                    (
                        Query(
                            f"sum by ({BY_REVISION}) (rate({REQUESTS_TOTAL}{{{MODEL}}}[{RATE}]))",
                            REVISION,
                        ),
                    ),
                    width=8,
                ),
                Panel(
                    "Invalid request share",
                    "Share of requests refused as the client's mistake (4xx naming the field: a missing "
                    "feature, an unknown category, a value out of the spec's range). A jump means an upstream "
                    "client or feature pipeline changed; the response bodies name the field.",
                    "percentunit",
                    (
                        Query(
                            f'sum by ({BY_REVISION}) (rate({REQUESTS_TOTAL}{{{MODEL}, outcome="invalid"}}[{RATE}]))\n'
                            f"/\nsum by ({BY_REVISION}) (rate({REQUESTS_TOTAL}{{{MODEL}}}[{RATE}]))",
                            REVISION,
                        ),
                    ),
                    width=8,
                ),
                Panel(
                    "Rows scored per second",
                    "Rows (instances) scored per second per revision: a request may carry many rows. This is "
                    "the volume the drift windows fill from.",
                    "suffix: rows/s",
                    (Query(f"sum by ({BY_REVISION}) (rate({ROWS_TOTAL}{{{MODEL}}}[{RATE}]))", REVISION),),
                    width=8,
                ),
            ),
        ),
    ),
)

DASHBOARDS = (ROLLOUTS, MODEL_HEALTH)


def _target(query: Query, ref: str) -> dict:
    target = {"datasource": DATASOURCE, "refId": ref, "expr": query.expr, "legendFormat": query.legend or "__auto"}
    if query.instant:
        target.update(instant=True, range=False)
    if query.format != "time_series":
        target["format"] = query.format
    return target


def _panel(panel: Panel, panel_id: int, x: int, y: int) -> dict:
    defaults: dict = {"unit": panel.unit, **panel.defaults}
    if panel.custom:
        defaults["custom"] = panel.custom
    if panel.threshold is not None:
        defaults["thresholds"] = {
            "mode": "absolute",
            "steps": [{"color": "green", "value": None}, {"color": "red", "value": panel.threshold}],
        }
        defaults.setdefault("custom", {})["thresholdsStyle"] = {"mode": "dashed"}
    out = {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": panel.width, "h": panel.height},
        "fieldConfig": {"defaults": defaults, "overrides": list(panel.overrides)},
        "options": panel.options,
        "targets": [_target(q, chr(ord("A") + i)) for i, q in enumerate(panel.queries)],
    }
    if panel.transformations:
        out["transformations"] = list(panel.transformations)
    return out


def _templating(dashboard: Dashboard) -> dict:
    query = f"label_values({dashboard.model_values_from}, model)"
    return {
        "list": [
            {
                "name": "datasource",
                "label": "Data source",
                "type": "datasource",
                "query": "prometheus",
                "current": {},
                "hide": 0,
                "includeAll": False,
                "multi": False,
                "refresh": 1,
                "regex": "",
            },
            {
                "name": "model",
                "label": "Model",
                "type": "query",
                "datasource": DATASOURCE,
                "definition": query,
                "query": {"query": query, "refId": "ModelVariable"},
                "current": {},
                "hide": 0,
                "includeAll": True,
                "allValue": ".*",
                "multi": True,
                "refresh": 2,
                "sort": 1,
                "regex": "",
            },
        ]
    }


def _annotations(dashboard: Dashboard) -> dict:
    built_in = {
        "builtIn": 1,
        "datasource": {"type": "grafana", "uid": "-- Grafana --"},
        "enable": True,
        "hide": True,
        "iconColor": "rgba(0, 211, 255, 1)",
        "name": "Annotations & Alerts",
        "type": "dashboard",
    }
    return {
        "list": [
            built_in,
            *(
                {
                    "name": a.name,
                    "datasource": DATASOURCE,
                    "enable": True,
                    "iconColor": a.color,
                    "expr": a.expr,
                    "step": "1m",
                    "titleFormat": a.title,
                    "textFormat": a.text,
                    "tagKeys": "model,action",
                    "useValueForTime": False,
                }
                for a in dashboard.annotations
            ),
        ]
    }


def build(dashboard: Dashboard) -> dict:
    """The dashboard's Grafana JSON model."""
    panels, panel_id, y = [], 1, 0
    for row in dashboard.rows:
        panels.append(
            {
                "id": panel_id,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": {"x": 0, "y": y, "w": 24, "h": 1},
                "panels": [],
            }
        )
        panel_id, y, x, row_height = panel_id + 1, y + 1, 0, 0
        for panel in row.panels:
            if x + panel.width > 24:
                x, y, row_height = 0, y + row_height, 0
            panels.append(_panel(panel, panel_id, x, y))
            panel_id, x, row_height = panel_id + 1, x + panel.width, max(row_height, panel.height)
        y += row_height
    others = [d for d in DASHBOARDS if d.uid != dashboard.uid]
    return {
        "id": None,
        "uid": dashboard.uid,
        "title": dashboard.title,
        "description": dashboard.description,
        "tags": ["shepherd"],
        "timezone": "",
        "editable": True,
        "graphTooltip": 1,  # shared crosshair: line up a canary's errors with its traffic step
        "refresh": "10s",
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "links": [
            *(
                {"type": "link", "title": d.title, "url": f"/d/{d.uid}?${{__url_time_range}}&${{model:queryparam}}"}
                for d in others
            ),
        ],
        "templating": _templating(dashboard),
        "annotations": _annotations(dashboard),
        "panels": panels,
    }


def filename(dashboard: Dashboard) -> str:
    return f"{dashboard.uid}.json"


def render(dashboard: Dashboard) -> str:
    return json.dumps(build(dashboard), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, required=True, help="directory for the dashboard JSON files")
    parser.add_argument("--helm-output", type=Path, default=None, help="also write copies here (the Helm chart's)")
    args = parser.parse_args(argv)
    for directory in filter(None, (args.output, args.helm_output)):
        directory.mkdir(parents=True, exist_ok=True)
        for dashboard in DASHBOARDS:
            path = directory / filename(dashboard)
            path.write_text(render(dashboard))
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
