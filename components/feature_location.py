"""Where the Feast feature store lives: one string, `feature_repo` everywhere (the pipeline parameter,
`shepherd run|submit`, `SHEPHERD_FEATURE_REPO`, the predictor, the webhook), either

- a directory holding `feature_store.yaml`; an empty one gets the embedded default (file offline store
  with Parquet rows, SQLite online store, file registry): one machine, one filesystem; or
- a PostgreSQL URI, `postgresql://user:password@host:port/database[?sslmode=...]`: that one database
  holds Feast's registry (SQL registry), the offline rows (a table per model) and the online store,
  which is what separate pods share on a cluster. The password may come from `PGPASSWORD` instead of
  the URI (keep it out of run parameters: a Secret in the pod's environment); `sslmode` defaults to
  Feast's `require`.

No heavy imports here: the CLI's settings ask `is_postgres` at start.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from components.errors import PipelineRunError

POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")


def is_postgres(location: str | Path) -> bool:
    return urlsplit(str(location)).scheme in POSTGRES_SCHEMES


def postgres_connection(uri: str) -> dict:
    """Feast's PostgreSQL store settings from `uri` (no Feast import: the CLI checks a URI up front);
    raises PipelineRunError naming what the URI lacks."""
    parts = urlsplit(uri)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    database = parts.path.lstrip("/")
    password = unquote(parts.password) if parts.password is not None else os.environ.get("PGPASSWORD")
    required = {"user": parts.username, "host": parts.hostname, "database": database}
    missing = [name for name, value in required.items() if not value]
    if password is None:
        missing.append("password (in the URI or PGPASSWORD)")
    try:
        port = parts.port or 5432
    except ValueError:
        missing.append("a numeric port")
    if missing:
        raise PipelineRunError(
            f"feature_repo: the PostgreSQL URI lacks {', '.join(missing)}",
            hint="write it as postgresql://user:password@host:port/database (or the password in PGPASSWORD)",
        )
    return {
        "type": "postgres",
        "host": parts.hostname,
        "port": port,
        "database": database,
        "user": unquote(parts.username),
        "password": password,
        "sslmode": query.get("sslmode", "require"),
    }


def check(location: str | Path) -> None:
    """Refuse a PostgreSQL location that cannot work, before a run starts (a directory always can)."""
    if is_postgres(location):
        postgres_connection(str(location))


def sqlalchemy_url(uri: str) -> str:
    """The database at `uri` as a SQLAlchemy URL on psycopg (Feast's SQL registry, the outcome ledger)."""
    from sqlalchemy.engine import URL

    connection = postgres_connection(uri)
    password = urlsplit(uri).password
    return URL.create(
        "postgresql+psycopg",
        username=connection["user"],
        password=unquote(password) if password is not None else None,  # else libpq reads PGPASSWORD
        host=connection["host"],
        port=connection["port"],
        database=connection["database"],
        query={"sslmode": connection["sslmode"]},
    ).render_as_string(hide_password=False)


def postgres_config(uri: str):
    """Feast's RepoConfig with the registry, the offline and the online store in the database at `uri`."""
    from feast.repo_config import RepoConfig

    connection = postgres_connection(uri)
    return RepoConfig(
        project="shepherd",
        provider="local",
        registry={
            "registry_type": "sql",
            "path": sqlalchemy_url(uri),
            "cache_ttl_seconds": 60,
        },
        online_store=connection,
        offline_store=connection,
        entity_key_serialization_version=3,
    )
