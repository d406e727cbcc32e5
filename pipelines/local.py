"""Running the training DAG on one machine with `kfp.local`: the same compiled DAG a KFP server runs.

Two runners (`shepherd run --runner`):
- `subprocess` (the embedded default): each step is a subprocess of this interpreter; the project's
  venv provides every import, and the steps share this machine's files (SQLite registry, repo dir).
- `docker`: KFP's own DockerRunner starts each step in the Shepherd image (`SHEPHERD_IMAGE`) as the
  chart runs pods: uid 10001, read-only root filesystem, `/tmp` the only writable path, no
  capabilities, the host's network. The steps share nothing but the KFP artifacts under the pipeline
  root (mounted at the same path) and the stores, so the tracking URI must be an MLflow server
  (http[s]://) and the feature repo a PostgreSQL URI, as on a cluster. `DOCKER_HOST` names the
  daemon; podman's `podman system service` socket works (README, "Run the steps in containers").
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from components import feature_location, features
from components.errors import FAILURE_RECORD_ENV, FailureRecord, PipelineRunError
from components.spec import ModelSpec
from pipelines.settings import Settings

STEP_OF_TASK = {
    "extract-op": "extract",
    "validate-op": "validate",
    "materialize-op": "materialize",
    "train-op": "train",
    "evaluate-op": "evaluate",
    "register-op": "register",
    "deploy-op": "deploy",
}


RUNNERS = ("subprocess", "docker")

# The chart's securityContext for the step containers (helm/shepherd/values.yaml), plus the host's
# network: the stores are on this machine's loopback, as a cluster's are behind Services.
STEP_CONTAINER = {
    "user": "10001:10001",
    "read_only": True,
    "tmpfs": {"/tmp": "rw,mode=1777"},
    "cap_drop": ["ALL"],
    "network_mode": "host",
}


def kfp_runner(kind: str, settings: Settings):
    """The `kfp.local` runner for `kind`; refuses a docker run whose stores the containers cannot share."""
    from kfp import local

    if kind == "subprocess":
        return local.SubprocessRunner(use_venv=False)
    if kind != "docker":
        raise PipelineRunError(f"runner: {kind!r} is not one of {', '.join(RUNNERS)}")
    unshared = []
    if not settings.tracking_uri.startswith(("http://", "https://")):
        unshared.append(f"the tracking URI {_redacted(settings.tracking_uri)!r} (needs an MLflow server, http[s]://)")
    if not features.is_postgres(settings.feature_repo):
        unshared.append(f"the feature repo {settings.feature_repo!r} (needs a postgresql:// URI)")
    if unshared:
        raise PipelineRunError(
            "runner docker: each step runs in its own container and shares only the stores; "
            + " and ".join(unshared)
            + " would stay in the container that wrote it",
            hint="start `mlflow server` on a database and pass --tracking-uri http://..., and set "
            "SHEPHERD_FEATURE_REPO=postgresql://user:password@host:port/database",
        )
    return local.DockerRunner(**STEP_CONTAINER)


def _redacted(uri: str) -> str:
    """`uri` without its password (a database tracking URI may carry one), for messages."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")).geturl()


@dataclass
class LocalRun:
    seconds: float
    run_dir: Path | None
    log_path: Path | None = None

    def step_outputs(self, task: str) -> dict | None:
        """A finished step's parameter outputs (None if the step did not run)."""
        if self.run_dir is None:
            return None
        path = self.run_dir / task / "executor_output.json"
        if not path.exists():
            return None
        return json.loads(path.read_text()).get("parameterValues", {})

    @property
    def unchanged_since(self) -> str | None:
        """The version the same data, spec and code already produced, if any."""
        outputs = self.step_outputs("extract-op") or {}
        return outputs.get("Output") or None

    @property
    def registered(self) -> tuple[str, str] | None:
        """(version, alias) registered by this run, if it registered one."""
        outputs = self.step_outputs("register-op")
        return (outputs["version"], outputs["alias"]) if outputs else None


def _newest_run_dir(root: Path, started: float) -> Path | None:
    runs = [p for p in root.glob("shepherd-training-*") if p.is_dir() and p.stat().st_mtime >= started - 1]
    return max(runs, key=lambda p: p.stat().st_mtime, default=None)


