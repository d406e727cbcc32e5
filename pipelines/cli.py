"""`shepherd`: run, compile and submit the training pipeline; inspect and reproduce model versions.

Every user error ends with a message that says what to do and a non-zero exit code (see
`components.errors`), never a traceback.
"""

from __future__ import annotations

import functools
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from components.errors import ShepherdError
from pipelines.settings import DEFAULT_SPEC, Settings

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

app = typer.Typer(
    name="shepherd",
    help=(
        "Shepherd: train, evaluate, register and ship models with Kubeflow Pipelines, MLflow and KServe.\n\n"
        "Quick start (no cluster needed):\n\n"
        "  shepherd run                      # the whole DAG locally on the bundled churn spec\n\n"
        "  shepherd models                   # versions, aliases and metrics in the registry\n\n"
        "  shepherd up / status / down       # a local serving plane for promoted models\n\n"
        "  shepherd rollout watch            # step the canary up while its gates pass; promote or roll back\n\n"
        "  shepherd history churn            # which version served when, and why\n\n"
        "  shepherd compile                  # the pipeline YAML a KFP server runs\n\n"
        "  shepherd submit --host URL ...    # run it on a KFP server\n\n"
        "State lives in $SHEPHERD_HOME (default ./.shepherd); MLFLOW_TRACKING_URI overrides the registry."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts say "[default: ...]" and "[env: ...]" literally
)
console = Console(stderr=True)
out = Console(width=max(Console().width, 120))

SpecOption = Annotated[
    Path, typer.Option("--spec", "-s", help="Model spec YAML (see specs/churn.yaml).", show_default=True)
]
HomeOption = Annotated[
    Path | None,
    typer.Option("--home", help="Where local state lives [env: SHEPHERD_HOME, default ./.shepherd]."),
]
TrackingOption = Annotated[
    str | None,
    typer.Option("--tracking-uri", help="MLflow tracking URI [env: MLFLOW_TRACKING_URI, default sqlite in home]."),
]


def friendly(command):
    """Turn Shepherd's errors into a message and the error's exit code."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except ShepherdError as exc:
            console.print(f"[bold red]error:[/] {exc}", highlight=False)
            if exc.hint:
                console.print(f"[yellow]hint:[/] {exc.hint}", highlight=False)
            raise typer.Exit(exc.exit_code) from None

    return wrapper


def _load(spec: Path):
    from components.spec import load_spec

    return load_spec(spec)


def _with_params(model_spec, overrides: list[str]):
    """The spec with `KEY=VALUE` training parameter overrides (values parsed as YAML scalars)."""
    import yaml

    from components.errors import SpecError
    from components.spec import parse_spec

    if not overrides:
        return model_spec
    data = yaml.safe_load(model_spec.to_yaml())
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SpecError(f"--param {item!r}: expected KEY=VALUE, e.g. --param C=0.5")
        data["training"]["params"][key] = yaml.safe_load(value)
    return parse_spec(yaml.safe_dump(data), origin="spec with --param overrides")


@app.command()
@friendly
def run(
    spec: SpecOption = DEFAULT_SPEC,
    home: HomeOption = None,
    tracking_uri: TrackingOption = None,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="Override a training parameter, e.g. -p C=0.5 (repeatable)."),
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show every step's full output, not just progress.")
    ] = False,
) -> None:
    """Run the whole training DAG on this machine (kfp.local, no cluster).

    Steps: extract features from Feast -> validate with Great Expectations -> train -> evaluate against
    @champion -> register in MLflow -> deploy (only if promoted). Unchanged data, spec and code train
    nothing. A broken rule stops the run at validate and writes a report.

    Examples: shepherd run --spec specs/credit.yaml;  shepherd run -p C=0.5 (a challenger with other params)
    """
    from components.train import build_pipeline
    from pipelines.local import run_local
    from serving.backends import PlaneProcess

    model_spec = _with_params(_load(spec), param or [])
    build_pipeline(model_spec)  # parameters the estimator does not take fail here, not minutes later in train
    settings = Settings.from_env(home=home, tracking_uri=tracking_uri)
    plane = PlaneProcess.find(settings.home)
    console.print(f"[bold]shepherd run[/] {model_spec.name} from {spec} (state in {settings.home})")
    console.print(
        f"serving plane: {plane.url} (a promoted model is deployed there)"
        if plane
        else "serving plane: not running (`shepherd up` starts one; the deploy step only renders the object)"
    )
    result = run_local(model_spec, settings, verbose=verbose, serving_target=plane.url if plane else "")
    console.print(f"[green]done[/] in {result.seconds:.1f} s; step outputs in {result.run_dir}", soft_wrap=True)
    console.print(f"full log: {result.log_path}", soft_wrap=True)
    if result.unchanged_since:
        console.print(
            f"unchanged data, spec and code: version {result.unchanged_since} was trained from exactly this; "
            "nothing trained"
        )
    elif result.registered:
        version, alias = result.registered
        console.print(
            f"registered {model_spec.name} version {version}: "
            + (f"@{alias}" if alias else "rejected by the evaluation gates (no alias, not deployed)")
        )
    _print_versions(model_spec.name, settings, limit=3)


@app.command("compile")
@friendly
def compile_(
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the pipeline YAML.")] = Path(
        "pipelines/training_pipeline.yaml"
    ),
) -> None:
    """Compile the DAG to the pipeline YAML a KFP server runs."""
    from pipelines.compile import compile_pipeline

    console.print(f"wrote {compile_pipeline(output)}")


@app.command()
@friendly
def submit(
    host: Annotated[str, typer.Option("--host", help="KFP API endpoint, e.g. http://ml-pipeline-ui.kubeflow")],
    tracking_uri: Annotated[
        str, typer.Option("--tracking-uri", help="MLflow server the pipeline's pods reach, e.g. http://mlflow:5000")
    ],
    feature_repo: Annotated[
        str, typer.Option("--feature-repo", help="Feast repo path inside the platform image.")
    ] = "/opt/shepherd/feature_repo",
    spec: SpecOption = DEFAULT_SPEC,
    experiment: Annotated[str, typer.Option(help="KFP experiment to file the run under.")] = "shepherd",
    wait: Annotated[bool, typer.Option(help="Wait for the run to finish.")] = False,
    deploy: Annotated[
        str, typer.Option(help="Where a promoted model goes: kubernetes (the run's cluster) or '' (render only).")
    ] = "kubernetes",
    service_account: Annotated[
        str,
        typer.Option(help="Kubernetes ServiceAccount the run's pods use ('' = KFP's default pipeline-runner)."),
    ] = "shepherd-pipeline-runner",
    drift_url: Annotated[
        str,
        typer.Option(
            help="The drift service the predictors log payloads to, e.g. http://shepherd-drift.shepherd:8080/."
        ),
    ] = "",
) -> None:
    """Submit a run of the compiled pipeline to a KFP server.

    Example: shepherd submit --host http://localhost:8080 --tracking-uri http://mlflow.mlflow:5000
    """
    from pipelines.submit import submit_run

    model_spec = _load(spec)
    run_id, state = submit_run(
        host, model_spec, tracking_uri, feature_repo, experiment, wait, deploy, service_account, drift_url
    )
    console.print(f"submitted run {run_id} for {model_spec.name} to {host}" + (f": {state}" if state else ""))


@app.command()
@friendly
def models(
    name: Annotated[str | None, typer.Argument(help="Registered model name (default: the spec's).")] = None,
    spec: SpecOption = DEFAULT_SPEC,
    home: HomeOption = None,
    tracking_uri: TrackingOption = None,
) -> None:
    """List a model's registered versions with aliases, verdicts and holdout metrics."""
    model = name or _load(spec).name
    _print_versions(model, Settings.from_env(home=home, tracking_uri=tracking_uri))


def _print_versions(name: str, settings: Settings, limit: int | None = None) -> None:
    from components import registry

    versions = registry.list_versions(registry.connect(settings.tracking_uri), name)
    if not versions:
        console.print(f"no registered versions of {name!r} in {settings.tracking_uri}; `shepherd run` trains one")
        return
    table = Table(title=f"{name} in {settings.tracking_uri}")
    for column in ("version", "aliases", "verdict", "roc_auc", "f1", "log_loss", "fingerprint", "created"):
        table.add_column(column)
    for v in versions[:limit]:
        table.add_row(
            v.version,
            ", ".join(f"@{a}" for a in v.aliases) or "-",
            v.tags.get(registry.TAG_VERDICT, "?"),
            *(f"{v.metrics[m]:.4f}" if m in v.metrics else "-" for m in ("roc_auc", "f1", "log_loss")),
            v.tags.get(registry.TAG_FINGERPRINT, "")[:12],
            datetime.fromtimestamp(v.created_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S"),
        )
    out.print(table)


@app.command()
@friendly
def reproduce(
    version: Annotated[str, typer.Argument(help="Version number or alias (e.g. 3 or champion).")],
    name: Annotated[str | None, typer.Option("--model", "-m", help="Model name (default: the spec's).")] = None,
    spec: SpecOption = DEFAULT_SPEC,
    home: HomeOption = None,
    tracking_uri: TrackingOption = None,
) -> None:
    """Retrain a registered version from its stored snapshot and spec; check the metrics match.

    Exits 7 if any metric differs from the recorded one.
    """
    from pipelines.reproduce import reproduce_version

    model = name or _load(spec).name
    settings = Settings.from_env(home=home, tracking_uri=tracking_uri)
    console.print(f"reproducing {model} version {version} from its stored training snapshot…")
    result = reproduce_version(settings.tracking_uri, model, version)
    table = Table(title=f"{model} v{result.version}: recorded vs reproduced")
    for column in ("metric", "recorded", "reproduced", "match"):
        table.add_column(column)
    for metric, recorded in sorted(result.recorded.items()):
        got = result.reproduced.get(metric)
        table.add_row(
            metric,
            f"{recorded:.6f}",
            "-" if got is None else f"{got:.6f}",
            "yes" if metric not in result.mismatches else "[red]NO[/]",
        )
    out.print(table)
    result.raise_if_mismatched()
    console.print("[green]reproduced[/]: every metric matches")


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
    plane = start_plane(settings.home, settings.tracking_uri, port)
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
    spec: SpecOption = DEFAULT_SPEC,
    home: HomeOption = None,
) -> None:
    """Send real rows from the spec's source through the local plane and show which revision answered.

    --where picks a segment (a shifted population: what drift looks like to the drift service)."""
    from components.data import load_source, split_source
    from serving.backends import PlaneProcess
    from serving.traffic import instances, send

    model_spec = _load(spec)
    settings = Settings.from_env(home=home)
    plane = PlaneProcess.find(settings.home)
    if plane is None:
        console.print("no serving plane is running for this home; `shepherd up` starts one")
        raise typer.Exit(1)
    feature_rows, _ = split_source(load_source(model_spec), model_spec)
    if where:
        try:
            feature_rows = feature_rows.query(where)
        except Exception as exc:  # pandas raises many kinds for a bad expression
            console.print(f"[red]error:[/] --where {where!r}: {exc}")
            raise typer.Exit(2) from None
        if feature_rows.empty:
            console.print(f"[red]error:[/] --where {where!r} matches no rows")
            raise typer.Exit(2)
    report = send(plane.url, model_spec, instances(model_spec, feature_rows.head(500)), requests, batch)
    console.print(f"{requests} requests x {batch} rows to {plane.url}/v1/models/{model_spec.name}:predict")
    table = Table()
    table.add_column("revision")
    table.add_column("requests")
    table.add_column("share")
    for revision, count in sorted(report.by_revision.items()):
        table.add_row(revision, str(count), f"{100 * count / requests:.1f} %")
    out.print(table)
    statuses = ", ".join(f"{code}: {n}" for code, n in sorted(report.by_status.items()))
    console.print(f"HTTP status counts: {statuses}; predicted {model_spec.target.positive!r}: {report.positive}")


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


# The rollout, drift and history commands live in their own module; importing it registers them.
from pipelines import cli_rollout  # noqa: E402, F401


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
