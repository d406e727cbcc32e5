"""What every `shepherd` command group shares: the app object, the consoles, the shared options and
`friendly` (Shepherd's errors become a message and the error's exit code).

Imports nothing from the command modules: they import the app from here and register on it, so the
package has no import cycle whichever module is imported first.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from components.errors import ShepherdError
from pipelines.settings import Settings

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
BackendOption = Annotated[
    str | None,
    typer.Option(
        "--backend",
        help="'kubernetes' (kubeconfig or in-cluster) or a local plane URL [default: the plane of --home].",
    ),
]
NamespaceOption = Annotated[str, typer.Option("--namespace", "-n", help="The model's namespace.")]
ModelArgument = Annotated[str, typer.Argument(help="The InferenceService (= registered model) name, e.g. churn.")]


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


def load_model_spec(spec: Path):
    """The spec file parsed (imported here, not at module level: the CLI starts in a fraction of a second)."""
    from components.spec import load_spec

    return load_spec(spec)


class NoBackend(ShepherdError):
    """No serving backend was named and no local serving plane is running for this home."""

    exit_code = 9


def serving_backend(target: str | None, settings: Settings):
    """The backend `--backend` names, or the local plane of `settings.home`; NoBackend if there is none."""
    from serving.backends import PlaneProcess, backend_for

    if target:
        return backend_for(target)
    plane = PlaneProcess.find(settings.home)
    if plane is None:
        raise NoBackend(
            f"no serving plane is running for {settings.home}",
            hint="start one with `shepherd up`, or pass --backend kubernetes",
        )
    return backend_for(plane.url)
