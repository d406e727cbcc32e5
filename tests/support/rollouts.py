"""What the rollout tests on a real plane share: a spec whose rollout moves in one-second steps, and a
fresh registry holding version 1 (@champion) and a challenger version 2 trained from it."""

from __future__ import annotations

from pathlib import Path

import yaml

from components.spec import ModelSpec, parse_spec
from pipelines.direct import train_and_register


def fast_rollout_spec(spec: ModelSpec, gates: dict | None = None, **deployment) -> ModelSpec:
    """`spec` with steps 10 -> 50 -> 100 %, one-second intervals and `deployment` overrides (steps too); `gates`
    replaces the spec's gates when given."""
    data = yaml.safe_load(spec.to_yaml())
    data["deployment"].update({"canary_steps": [10, 50, 100], "interval_seconds": 1, **deployment})
    if gates is not None:
        data["deployment"]["gates"] = gates
    return parse_spec(yaml.safe_dump(data))


def champion_and_challenger(spec: ModelSpec, frame, home: Path) -> str:
    """A registry under `home` with v1 @champion and v2 (C=0.5) @challenger; its tracking URI."""
    uri = f"sqlite:///{home / 'mlflow.db'}"
    assert train_and_register(spec, frame, uri, home).alias == "champion"
    data = yaml.safe_load(spec.to_yaml())
    data["training"]["params"]["C"] = 0.5
    assert train_and_register(parse_spec(yaml.safe_dump(data)), frame, uri, home, "v2").alias == "challenger"
    return uri
