"""Facts about the running Shepherd code itself: its container image and its code version."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

# The one image reference shared by the pipeline components, the InferenceService and the chart.
# Overridable for a private registry; the default tag follows the package version.
PLATFORM_IMAGE = os.environ.get("SHEPHERD_IMAGE", "ghcr.io/shepherd-mlops/shepherd:0.1.0")

# Only the training code: editing the CLI or the serving plane must not retrain a model.
_PACKAGE_DIRS = ("components",)


def code_version() -> str:
    """sha256 (first 16 hex) of the Python sources that build and judge a model.

    Computed from the files actually running (a checkout or an image), so an edited step changes
    the fingerprint and retrains, while an unrelated edit elsewhere (tests, docs) does not.
    """
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for package in _PACKAGE_DIRS:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]
