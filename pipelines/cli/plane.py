"""`shepherd up | traffic | down | status`: the local serving plane (KServe InferenceService semantics on
this machine)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from pipelines.cli.common import (
    HomeOption,
    SpecOption,
    TrackingOption,
    app,
    console,
    friendly,
    load_model_spec,
    out,
)
from pipelines.settings import DEFAULT_SPEC, Settings


@app.command()
@friendly
def up(
    port: Annotated[int, typer.Option(help="Port of the router and admin API.")] = 8080,
    home: HomeOption = None,
    tracking_uri: TrackingOption = None,
) -> None:
    """Start the local serving plane in the background: KServe InferenceService semantics on this machine.

    One real KServe ModelServer per revision, a router that splits traffic by the object's canary
    percentage on KServe's URL paths, and an admin API. Objects applied before are served again.
    """
    from serving.backends import start_plane

    settings = Settings.from_env(home=home, tracking_uri=tracking_uri)
    console.print(f"starting the serving plane on port {port} (state in {settings.home / 'serving'})…")
    plane = start_plane(settings.home, settings.tracking_uri, port, feature_repo=settings.feature_repo)
    console.print(f"[green]up[/]: {plane.url} (pid {plane.pid}); try `shepherd status`")


@app.command()
@friendly
def traffic(
    requests: Annotated[int, typer.Option("--requests", "-n", help="How many requests to send.")] = 200,
    batch: Annotated[int, typer.Option(help="Rows per request.")] = 1,
    where: Annotated[
        str | None,
        typer.Option(help="Only customers matching this pandas query, e.g. \"contract == 'Month-to-month'\"."),
    ] = None,
    held_out: Annotated[
        bool, typer.Option(help="Only rows the spec's holdout keeps out of training (no model learned from them).")
    ] = False,
    labels_out: Annotated[
        Path | None,
        typer.Option(help="Write each answered prediction's id and its real label (the source's target) as CSV."),
    ] = None,
    spec: SpecOption = DEFAULT_SPEC,
    home: HomeOption = None,
) -> None:
    """Send real rows from the spec's source through the local plane and show which revision answered.

    --where picks a segment (a shifted population: what drift looks like to the drift service);
    --labels-out keeps the ground truth of what was answered, for `shepherd feedback` later."""
    import pandas as pd

    from components.data import load_source, split_source
    from components.train import split
    from serving.backends import PlaneProcess
    from serving.traffic import describe_predictions, instances, send

    model_spec = load_model_spec(spec)
    settings = Settings.from_env(home=home)
    plane = PlaneProcess.find(settings.home)
    if plane is None:
        console.print("no serving plane is running for this home; `shepherd up` starts one")
        raise typer.Exit(1)
    feature_rows, entity_rows = split_source(load_source(model_spec), model_spec)
    key = model_spec.entity.key
    if held_out:
        _, holdout = split(entity_rows.merge(feature_rows, on=[key, "event_timestamp"]), model_spec)
        feature_rows = feature_rows[feature_rows[key].isin(holdout[key])]
    if where:
        try:
            feature_rows = feature_rows.query(where)
        except Exception as exc:  # pandas raises many kinds for a bad expression
            console.print(f"[red]error:[/] --where {where!r}: {exc}")
            raise typer.Exit(2) from None
        if feature_rows.empty:
            console.print(f"[red]error:[/] --where {where!r} matches no rows")
            raise typer.Exit(2)
    chosen = feature_rows.head(500)
    report = send(plane.url, model_spec, instances(model_spec, chosen), requests, batch)
    if labels_out is not None:
        truth = entity_rows.set_index(key)[model_spec.target.column]
        keys = chosen[key].to_numpy()
        labels = pd.DataFrame(
            {"id": [pid for pid, _ in report.answered], "label": [truth[keys[i]] for _, i in report.answered]}
        )
        labels.to_csv(labels_out, index=False)
        console.print(f"wrote the real labels of {len(labels)} answered predictions to {labels_out}")
    console.print(f"{requests} requests x {batch} rows to {plane.url}/v1/models/{model_spec.name}:predict")
    table = Table()
    table.add_column("revision")
    table.add_column("requests")
    table.add_column("share")
    for revision, count in sorted(report.by_revision.items()):
        table.add_row(revision, str(count), f"{100 * count / requests:.1f} %")
    out.print(table)
    statuses = ", ".join(f"{code}: {n}" for code, n in sorted(report.by_status.items()))
    console.print(f"HTTP status counts: {statuses}; {describe_predictions(model_spec, report)}")


@app.command()
@friendly
def down(home: HomeOption = None) -> None:
    """Stop the local serving plane and its model servers (applied objects are kept for the next `up`)."""
    from serving.backends import stop_plane

    settings = Settings.from_env(home=home)
    console.print("stopped" if stop_plane(settings.home) else "no serving plane was running")


@app.command()
@friendly
def status(home: HomeOption = None, tracking_uri: TrackingOption = None) -> None:
    """Show each InferenceService: revisions, traffic split, readiness, and the model's aliases."""
    from components import registry
    from serving.backends import LocalBackend, PlaneProcess

    settings = Settings.from_env(home=home, tracking_uri=tracking_uri)
    plane = PlaneProcess.find(settings.home)
    if plane is None:
        console.print("no serving plane is running for this home; `shepherd up` starts one")
        raise typer.Exit(1)
    client = registry.connect(settings.tracking_uri)
    table = Table(title=f"InferenceServices on {plane.url}")
    for column in ("inferenceservice", "mode", "revision", "traffic", "ready", "aliases", "url"):
        table.add_column(column)
    for obj in LocalBackend(plane.url).list():
        meta, st = obj["metadata"], obj["status"]
        aliases: dict[str, str] = {}  # one registry call per model, not one per version
        for alias, version in client.get_registered_model(meta["name"]).aliases.items():
            aliases[str(version)] = ", ".join(filter(None, [aliases.get(str(version)), f"@{alias}"]))
        ready = next((c["status"] for c in st["conditions"] if c["type"] == "Ready"), "?")
        for t in st["components"]["predictor"]["traffic"]:
            version = t["revisionName"].rsplit("-v", 1)[-1]
            table.add_row(
                f"{meta['namespace']}/{meta['name']}",
                st.get("deploymentMode") or "-",
                t["revisionName"],
                f"{t['percent']} %",
                ready,
                aliases.get(version, "") or "-",
                st["url"],
            )
    out.print(table)
