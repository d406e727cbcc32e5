"""`shepherd run | compile | submit | models | reproduce`: training runs and the versions they register."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from components.run_arguments import IMAGE_FEATURE_REPO
from pipelines.cli.common import HomeOption, SpecOption, TrackingOption, app, console, friendly, load_model_spec, out
from pipelines.settings import DEFAULT_SPEC, Settings


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
    runner: Annotated[
        str,
        typer.Option(
            "--runner",
            help="subprocess: steps in this venv, sharing this machine's files. docker: each step in the Shepherd "
            "image through DOCKER_HOST (podman's socket works), sharing only KFP artifacts and the stores, so "
            "--tracking-uri must be an MLflow server and SHEPHERD_FEATURE_REPO a postgresql:// URI.",
        ),
    ] = "subprocess",
) -> None:
    """Run the whole training DAG on this machine (kfp.local, no cluster).

    Steps: extract features from Feast -> validate with Great Expectations -> train -> evaluate against
    @champion -> register in MLflow -> deploy (only if promoted). Unchanged data, spec and code train
    nothing. A broken rule stops the run at validate and writes a report.

    Examples: shepherd run --spec specs/credit.yaml;  shepherd run -p C=0.5 (a challenger with other params)
    """
    from components.train import EstimatorNotImportable, build_pipeline
    from pipelines.local import run_local
    from serving.backends import PlaneProcess

    model_spec = _with_params(load_model_spec(spec), param or [])
    try:
        build_pipeline(model_spec)  # parameters the estimator does not take fail here, not minutes later in train
    except EstimatorNotImportable as exc:
        if runner != "docker":
            raise
        # The steps run in the image, which may have a package this machine lacks: its train step decides.
        console.print(f"[yellow]note:[/] {exc}; with --runner docker the image's train step must have it")
    settings = Settings.from_env(home=home, tracking_uri=tracking_uri)
    plane = PlaneProcess.find(settings.home)
    console.print(f"[bold]shepherd run[/] {model_spec.name} from {spec} (state in {settings.home})")
    if runner == "docker" and plane:
        console.print("with --runner docker the deploy step renders the object only (the plane's token stays here)")
        plane = None
    console.print(
        f"serving plane: {plane.url} (a promoted model is deployed there)"
        if plane
        else "serving plane: not running (`shepherd up` starts one; the deploy step only renders the object)"
    )
    result = run_local(model_spec, settings, verbose=verbose, serving_target=plane.url if plane else "", runner=runner)
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
        str,
        typer.Option(
            "--feature-repo",
            envvar="SHEPHERD_FEATURE_REPO",
            help="The Feast store the steps share: a postgresql://user:password@host:port/database URI "
            "(registry, offline rows and online store in that database). Default: the repo directory in the "
            "image, which each step pod keeps to itself.",
        ),
    ] = IMAGE_FEATURE_REPO,
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

    model_spec = load_model_spec(spec)
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
    model = name or load_model_spec(spec).name
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

    model = name or load_model_spec(spec).name
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
