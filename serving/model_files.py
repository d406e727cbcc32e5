"""A registered version's files on this machine, verified, and the model loaded from them.

- `fetch(tracking_uri, model_uri, directory)` resolves the version in the MLflow registry, downloads its spec and
  its model (the ONNX twin, or the scikit-learn pipeline where there is none) into `directory`, checks the model
  against the sha256 recorded at registration, and writes `shepherd-model.json`: what was fetched, and where.
- `load(directory)` builds the `LoadedVersion` from those files, after checking them against that sha256 again
  (a model is never deserialized unchecked).

On a cluster, KServe's storage initializer runs `fetch` into the pod's /mnt/models before the predictor starts
(serving.model_check), and the predictor loads from there (`--model_dir`): the model is downloaded once per pod, and
a registry that goes down between the two containers does not stop the pod. Elsewhere (the local plane) the
predictor fetches into a temporary directory itself (`serving.predictor.load_version`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components import registry
from components.errors import RegistryError, ShepherdError
from components.model_input import frame_of, onnx_feeds
from components.model_output import PROBABILITY_BUCKETS, graph_answers, output_name, pipeline_answers, score_buckets
from components.spec import ModelSpec, parse_spec

logger = logging.getLogger("shepherd.predictor")
MANIFEST = "shepherd-model.json"


class ModelIntegrityError(ShepherdError):
    """The stored artifact is not the one registered (sha256 mismatch): refuse to load it."""

    exit_code = 8


@dataclass
class LoadedVersion:
    """What serving one version needs: its spec, a scorer, and where it came from."""

    spec: ModelSpec
    version: str
    serving_format: str  # onnx | sklearn
    # validated columns -> the model's answers (components.model_output: probabilities or values)
    score: Callable[[Mapping[str, Sequence]], np.ndarray]
    # the score histogram's buckets (components.model_output.score_buckets)
    score_buckets: tuple[float, ...] = PROBABILITY_BUCKETS
    # where its files came from, for the predictor's first log line
    source: str = "the registry"


def parse_model_uri(uri: str) -> tuple[str, str]:
    """`models:/churn/3` or `models:/churn@champion` -> (name, version-or-alias)."""
    if not uri.startswith("models:/"):
        raise RegistryError(f"model_uri {uri!r}: expected models:/<name>/<version> or models:/<name>@<alias>")
    rest = uri.removeprefix("models:/")
    name, sep, ref = rest.partition("@") if "@" in rest else rest.partition("/")
    if not name or not sep or not ref:
        raise RegistryError(f"model_uri {uri!r}: expected models:/<name>/<version> or models:/<name>@<alias>")
    return name, ref


def fetch(tracking_uri: str, model_uri: str, directory: Path) -> dict:
    """Download and verify `model_uri`'s spec and model into `directory`; returns the manifest written there."""
    client = registry.connect(tracking_uri)
    name, ref = parse_model_uri(model_uri)
    version = registry.get_version(client, name, ref)
    tags = version.tags
    what = f"{name} v{version.version}"
    directory.mkdir(parents=True, exist_ok=True)
    spec_path = Path(client.download_artifacts(version.run_id, registry.SPEC_ARTIFACT, str(directory)))
    spec = parse_spec(spec_path.read_text(), origin=f"{what} spec")
    if tags.get(registry.TAG_SERVING_FORMAT) == "onnx":
        serving_format, recorded = "onnx", tags.get(registry.TAG_ONNX_SHA256)
        artifact = f"{registry.ONNX_DIR}/{registry.ONNX_FILE}"
        model = Path(client.download_artifacts(version.run_id, artifact, str(directory)))
        _verify(registry.sha256_file(model), recorded, f"{what} ONNX")
    else:
        import mlflow

        serving_format, recorded = "sklearn", tags.get(registry.TAG_MODEL_SHA256)
        destination = str(directory / "sklearn")
        model = Path(mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=destination))
        _verify(registry.sha256_tree(model), recorded, f"{what} model")
    manifest = {
        "model_uri": model_uri,
        "version": str(version.version),
        "serving_format": serving_format,
        "task": spec.task,
        "spec": spec_path.relative_to(directory).as_posix(),
        "model": model.relative_to(directory).as_posix(),
        "sha256": recorded,
        "score_buckets": tags.get(registry.TAG_SCORE_BUCKETS),
        "onnx_note": tags.get(registry.TAG_ONNX_NOTE),
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def fetched_here(directory: Path, model_uri: str) -> bool:
    """Whether `directory` holds `model_uri` as `fetch` left it (its manifest names this very URI)."""
    try:
        return json.loads((directory / MANIFEST).read_text()).get("model_uri") == model_uri
    except (OSError, ValueError):
        return False


def load(directory: Path) -> LoadedVersion:
    """The version `fetch` left in `directory`, its model checked against the recorded sha256 first."""
    manifest = json.loads((directory / MANIFEST).read_text())
    name, _ = parse_model_uri(manifest["model_uri"])
    what = f"{name} v{manifest['version']}"
    spec = parse_spec((directory / manifest["spec"]).read_text(), origin=f"{what} spec")
    model = directory / manifest["model"]
    if manifest["serving_format"] == "onnx":
        _verify(registry.sha256_file(model), manifest["sha256"], f"{what} ONNX")
        score = _onnx_scorer(model.read_bytes(), spec)
    else:
        _verify(registry.sha256_tree(model), manifest["sha256"], f"{what} model")
        logger.warning("%s: serving scikit-learn: %s", what, manifest.get("onnx_note") or "no ONNX twin")
        score = _sklearn_scorer(model, spec)
    recorded = manifest.get("score_buckets")
    buckets = score_buckets(spec, json.loads(recorded) if recorded else None)
    return LoadedVersion(spec, manifest["version"], manifest["serving_format"], score, buckets)


def _verify(actual: str, recorded: str | None, what: str) -> None:
    if not recorded:
        raise ModelIntegrityError(f"{what}: no sha256 was recorded at registration; refusing to load")
    if actual != recorded:
        raise ModelIntegrityError(
            f"{what}: artifact sha256 {actual[:16]}… differs from the {recorded[:16]}… recorded at registration; "
            "the stored model was changed after registration — refusing to load it"
        )


def _onnx_scorer(model: bytes, spec: ModelSpec):
    from components.onnx_export import session

    sess = session(model)
    outputs = [output_name(spec)]

    def score(columns: Mapping[str, Sequence]) -> np.ndarray:
        return graph_answers(spec, sess.run(outputs, onnx_feeds(spec, columns))[0])

    return score


def _sklearn_scorer(model: Path, spec: ModelSpec):
    import mlflow

    pipeline = mlflow.sklearn.load_model(str(model))

    def score(columns: Mapping[str, Sequence]) -> np.ndarray:
        return pipeline_answers(pipeline, frame_of(spec, columns), spec)

    return score
