"""`shepherd feedback` and `shepherd quality`: ground truth back into the platform, and what it says about the
served models."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from pipelines.cli.common import HomeOption, ModelArgument, NoBackend, app, console, friendly, out
from pipelines.settings import Settings

FORMATS = ("csv", "parquet", "jsonl")
CHUNK_ROWS = 5000  # per request; the service takes at most components.outcomes.MAX_FEEDBACK_ITEMS


def _read_table(source: str, file_format: str | None):
    """The feedback file (or stdin for `-`) as a DataFrame."""
    import io

    import pandas as pd

    from components.errors import DataSourceError

    if source == "-":
        data, name = io.BytesIO(sys.stdin.buffer.read()), "stdin"
        kind = file_format or "jsonl"
    else:
        path = Path(source)
        if not path.is_file():
            raise DataSourceError(f"feedback file {source!r} does not exist")
        data, name = path, source
        suffix = path.suffix.lower().lstrip(".")
        kind = file_format or {
            "csv": "csv",
            "parquet": "parquet",
            "jsonl": "jsonl",
            "ndjson": "jsonl",
            "json": "jsonl",
        }.get(suffix)
        if kind is None:
            raise DataSourceError(
                f"cannot tell the format of {source!r} from its suffix", hint=f"pass --format ({', '.join(FORMATS)})"
            )
    try:
        if kind == "csv":
            return pd.read_csv(data, dtype=str, keep_default_na=False, na_values=[""])
        if kind == "parquet":
            return pd.read_parquet(data)
        return pd.read_json(data, lines=True, dtype=False)
    except Exception as exc:  # pandas raises many parser errors; all mean "unreadable file"
        raise DataSourceError(f"{name} is not readable as {kind}: {exc}") from exc


def _plain(value):
    """A JSON-ready scalar from a pandas cell (None for a missing one)."""
    import pandas as pd

    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat() if value.tzinfo is not None else value.tz_localize("UTC").isoformat()
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return value


def feedback_items(frame, id_column: str, entity_column: str, time_column: str, label_column: str) -> list[dict]:
    """The feedback body's items: by id when the table has `id_column`, else by entity and event time."""
    from components.errors import DataSourceError

    columns = set(frame.columns)
    if label_column not in columns:
        raise DataSourceError(
            f"the feedback table has no {label_column!r} column; columns are {sorted(columns)}",
            hint="name the label column with --label-column",
        )
    if id_column in columns:
        keys = {"id": id_column}
    elif entity_column in columns and time_column in columns:
        keys = {"entity": entity_column, "event_time": time_column}
    else:
        raise DataSourceError(
            f"the feedback table needs an {id_column!r} column (prediction ids), or {entity_column!r} and "
            f"{time_column!r}; columns are {sorted(columns)}",
            hint="name them with --id-column, or --entity-column and --time-column",
        )
    items = []
    for record in frame.to_dict(orient="records"):
        item = {field: _plain(record[column]) for field, column in keys.items()}
        item["label"] = _plain(record[label_column])
        items.append({k: v for k, v in item.items() if v is not None})
    return items


def _endpoint(model: str, url: str | None, settings: Settings) -> tuple[str, str | None]:
    """Where to post and the bearer token: the monitoring service at `url`, else the local plane."""
    import os

    from serving.backends import PlaneProcess
    from serving.plane_auth import token_for

    if url:
        return f"{url.rstrip('/')}/models/{model}/feedback", os.environ.get("SHEPHERD_FEEDBACK_TOKEN")
    plane = PlaneProcess.find(settings.home)
    if plane is None:
        raise NoBackend(
            f"no serving plane is running for {settings.home}",
            hint="start one with `shepherd up`, or pass --url (a cluster's monitoring service)",
        )
    return f"{plane.url}/v1/models/{model}/feedback", token_for(plane.url)


