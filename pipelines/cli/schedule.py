"""`shepherd retrain` and `shepherd schedule ...`: retraining on demand and on a schedule. A run trains only
when something is new (labelled production rows, the source, the spec, the code); otherwise it says so."""

from __future__ import annotations

import contextlib
from typing import Annotated

import typer
from rich.table import Table

from pipelines.cli.common import (
    HomeOption,
    ModelArgument,
    NamespaceOption,
    NoBackend,
    TrackingOption,
    app,
    console,
    friendly,
    out,
    serving_backend,
)
from pipelines.settings import Settings


@app.command()
@friendly
def retrain(
    model: ModelArgument,
    reason: Annotated[str, typer.Option(help="Why, for `shepherd history`.")] = "asked for",
    wait: Annotated[bool, typer.Option(help="Run here and wait (progress on this terminal).")] = False,
    namespace: NamespaceOption = "models",
    home: HomeOption = None,
    tracking_uri: TrackingOption = None,
) -> None:
    """Retrain MODEL from its champion's stored spec on the current data (source + labelled production
    rows): one run per model at a time; a run with nothing new trains nothing and says why."""
    from monitoring.webhook import LocalRetrainer, record_retraining

    settings = Settings.from_env(home=home, tracking_uri=tracking_uri)
    retrainer = LocalRetrainer(settings.home, settings.tracking_uri)
    if (pid := retrainer.running(model)) is not None:
        console.print(f"a retraining run of {model} is already going (pid {pid}): one at a time, nothing started")
        return
    started = "run in the foreground" if wait else retrainer(model, reason)
    with contextlib.suppress(NoBackend):  # no local plane: no object to note it on
        record_retraining(serving_backend(None, settings), namespace, model, f"{reason}; {started}")
    if not wait:
        console.print(f"retraining {model}: {reason} ({started})")
        return
    code = retrainer.foreground(model)
    if code != 0:
        raise typer.Exit(code)


schedule_app = typer.Typer(
    help="Retraining on a schedule: the local plane runs them; --host makes a KFP recurring run on a cluster.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(schedule_app, name="schedule")


def _plane(home):
    settings = Settings.from_env(home=home)
    return serving_backend(None, settings)


@schedule_app.command("set")
@friendly
def schedule_set(
    model: ModelArgument,
    every: Annotated[str, typer.Option(help="How often: 30s, 15m, 24h, 7d.")],
    namespace: NamespaceOption = "models",
    host: Annotated[
        str | None, typer.Option(help="A KFP API endpoint: create a recurring run there instead of on the local plane.")
    ] = None,
    tracking_uri: TrackingOption = None,
    feature_repo: Annotated[
        str | None, typer.Option(envvar="SHEPHERD_FEATURE_REPO", help="With --host: the steps' shared Feast store.")
    ] = None,
    home: HomeOption = None,
) -> None:
    """Retrain MODEL every --every. Locally the plane starts `shepherd retrain` when due (one run at a time,
    missed runs not made up); with --host, a KFP recurring run of the compiled pipeline with the champion's
    spec (max concurrency 1, no catch-up)."""
    from components.errors import SpecError
    from serving.schedules import describe, parse_duration

    try:
        seconds = parse_duration(every)
    except ValueError as exc:
        raise SpecError(f"--every: {exc}") from None
    if host:
        from pipelines.submit import schedule_run

        settings = Settings.from_env(home=home, tracking_uri=tracking_uri, feature_repo=feature_repo)
        job = schedule_run(host, model, seconds, settings.tracking_uri, settings.feature_repo)
        console.print(f"recurring run {job} on {host}: {model} every {describe(seconds)}")
        return
    _plane(home).set_schedule(model, seconds, namespace)
    console.print(f"{model} retrains every {describe(seconds)} on the local plane (next: in {describe(seconds)})")


@schedule_app.command("list")
@friendly
def schedule_list(home: HomeOption = None) -> None:
    """The local plane's retraining schedules."""
    import time

    from serving.schedules import describe

    items = _plane(home).schedules()
    if not items:
        console.print("no schedules: `shepherd schedule set MODEL --every 24h`")
        return
    table = Table(title="retraining schedules")
    for column in ("model", "every", "next run in"):
        table.add_column(column)
    for item in items:
        left = max(0, round(item["nextAt"] - time.time()))
        table.add_row(f"{item['namespace']}/{item['model']}", describe(item["everySeconds"]), f"{left} s")
    out.print(table)


@schedule_app.command("delete")
@friendly
def schedule_delete(model: ModelArgument, home: HomeOption = None) -> None:
    """Stop retraining MODEL on a schedule (a run already going finishes)."""
    _plane(home).delete_schedule(model)
    console.print(f"{model}: no longer retrained on a schedule")
