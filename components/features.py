"""The Feast feature store, derived from the model spec.

One Feast project (`shepherd`) holds every model's definitions: an entity, a feature view over the
model's feature rows with event timestamps, and a feature service that training and serving both read.
Where the store lives is `components/feature_location.py`'s: a repo directory (the embedded default:
Parquet rows, SQLite online store, file registry) or one PostgreSQL database for everything. A
directory whose `feature_store.yaml` names a PostgreSQL offline store gets its rows in a table too.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from components.feature_location import is_postgres, postgres_config
from components.spec import EVENT_TIMESTAMP, ModelSpec

if TYPE_CHECKING:  # pandas loads when a store is used, not when settings ask `is_postgres`
    import pandas as pd

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


def open_store(location: str | Path):
    """A Feast FeatureStore at `location`: a repo directory (created with the embedded default if
    empty) or a PostgreSQL URI (see the module's docstring)."""
    from feast import FeatureStore

    if is_postgres(location):
        return FeatureStore(config=postgres_config(str(location)))
    return FeatureStore(repo_path=str(ensure_repo(Path(location))))


def source_path(repo_dir: Path, spec: ModelSpec) -> Path:
    return repo_dir / "data" / f"{spec.name}_features.parquet"


def source_table(spec: ModelSpec) -> str:
    """The offline rows' table (Feast's online store names its tables `<project>_<view>`: not this)."""
    return f"offline_{spec.name}_feature_rows".replace("-", "_")


def feature_view_name(spec: ModelSpec) -> str:
    return f"{spec.name}_features"


def feature_service_name(spec: ModelSpec) -> str:
    return f"{spec.name}_model"


def definitions(spec: ModelSpec, source, columns: list[str]) -> list:
    """Entity, feature view and feature service for `spec`, over the offline `source`.

    Only spec features present in `columns` are declared, so a source missing a column still yields
    a training set and the validate step can report everything that is wrong at once.
    """
    from feast import Entity, FeatureService, FeatureView, Field, ValueType
    from feast.types import Float64, Int64, String

    feast_type = {"int": Int64, "float": Float64, "category": String}
    entity = Entity(name=spec.entity.name, join_keys=[spec.entity.key], value_type=ValueType.INT64)
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


def publish_features(store, spec: ModelSpec, features: pd.DataFrame) -> str:
    """Write feature rows to the offline store and apply the spec's definitions to the registry;
    returns where the rows are (a Parquet path or a table name)."""
    if store.config.offline_store.type == "postgres":
        from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource

        table = source_table(spec)
        _replace_table(store.config.offline_store, table, features)
        source = PostgreSQLSource(name=f"{spec.name}_source", table=table, timestamp_field=EVENT_TIMESTAMP)
        where = table
    else:
        from feast import FileSource

        path = source_path(Path(store.repo_path), spec)
        features.to_parquet(path, index=False)
        source = FileSource(name=f"{spec.name}_source", path=str(path), timestamp_field=EVENT_TIMESTAMP)
        where = str(path)
    store.apply(definitions(spec, source, list(features.columns)))
    return where


def _replace_table(config, table: str, frame: pd.DataFrame) -> None:
    """`frame` as the whole content of `table`, in one transaction (a reader sees the old rows or the
    new ones, never an empty or missing table)."""
    import numpy as np
    from feast.infra.utils.postgres.connection_utils import _df_to_create_table_sql, _get_conn

    rows = frame.replace({np.nan: None}).to_numpy().tolist()
    placeholders = ", ".join(["%s"] * frame.shape[1])
    with _get_conn(config) as connection, connection.cursor() as cursor:
        cursor.execute(f'DROP TABLE IF EXISTS "{table}"')
        cursor.execute(_df_to_create_table_sql(frame, table))
        cursor.executemany(f'INSERT INTO "{table}" VALUES ({placeholders})', rows)


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
    import pandas as pd

    return pd.DataFrame(store.get_online_features(features=service, entity_rows=rows).to_dict())
