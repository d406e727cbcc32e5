"""The MLflow side of Shepherd: training runs, registered versions, aliases and lineage tags.

Contract (ARCHITECTURE.md): registered model `<name>`; aliases `champion` (serving 100 %),
`challenger` (under canary), `previous` (last champion). Every version carries the lineage tags below.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd

from components.errors import RegistryError

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"

# Lineage tags on every registered version (and on its training run).
TAG_FINGERPRINT = "shepherd.fingerprint"  # data + spec + code: equal means "nothing to train"
TAG_DATA_FINGERPRINT = "shepherd.data_fingerprint"
TAG_SPEC_FINGERPRINT = "shepherd.spec_fingerprint"
TAG_CODE_VERSION = "shepherd.code_version"
TAG_PIPELINE_RUN = "shepherd.pipeline_run_id"
TAG_FEATURE_VIEWS = "shepherd.feature_views"
TAG_FEATURE_SERVICE = "shepherd.feature_service"
TAG_VERDICT = "shepherd.verdict"  # promote | reject
TAG_REASONS = "shepherd.verdict_reasons"
TAG_SNAPSHOT_SHA256 = "shepherd.snapshot_sha256"
TAG_MODEL_SHA256 = "shepherd.model_sha256"
TAG_SERVING_FORMAT = "shepherd.serving_format"  # onnx | sklearn
TAG_ONNX_SHA256 = "shepherd.onnx_sha256"
TAG_ONNX_NOTE = "shepherd.onnx_note"  # parity figure, or why the model is served by scikit-learn
TAG_SCORE_BUCKETS = "shepherd.score_buckets"  # regression: JSON deciles of the training target (histogram buckets)
TAG_MODEL_URI = "shepherd.model_uri"  # on the training run: the logged model it produced

MODEL_ARTIFACT = "model"
SNAPSHOT_DIR = "snapshot"
SPEC_ARTIFACT = "spec.yaml"
ONNX_DIR, ONNX_FILE = "onnx", "model.onnx"


def connect(tracking_uri: str):
    """Point MLflow (tracking and registry) at `tracking_uri` and return a client."""
    import mlflow
    from mlflow import MlflowClient

    # Progress bars for sub-second downloads only clutter step logs and server output.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def experiment_id(client, model_name: str, tracking_uri: str) -> str:
    """The experiment that holds a model's training runs, created on first use.

    With the embedded SQLite store, artifacts go next to the database instead of the current
    directory, so runs started from anywhere find them.
    """
    name = f"shepherd-{model_name}"
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    location = None
    parsed = urlparse(tracking_uri)
    if parsed.scheme == "sqlite":
        location = (Path(parsed.path).parent / "mlartifacts").resolve().as_uri()
    return client.create_experiment(name, artifact_location=location)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_tree(directory: Path) -> str:
    """sha256 over a directory's files (relative paths and contents, in sorted order)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(directory)).encode() + b"\0")
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def model_artifact_sha256(model_uri: str) -> str:
    """sha256 of a logged model's files as stored (what the predictor verifies before loading)."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        return sha256_tree(Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp)))


@dataclass
class VersionInfo:
    """A registered version with what `shepherd models` shows."""

    name: str
    version: str
    aliases: list[str]
    run_id: str
    tags: dict[str, str]
    metrics: dict[str, float]
    created_ms: int


# What MLflow answers for a model or an alias that does not exist (file, SQL and REST stores alike).
ABSENT_ERROR_CODES = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"})


def _absent_or_raise(exc, what: str) -> None:
    """Return when `exc` says `what` does not exist; otherwise the registry failed (unreachable,
    erroring): raise, so that an outage is never read as "no champion yet" and a challenger is never
    promoted without being compared with the champion it would replace."""
    if exc.error_code not in ABSENT_ERROR_CODES:
        raise RegistryError(f"the MLflow registry failed while reading {what}: {exc}") from exc


def champion_version(client, name: str):
    """The `@champion` ModelVersion, or None when there is none yet (the first model)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as exc:
        _absent_or_raise(exc, f"{name}@{CHAMPION}")
        return None


def version_with_fingerprint(client, name: str, fingerprint: str):
    """The newest version trained from exactly this data, spec and code, or None."""
    from mlflow.exceptions import MlflowException

    try:
        found = client.search_model_versions(f"name = '{name}' and tags.`{TAG_FINGERPRINT}` = '{fingerprint}'")
    except MlflowException as exc:
        _absent_or_raise(exc, f"the versions of {name}")
        return None
    return max(found, key=lambda v: int(v.version), default=None)


def version_spec(client, model_version):
    """The spec a registered version was trained from (its run's spec artifact), parsed."""
    from components.spec import parse_spec

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(client.download_artifacts(model_version.run_id, SPEC_ARTIFACT, tmp))
        return parse_spec(path.read_text(), origin=f"{model_version.name} v{model_version.version} spec")


def get_version(client, name: str, version: str):
    """A version by number or by alias (`champion`, `@champion`), with a clear error if absent."""
    from mlflow.exceptions import MlflowException

    try:
        if version.lstrip("@").isdigit():
            return client.get_model_version(name, version.lstrip("@"))
        return client.get_model_version_by_alias(name, version.lstrip("@"))
    except MlflowException as exc:
        raise RegistryError(
            f"model {name!r} has no version {version!r}", hint="`shepherd models` lists the versions"
        ) from exc


def list_versions(client, name: str) -> list[VersionInfo]:
    """Every registered version of `name`, newest first, with aliases and holdout metrics."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException:
        return []
    aliases: dict[str, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        aliases.setdefault(str(version), []).append(alias)
    out = []
    for v in client.search_model_versions(f"name = '{name}'"):
        metrics = client.get_run(v.run_id).data.metrics if v.run_id else {}
        out.append(
            VersionInfo(
                name=name,
                version=str(v.version),
                aliases=sorted(aliases.get(str(v.version), [])),
                run_id=v.run_id,
                tags=dict(v.tags),
                metrics=dict(metrics),
                created_ms=v.creation_timestamp,
            )
        )
    return sorted(out, key=lambda i: int(i.version), reverse=True)


def download_snapshot(client, run_id: str, expected_sha256: str, directory: Path) -> pd.DataFrame:
    """The exact training set a run used, verified against its content address."""
    from components.errors import ReproducibilityError

    local = Path(client.download_artifacts(run_id, f"{SNAPSHOT_DIR}/{expected_sha256}.parquet", str(directory)))
    actual = sha256_file(local)
    if actual != expected_sha256:
        raise ReproducibilityError(
            f"training snapshot of run {run_id} is corrupt: sha256 {actual[:12]}…, recorded {expected_sha256[:12]}…"
        )
    return pd.read_parquet(local)


def format_reasons(reasons: list[str], limit: int = 4000) -> str:
    """Verdict reasons as one tag value (MLflow tag values are bounded)."""
    text = json.dumps(reasons)
    return text if len(text) <= limit else text[: limit - 3] + "..."