def _failure(
    exc: Exception, run_dir: Path | None, log_path: Path, cause: FailureRecord | None = None
) -> PipelineRunError:
    """Name the failed step, say why (the step's own Shepherd error, if it recorded one) and point at
    its report, instead of KFP's generic error. The cause's exit code becomes the run's."""
    text = str(exc)
    match = re.search(r"'([a-z-]+-op)'", text)
    step = STEP_OF_TASK.get(match.group(1), match.group(1)) if match else "a step"
    message = (
        f"the pipeline stopped at {step}; nothing was registered"
        if step in ("extract", "validate", "train")
        else f"the pipeline stopped at {step}"
    )
    if cause is not None:
        message += f": {cause.message}"
    report = None
    if run_dir is not None and step == "validate":
        report = next(iter(sorted(run_dir.glob("validate-op/**/validation.md"))), None)
    full_output = f"the step's full output is in {log_path}"
    return PipelineRunError(
        message + (f"\nvalidation report: {report}" if report else ""),
        hint=f"{cause.hint}; {full_output}" if cause is not None and cause.hint else full_output,
        cause=cause,
    )


@contextlib.contextmanager
def _failure_record(path: Path):
    """Name `path` to the steps' processes (they inherit this environment) as where a step's Shepherd
    error goes; yields the path, which holds a record only if a step wrote one during this run."""
    path.unlink(missing_ok=True)
    previous = os.environ.get(FAILURE_RECORD_ENV)
    os.environ[FAILURE_RECORD_ENV] = str(path)
    try:
        yield path
    finally:
        if previous is None:
            os.environ.pop(FAILURE_RECORD_ENV, None)
        else:
            os.environ[FAILURE_RECORD_ENV] = previous


class _ProgressFilter(io.TextIOBase):
    """Sends everything to the run's log file and only progress lines to the terminal.

    KFP's local runner echoes each step's full executor input and output; a person watching wants
    the steps' own progress and the task verdicts, with the rest one file away.
    """

    KEEP = ("[shepherd]", "finished with status", "Error: ", "Exception: ")

    def __init__(self, log, terminal):
        self._log, self._terminal, self._partial = log, terminal, ""

    def write(self, text: str) -> int:
        self._log.write(text)
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            if any(marker in line for marker in self.KEEP):
                self._terminal.write(line.strip() + "\n")
        self._terminal.flush()
        return len(text)

    def flush(self) -> None:
        self._log.flush()


def run_local(
    spec: ModelSpec, settings: Settings, verbose: bool = False, serving_target: str = "", runner: str = "subprocess"
) -> LocalRun:
    """Run the whole DAG locally for `spec` with `runner` (RUNNERS); raises PipelineRunError naming the
    failed step.

    The full output of every step goes to `<home>/logs/`; the terminal shows progress lines only
    (everything with `verbose`). With `serving_target`, a promoted model is applied to that plane.
    """
    kfp_runner(runner, settings)  # a run that cannot work is refused before anything starts
    feature_location.check(settings.feature_repo)
    settings.home.mkdir(parents=True, exist_ok=True)
    log_dir = settings.home / "logs"
    log_dir.mkdir(exist_ok=True)
    log_path = log_dir / f"run-{time.strftime('%Y%m%d-%H%M%S')}.log"
    if verbose:
        return _run(spec, settings, log_path, serving_target, runner)
    with open(log_path, "w") as log:
        progress = _ProgressFilter(log, sys.__stderr__)
        with contextlib.redirect_stdout(progress), contextlib.redirect_stderr(progress):
            return _run(spec, settings, log_path, serving_target, runner)


def _run(spec: ModelSpec, settings: Settings, log_path: Path, serving_target: str, runner: str) -> LocalRun:
    from kfp import local

    from pipelines.pipeline import training_pipeline

    settings.pipeline_root.mkdir(parents=True, exist_ok=True)
    if runner == "docker":  # the steps' uid 10001 writes its outputs there (on a cluster: fsGroup)
        settings.pipeline_root.chmod(0o777)
    if not features.is_postgres(settings.feature_repo):
        features.ensure_repo(Path(settings.feature_repo))
    local.init(runner=kfp_runner(runner, settings), pipeline_root=str(settings.pipeline_root), raise_on_error=True)
    started = time.time()
    with _failure_record(log_path.with_suffix(".failure.json")) as record:
        try:
            training_pipeline(
                spec_yaml=spec.to_yaml(),
                tracking_uri=settings.tracking_uri,
                feature_repo=settings.feature_repo,
                serving_target=serving_target,
            )
        except RuntimeError as exc:
            run_dir = _newest_run_dir(settings.pipeline_root, started)
            raise _failure(exc, run_dir, log_path, FailureRecord.read(record)) from exc
    return LocalRun(time.time() - started, _newest_run_dir(settings.pipeline_root, started), log_path)