@app.command()
@friendly
def feedback(
    model: ModelArgument,
    source: Annotated[str, typer.Argument(help="CSV, Parquet or JSON-lines file of labels; '-' reads stdin.")],
    file_format: Annotated[
        str | None, typer.Option("--format", help="csv | parquet | jsonl [default: from the suffix; stdin: jsonl].")
    ] = None,
    label_column: Annotated[str, typer.Option(help="Column holding the true label.")] = "label",
    id_column: Annotated[str, typer.Option(help="Column holding prediction ids (as answered).")] = "id",
    entity_column: Annotated[str, typer.Option(help="Entity key column, when there are no ids.")] = "entity",
    time_column: Annotated[
        str, typer.Option(help="Event time column (ISO 8601 with a zone, or unix s).")
    ] = "event_time",
    skip_unknown: Annotated[
        bool, typer.Option(help="Leave out labels for predictions the ledger never saw instead of refusing.")
    ] = False,
    url: Annotated[
        str | None,
        typer.Option(help="A monitoring service URL (token in SHEPHERD_FEEDBACK_TOKEN) [default: the local plane]."),
    ] = None,
    home: HomeOption = None,
) -> None:
    """Send ground truth for served predictions: by prediction id (the `id` each prediction was answered
    with, V2: `prediction_id`), or by entity key and event time (the latest prediction for that entity at
    or before it).

    Labels are the target's values (e.g. Yes/No), or 1/0, true/false. Each part of the file is recorded all
    or nothing; labels already recorded count as duplicates, so sending a file again is safe.

    Example: shepherd feedback churn labels.csv   (columns: id,label)
    """
    import httpx

    from components.errors import DataSourceError
    from components.outcomes import FeedbackRejected

    if file_format is not None and file_format not in FORMATS:
        raise DataSourceError(f"--format {file_format!r}: expected one of {', '.join(FORMATS)}")
    settings = Settings.from_env(home=home)
    frame = _read_table(source, file_format)
    items = feedback_items(frame, id_column, entity_column, time_column, label_column)
    if not items:
        raise DataSourceError(f"{source} holds no labels")
    target, token = _endpoint(model, url, settings)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    totals = {"accepted": 0, "duplicates": 0, "skipped": 0}
    for start in range(0, len(items), CHUNK_ROWS):
        part = items[start : start + CHUNK_ROWS]
        try:
            response = httpx.post(
                target,
                json={"labels": part},
                params={"skip_unknown": "true"} if skip_unknown else None,
                headers=headers,
                timeout=120,
            )
        except httpx.HTTPError as exc:
            raise NoBackend(f"cannot reach {target}: {type(exc).__name__}: {exc}") from exc
        body = _json(response)
        if response.status_code == 422 and isinstance(body.get("errors"), list):
            raise FeedbackRejected(
                _renumber(body["errors"], start),
                hint="labels[i] is row i of the file, from 0; "
                + (f"rows before {start} were recorded; " if start else "")
                + "fix or drop the rows named (--skip-unknown leaves out predictions the ledger never saw) "
                "and send the file again: labels already recorded count as duplicates",
            )
        if response.status_code != 200:
            raise NoBackend(f"{target} answered {response.status_code}: {body.get('error', response.text[:300])}")
        for key in totals:
            totals[key] += int(body.get(key, 0))
        if len(items) > CHUNK_ROWS:
            console.print(f"  {min(start + CHUNK_ROWS, len(items))}/{len(items)} rows sent")
    out.print(
        f"[green]{totals['accepted']}[/] label(s) recorded for {model}"
        + (f", {totals['duplicates']} already recorded" if totals["duplicates"] else "")
        + (f", {totals['skipped']} for unknown predictions left out" if totals["skipped"] else "")
    )


def _renumber(errors: list[str], offset: int) -> list[str]:
    """`labels[i]` of a part as the file's row number."""
    import re

    return [re.sub(r"labels\[(\d+)\]", lambda m: f"labels[{int(m.group(1)) + offset}]", e) for e in errors]


def _json(response) -> dict:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


