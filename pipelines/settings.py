"""Where the embedded default keeps its state, declared once with types and defaults.

| variable               | default                          | meaning                                   |
|------------------------|----------------------------------|-------------------------------------------|
| SHEPHERD_HOME          | ./.shepherd                      | everything the embedded default writes    |
| MLFLOW_TRACKING_URI    | sqlite:///$SHEPHERD_HOME/mlflow.db | the MLflow tracking server / registry   |
| SHEPHERD_FEATURE_REPO  | $SHEPHERD_HOME/feature_repo      | the Feast store: a repo directory or a    |
|                        |                                  | postgresql:// URI (feature_location.py)   |
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from components.feature_location import is_postgres

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SPEC = REPO_ROOT / "specs" / "churn.yaml"


@dataclass(frozen=True)
class Settings:
    home: Path
    tracking_uri: str
    feature_repo: str  # an absolute repo directory, or a PostgreSQL URI as given

    @property
    def pipeline_root(self) -> Path:
        return self.home / "pipeline-root"

    @classmethod
    def from_env(
        cls, home: Path | None = None, tracking_uri: str | None = None, feature_repo: str | Path | None = None
    ) -> Settings:
        """Explicit arguments win over environment variables, which win over the defaults."""
        home = (home or Path(os.environ.get("SHEPHERD_HOME", ".shepherd"))).resolve()
        tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow.db'}"
        repo = str(feature_repo or os.environ.get("SHEPHERD_FEATURE_REPO") or home / "feature_repo")
        if not is_postgres(repo):
            repo = str(Path(repo).resolve())
        return cls(home=home, tracking_uri=tracking_uri, feature_repo=repo)
