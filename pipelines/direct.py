"""The training steps called directly, without the KFP runner: for tests, benchmarks and notebooks.

Same functions the pipeline's steps call (train, evaluate, register), in one process, on a frame
you already have; no Feast, no validation report, no deploy.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from components.evaluate import evaluate_run
from components.register import Registered, register_version
from components.spec import ModelSpec
from components.train import train_and_log


def train_and_register(
    spec: ModelSpec, frame: pd.DataFrame, tracking_uri: str, workdir: Path, fingerprint: str = "direct"
) -> Registered:
    """Train `spec` on `frame`, judge it against @champion, register it; returns the version."""
    snapshot = workdir / f"training_set-{spec.fingerprint()[:12]}.parquet"
    frame.to_parquet(snapshot, index=False)
    run = train_and_log(spec, snapshot, tracking_uri, {"shepherd.fingerprint": fingerprint})
    verdict = evaluate_run(spec, snapshot, tracking_uri, run.model_uri)
    return register_version(spec, tracking_uri, run.run_id, run.model_uri, verdict)
