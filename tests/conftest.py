"""Shared fixtures: the real bundled specs and data, and a fresh MLflow store per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

REPO = Path(__file__).resolve().parent.parent
CHURN_SPEC = REPO / "specs" / "churn.yaml"
CREDIT_SPEC = REPO / "specs" / "credit.yaml"


@pytest.fixture(scope="session")
def churn_spec():
    from components.spec import load_spec

    return load_spec(CHURN_SPEC)


@pytest.fixture(scope="session")
def churn_frame(churn_spec):
    """The real Telco table shaped as the training set the extract step produces (without Feast)."""
    from components import data

    feature_rows, entity_rows = data.split_source(data.load_source(churn_spec), churn_spec)
    return entity_rows.merge(feature_rows, on=[churn_spec.entity.key, "event_timestamp"])


@pytest.fixture
def tracking_uri(tmp_path):
    """A real MLflow store (SQLite + local artifacts) that lives for one test."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    yield uri
    import mlflow

    mlflow.set_tracking_uri(None)
