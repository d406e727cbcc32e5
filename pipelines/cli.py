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
        "  shepherd compile                  # the pipeline YAML a KFP server runs\n\n"
        "  shepherd submit --host URL ...    # run it on a KFP server\n\n"
        "State lives in $SHEPHERD_HOME (default ./.shepherd); MLFLOW_TRACKING_URI overrides the registry."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
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


@app.command()
@friendly
def run(
    spec: SpecOption = DEFAULT_SPEC,
    home: HomeOption = None,
    tracking_uri: TrackingOption = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show every step's full output, not just progress.")
    ] = False,
) -> None:
    """Run the whole training DAG on this machine (kfp.local, no cluster).

    Steps: extract features from Feast -> validate with Great Expectations -> train -> evaluate against
    @champion -> register in MLflow -> deploy (only if promoted). Unchanged data, spec and code train
    nothing. A broken rule stops the run at validate and writes a report.

    Example: shepherd run --spec specs/credit.yaml
    """
    from pipelines.local import run_local

    model_spec = _load(spec)
    settings = Settings.from_env(home=home, tracking_uri=tracking_uri)
    console.print(f"[bold]shepherd run[/] {model_spec.name} from {spec} (state in {settings.home})")
    result = run_local(model_spec, settings, verbose=verbose)
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
) -> None:
    """Submit a run of the compiled pipeline to a KFP server.

    Example: shepherd submit --host http://localhost:8080 --tracking-uri http://mlflow.mlflow:5000
    """
    from pipelines.submit import submit_run

    model_spec = _load(spec)
    run_id, state = submit_run(host, model_spec, tracking_uri, feature_repo, experiment, wait)
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


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
