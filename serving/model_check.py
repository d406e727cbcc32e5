"""KServe's storage-initializer step for Shepherd's `models:/` URIs (the ClusterStorageContainer in
manifests/base/models/storage-container.yaml): `python -m serving.model_check models:/churn/3 /mnt/models`.

It runs as the predictor pod's init container, before the predictor starts. It resolves the registered version,
downloads its spec and model into the destination, verifies the model against the sha256 recorded at registration
and loads it once (`serving.model_files`). A missing version, an unreachable registry or a changed artifact fails
the init container: kubectl shows `Init:Error` with the reason, instead of a predictor that restarts in a loop. On
success the destination holds the files and `shepherd-model.json` (the version, its serving format, its task, its
files and their sha256); the predictor (`--model_dir=/mnt/models`, from the ServingRuntime) loads from there,
checking the sha256 again, and does not download the model a second time.

Why an init container at all: KServe 0.20 takes a `model` without a storage URI for a multi-model server and adds
its model agent, and it refuses a Standard-mode canary beside a stable predictor with neither. So every predictor
names its version as `storageUri: models:/<name>/<version>`, and this container is what KServe runs for that URI.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path

from components.errors import ShepherdError


def check(model_uri: str, destination: Path, tracking_uri: str) -> dict:
    """Fetch `model_uri` into `destination`, verified, and load it as the predictor will; returns the manifest."""
    from serving import model_files

    destination.mkdir(parents=True, exist_ok=True)
    tempfile.tempdir = str(destination)  # the root filesystem is read-only: the model volume is the writable place
    manifest = model_files.fetch(tracking_uri, model_uri, destination)
    model_files.load(destination)  # it deserializes and builds its scorer here, not first in the predictor
    return manifest


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m serving.model_check models:/<name>/<version> <destination directory>", file=sys.stderr)
        return 2
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not tracking_uri:
        print(
            "error: MLFLOW_TRACKING_URI is not set: the namespace's shepherd-serving ConfigMap names the MLflow server",
            file=sys.stderr,
        )
        return 2
    try:
        checked = check(args[0], Path(args[1]), tracking_uri)
    except ShepherdError as exc:
        print(f"error: {args[0]}: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # the registry unreachable, a broken artifact: one line for kubectl logs, no traceback
        print(f"error: {args[0]}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"{args[0]}: version {checked['version']} verified ({checked['serving_format']}, {checked['task']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
