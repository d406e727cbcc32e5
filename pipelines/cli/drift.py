"""`shepherd drift ...`: what the drift service sees (Evidently drift per revision), and the embedded
default's champion-drift alert."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from pipelines.cli.common import (
    HomeOption,
    ModelArgument,
    NoBackend,
    TrackingOption,
    app,
    console,
    friendly,
    out,
    serving_backend,
)
from pipelines.settings import Settings

drift_app = typer.Typer(
    help="What the drift service sees: Evidently drift per revision.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(drift_app, name="drift")


def _drift_url(home, drift_url: str | None) -> str:
    from serving.backends import PlaneProcess

    if drift_url:
        return drift_url.rstrip("/")
    plane = PlaneProcess.find(Settings.from_env(home=home).home)
    if plane is None:
        raise NoBackend("no serving plane (and its drift service) is running", hint="`shepherd up`, or --drift-url")
    return f"{plane.url}/drift"


DriftUrlOption = Annotated[str | None, typer.Option(help="The drift service URL [default: the local plane's].")]


@drift_app.command("status")
@friendly
def drift_status(model: ModelArgument, home: HomeOption = None, drift_url: DriftUrlOption = None) -> None:
    """The latest drift results per revision: share of drifted columns and the top columns (PSI)."""
    import httpx

    body = httpx.get(f"{_drift_url(home, drift_url)}/models/{model}", timeout=30).json()
    table = Table(title=f"{model}: drift (windows: {body['windows']}, computed from {body['minRows']} rows)")
    for column in ("revision", "reference", "rows", "drifted", "share", "top columns (PSI)"):
        table.add_column(column)
    for r in body["results"]:
        top = ", ".join(f"{c} {r['scores'][c]:.2f}" for c in r["drifted"][:3]) or "-"
        drifted = "[red]DRIFT[/]" if r["detected"] else "no"
        table.add_row(
            f"v{r['version']} ({r['role']})", r["reference"], str(r["rows"]), drifted, f"{r['share']:.0%}", top
        )
    out.print(table)


@drift_app.command("check")
@friendly
def drift_check(
    model: ModelArgument,
    retrain: Annotated[bool, typer.Option(help="Start a retraining run when the champion has drifted.")] = True,
    home: HomeOption = None,
    tracking_uri: TrackingOption = None,
    drift_url: DriftUrlOption = None,
) -> None:
    """The embedded default's champion-drift alert: the same threshold as ShepherdChampionDrift; on drift,
    start one retraining run of the champion's stored spec (as the webhook does on a cluster)."""
    import httpx

    from monitoring.rules import DRIFT_MIN_WINDOW_ROWS, DRIFT_SHARE_THRESHOLD
    from monitoring.webhook import LocalRetrainer, record_retraining

    settings = Settings.from_env(home=home, tracking_uri=tracking_uri)
    body = httpx.get(f"{_drift_url(home, drift_url)}/models/{model}", timeout=30).json()
    champion = next((r for r in body["results"] if r["role"] == "champion" and r["reference"] == "training"), None)
    if champion is None or champion["rows"] < DRIFT_MIN_WINDOW_ROWS:
        console.print(f"no drift result for the champion of {model} yet (it needs {body['minRows']} logged rows)")
        raise typer.Exit(1)
    top = ", ".join(f"{c} {champion['scores'][c]:.2f}" for c in champion["drifted"][:4]) or "none"
    share = champion["share"]
    console.print(
        f"{model} v{champion['version']} (champion) vs training: {share:.0%} of features drifted "
        f"(alert at {DRIFT_SHARE_THRESHOLD:.0%}); top PSI: {top}"
    )
    if share < DRIFT_SHARE_THRESHOLD:
        console.print("[green]no drift[/]: nothing to do")
        return
    if not retrain:
        console.print("[yellow]drift[/]: a retraining run would start (--no-retrain given)")
        return
    reason = f"champion drift {share:.0%} (top PSI: {top})"
    started = LocalRetrainer(settings.home, settings.tracking_uri)(model, reason)
    with contextlib.suppress(NoBackend):  # with --drift-url and no local plane there is no object to note it on
        record_retraining(serving_backend(None, settings), "models", model, f"{reason}; {started}")
    verb = "not started, one is going" if started.startswith("already running") else "started"
    console.print(f"[yellow]drift[/]: retraining {verb} ({started})")


@drift_app.command("report")
@friendly
def drift_report(
    model: ModelArgument,
    role: Annotated[str, typer.Option(help="champion or canary.")] = "champion",
    reference: Annotated[str, typer.Option(help="training (the model's training sample) or champion.")] = "training",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="HTML file [default: drift-<model>.html].")
    ] = None,
    home: HomeOption = None,
    drift_url: DriftUrlOption = None,
) -> None:
    """Save Evidently's HTML drift report for one revision's live window against a reference."""
    import httpx

    response = httpx.get(
        f"{_drift_url(home, drift_url)}/models/{model}/report",
        params={"role": role, "reference": reference},
        timeout=120,
    )
    if response.status_code != 200:
        console.print(f"[red]error:[/] {response.json().get('error', response.text)}")
        raise typer.Exit(1)
    path = output or Path(f"drift-{model}-{role}-vs-{reference}.html")
    path.write_text(response.text)
    console.print(f"wrote {path} ({len(response.text) // 1024} KiB); open it in a browser")
