"""`shepherd history`: which version served when, and why."""

from __future__ import annotations

import re
from datetime import datetime

import typer
from rich.table import Table

from pipelines.cli.common import (
    BackendOption,
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
def history(
    model: ModelArgument,
    namespace: NamespaceOption = "models",
    home: HomeOption = None,
    tracking_uri: TrackingOption = None,
    backend: BackendOption = None,
) -> None:
    """Which version served when, and why: registrations, verdicts, rollout steps, promotions, rollbacks."""
    from components import registry

    settings = Settings.from_env(home=home, tracking_uri=tracking_uri)
    client = registry.connect(settings.tracking_uri)
    rows: list[tuple[float, str, str, str]] = []
    for v in client.search_model_versions(f"name='{model}'"):
        verdict = v.tags.get(registry.TAG_VERDICT, "-")
        rows.append((v.creation_timestamp / 1000, f"v{v.version}", "registered", f"evaluation verdict: {verdict}"))
    try:
        events = serving_backend(backend, settings).events(namespace, model)
    except NoBackend:
        events = []
        console.print("[dim]no serving plane running: registry entries only[/]")
    for e in events:
        version, _, message = e["message"].partition(": ")
        event = re.sub(r"(?<!^)(?=[A-Z])", " ", e["reason"].removeprefix("Rollout")).lower()  # RetrainStarted
        rows.append((e["time"], version, event, message))
    if not rows:
        console.print(f"nothing recorded for {model!r}")
        raise typer.Exit(1)
    aliases = client.get_registered_model(model).aliases
    table = Table(title=f"{model}: history (aliases now: {', '.join(f'@{a}=v{v}' for a, v in aliases.items())})")
    for column in ("time", "version", "event", "why"):
        table.add_column(column, overflow="fold")
    for ts, version, event, why in sorted(rows):
        table.add_row(datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S"), version, event, why)
    out.print(table)
