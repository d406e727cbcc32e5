"""Reproducing a registered version: retrain from its content-addressed snapshot and stored spec."""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from components import registry
from components.errors import RegistryError, ReproducibilityError
from components.spec import parse_spec
from components.train import fit

# Same data, same code, same seed: anything beyond float noise is a real difference.
TOLERANCE = 1e-9


@dataclass
class Reproduction:
    version: str
    recorded: dict[str, float]
    reproduced: dict[str, float]
    mismatches: list[str] = field(default_factory=list)

    def raise_if_mismatched(self) -> None:
        if self.mismatches:
            details = ", ".join(
                f"{m} recorded {self.recorded[m]:.6f} got {self.reproduced.get(m, float('nan')):.6f}"
                for m in self.mismatches
            )
            raise ReproducibilityError(f"version {self.version} did not reproduce: {details}")


def reproduce_version(tracking_uri: str, name: str, version: str) -> Reproduction:
    """Retrain `name` `version` exactly as it was trained and compare holdout metrics."""
    client = registry.connect(tracking_uri)
    model_version = registry.get_version(client, name, version)
    run = client.get_run(model_version.run_id)
    snapshot_sha = run.data.tags.get(registry.TAG_SNAPSHOT_SHA256)
    if not snapshot_sha:
        raise RegistryError(f"{name} version {model_version.version} has no stored training snapshot")
    with tempfile.TemporaryDirectory() as tmp:
        spec_path = client.download_artifacts(run.info.run_id, registry.SPEC_ARTIFACT, tmp)
        spec = parse_spec(Path(spec_path).read_text(), origin=f"{name} v{model_version.version} spec")
        frame = registry.download_snapshot(client, run.info.run_id, snapshot_sha, Path(tmp))
    reproduced = fit(frame, spec).metrics
    recorded = {k: v for k, v in run.data.metrics.items() if k in reproduced}
    mismatches = [m for m, value in recorded.items() if not math.isclose(value, reproduced[m], abs_tol=TOLERANCE)]
    return Reproduction(str(model_version.version), recorded, reproduced, mismatches)