quality_app = typer.Typer(
    help="Live model quality: served predictions joined with the labels fed back.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(quality_app, name="quality")
QualityUrlOption = Annotated[
    str | None, typer.Option("--url", help="A monitoring service URL [default: the local plane's].")
]


def _quality(model: str, url: str | None, home) -> dict:
    import httpx

    from serving.backends import PlaneProcess

    if url:
        base = url.rstrip("/")
    else:
        plane = PlaneProcess.find(Settings.from_env(home=home).home)
        if plane is None:
            raise NoBackend("no serving plane is running", hint="`shepherd up`, or --url")
        base = f"{plane.url}/drift"
    try:
        body = httpx.get(f"{base}/models/{model}/quality", timeout=30).json()
    except (httpx.HTTPError, ValueError) as exc:
        raise NoBackend(f"cannot read live quality from {base}: {exc}") from exc
    if "error" in body:
        raise NoBackend(body["error"])
    return body


# The live metrics a table shows first, per task (binary, multiclass, regression); per-class recalls follow.
HEADLINE_LIVE_METRICS = (
    "roc_auc", "f1", "log_loss", "brier", "ece", "positive_rate",
    "accuracy", "macro_f1", "balanced_accuracy",
    "rmse", "mae", "r2", "mape",
)  # fmt: skip


def _metric_columns(revisions: list[dict]) -> list[str]:
    """The live metrics the revisions carry, headline ones first (the task decides which exist)."""
    present = {m for r in revisions for m in r["metrics"]}
    if not present:
        present = {"roc_auc", "f1", "log_loss", "brier", "ece", "positive_rate"}
    rest = present - set(HEADLINE_LIVE_METRICS) - {"predicted_positive_rate"}
    return [m for m in HEADLINE_LIVE_METRICS if m in present] + sorted(rest)


@quality_app.command("status")
@friendly
def quality_status(model: ModelArgument, url: QualityUrlOption = None, home: HomeOption = None) -> None:
    """Live quality per served revision, from its predictions joined with the labels fed back."""
    body = _quality(model, url, home)
    table = Table(
        title=f"{model}: live quality ({body['labels']} labels for {body['predictions']} logged predictions; "
        f"window {body['window']} labelled rows per revision)"
    )
    shown = _metric_columns(body["revisions"])
    for column in ("revision", "labelled", *(m.replace("_rate", " rate") for m in shown), "label delay"):
        table.add_column(column)
    for r in body["revisions"]:

        def cell(name: str, metrics=r["metrics"]) -> str:
            return f"{metrics[name]:.3f}" if name in metrics else "-"

        table.add_row(
            f"v{r['version']} ({r['role']})",
            str(r["labelled_rows"]),
            *(cell(m) for m in shown),
            f"{r['label_delay_seconds']:.0f} s",
        )
    out.print(table)
    if not body["revisions"]:
        console.print("no labelled predictions yet: send labels with `shepherd feedback`")


@quality_app.command("check")
@friendly
def quality_check(
    model: ModelArgument,
    retrain: Annotated[bool, typer.Option(help="Start a retraining run when the champion breaks a bound.")] = True,
    wait: Annotated[
        bool, typer.Option(help="Run the retraining here and wait for it (its progress on this terminal).")
    ] = False,
    home: HomeOption = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI [env: MLFLOW_TRACKING_URI].")] = None,
    url: QualityUrlOption = None,
) -> None:
    """The embedded default's champion-quality alert: the champion's live quality against its spec's
    evaluation.minimum / maximum, on at least as many labelled predictions as the alert rule needs; when a
    bound is broken, start one retraining run of the champion's stored spec (it trains on the labelled
    production rows too), as the webhook does on a cluster."""
    import contextlib

    from monitoring.rules import QUALITY_MIN_LABELLED_ROWS
    from monitoring.webhook import LocalRetrainer, record_retraining
    from pipelines.cli.common import serving_backend

    settings = Settings.from_env(home=home, tracking_uri=tracking_uri)
    body = _quality(model, url, home)
    champion = next((r for r in body["revisions"] if r["role"] == "champion"), None)
    if champion is None or champion["labelled_rows"] < QUALITY_MIN_LABELLED_ROWS:
        have = champion["labelled_rows"] if champion else 0
        console.print(
            f"no verdict on the champion of {model} yet: {have} labelled predictions, the alert needs "
            f"{QUALITY_MIN_LABELLED_ROWS} (send labels with `shepherd feedback`)"
        )
        raise typer.Exit(1)
    broken = _broken(champion)
    shown = ", ".join(f"{m} {champion['metrics'][m]:.3f}" for m in _metric_columns([champion])[:4])
    console.print(
        f"{model} v{champion['version']} (champion) on its {champion['labelled_rows']} latest labelled "
        f"predictions: {shown}"
    )
    if not broken:
        console.print("[green]within its spec's bounds[/]: nothing to do")
        return
    reason = "champion live quality: " + "; ".join(broken)
    if not retrain:
        console.print(f"[yellow]{reason}[/]: a retraining run would start (--no-retrain given)")
        return
    retrainer = LocalRetrainer(settings.home, settings.tracking_uri)
    if wait:
        with contextlib.suppress(NoBackend):
            record_retraining(serving_backend(None, settings), "models", model, f"{reason}; run in the foreground")
        console.print(f"[yellow]{reason}[/]: retraining on the source and the labelled production rows…")
        code = retrainer.foreground(model)
        if code != 0:
            raise typer.Exit(code)
        return
    started = retrainer(model, reason)
    with contextlib.suppress(NoBackend):  # with --url and no local plane there is no object to note it on
        record_retraining(serving_backend(None, settings), "models", model, f"{reason}; {started}")
    verb = "not started, one is going" if started.startswith("already running") else "started"
    console.print(f"[yellow]{reason}[/]: retraining {verb} ({started})")


def _broken(revision: dict) -> list[str]:
    """The bounds a revision's live metrics break (as RevisionQuality.broken_bounds, from its JSON)."""
    from monitoring.quality import RevisionQuality

    return RevisionQuality(**revision).broken_bounds()
