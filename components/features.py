"""The Feast feature repository, derived from the model spec.

One Feast project (`shepherd`) holds every model's definitions: an entity, a feature view over a
file (Parquet) offline source with event timestamps, and a feature service that training and serving
both read. The embedded default repo uses a file offline store and a SQLite online store; a cluster
points `feature_store.yaml` at production stores and the same definitions apply.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd

from components.spec import EVENT_TIMESTAMP, ModelSpec

# Feature rows never expire for training: the snapshot is what the model learns from.
FEATURE_TTL = timedelta(days=3650)

EMBEDDED_FEATURE_STORE_YAML = """\
# Embedded default written by Shepherd: file offline store, SQLite online store, file registry.
project: shepherd
provider: local
registry: data/registry.db
online_store:
  type: sqlite
  path: data/online_store.db
offline_store:
  type: file
entity_key_serialization_version: 3
"""


def ensure_repo(repo_dir: Path) -> Path:
    """Create the embedded default repo (feature_store.yaml + data/) unless one is already there."""
    (repo_dir / "data").mkdir(parents=True, exist_ok=True)
    config = repo_dir / "feature_store.yaml"
    if not config.exists():
        config.write_text(EMBEDDED_FEATURE_STORE_YAML)
    return repo_dir


def open_store(repo_dir: Path):
    """A Feast FeatureStore over `repo_dir` (created with the embedded default if empty)."""
    from feast import FeatureStore

    return FeatureStore(repo_path=str(ensure_repo(repo_dir)))


def source_path(repo_dir: Path, spec: ModelSpec) -> Path:
    return repo_dir / "data" / f"{spec.name}_features.parquet"


def feature_view_name(spec: ModelSpec) -> str:
    return f"{spec.name}_features"


def feature_service_name(spec: ModelSpec) -> str:
    return f"{spec.name}_model"


def definitions(spec: ModelSpec, path: Path, columns: list[str]) -> list:
    """Entity, feature view and feature service for `spec`, over the Parquet file at `path`.

    Only spec features present in `columns` are declared, so a source missing a column still yields
    a training set and the validate step can report everything that is wrong at once.
    """
    from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
    from feast.types import Float64, Int64, String

    feast_type = {"int": Int64, "float": Float64, "category": String}
    entity = Entity(name=spec.entity.name, join_keys=[spec.entity.key], value_type=ValueType.INT64)
    source = FileSource(name=f"{spec.name}_source", path=str(path), timestamp_field=EVENT_TIMESTAMP)
    view = FeatureView(
        name=feature_view_name(spec),
        entities=[entity],
        ttl=FEATURE_TTL,
        schema=[Field(name=f.name, dtype=feast_type[f.type]) for f in spec.features if f.name in columns],
        source=source,
        online=True,
        tags={"model": spec.name},
    )
    service = FeatureService(name=feature_service_name(spec), features=[view])
    return [entity, view, service]


def publish_features(store, spec: ModelSpec, features: pd.DataFrame) -> Path:
    """Write feature rows to the offline source and apply the spec's definitions to the registry."""
    repo_dir = Path(store.repo_path)
    path = source_path(repo_dir, spec)
    features.to_parquet(path, index=False)
    store.apply(definitions(spec, path, list(features.columns)))
    return path


def training_frame(store, spec: ModelSpec, entities: pd.DataFrame) -> pd.DataFrame:
    """The point-in-time correct training set: each labelled row joined with the feature values
    known at its timestamp (never later ones), through the model's feature service."""
    service = store.get_feature_service(feature_service_name(spec))
    frame = store.get_historical_features(entity_df=entities, features=service).to_df()
    return frame.sort_values(spec.entity.key, kind="stable").reset_index(drop=True)


def materialize_online(store, spec: ModelSpec, until: datetime) -> None:
    """Load the latest feature values up to `until` into the online store for serving."""
    store.materialize(start_date=until - FEATURE_TTL, end_date=until, feature_views=[feature_view_name(spec)])


def online_features(store, spec: ModelSpec, keys: list[int]) -> pd.DataFrame:
    """Feature values for entity keys from the online store (what serving enriches requests with)."""
    service = store.get_feature_service(feature_service_name(spec))
    rows = [{spec.entity.key: k} for k in keys]
    return pd.DataFrame(store.get_online_features(features=service, entity_rows=rows).to_dict())
