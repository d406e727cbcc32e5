"""Materialize: publish the validated feature rows to the shared Feast repo and load them into the
online store for serving. Runs only after validation passed (write-audit-publish)."""

from kfp import dsl

from components.adapter import step


@step
def materialize_op(spec_yaml: str, feature_repo: str, feature_rows: dsl.Input[dsl.Dataset]):
    """Publish the feature rows and definitions to `feature_repo`, then materialize up to now."""
    from datetime import UTC, datetime

    import pandas as pd

    from components import features
    from components.progress import say
    from components.spec import parse_spec

    spec = parse_spec(spec_yaml)
    store = features.open_store(feature_repo)
    features.publish_features(store, spec, pd.read_parquet(feature_rows.path))
    features.materialize_online(store, spec, datetime.now(UTC))
    say(f"materialize: {features.feature_view_name(spec)} published and loaded into the online store")
