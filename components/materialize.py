"""Materialize: load the validated feature values into Feast's online store for serving."""

from components.adapter import step


@step
def materialize_op(spec_yaml: str, feature_repo: str):
    """Materialize the model's feature view up to now into the online store."""
    from datetime import UTC, datetime
    from pathlib import Path

    from components import features
    from components.progress import say
    from components.spec import parse_spec

    spec = parse_spec(spec_yaml)
    store = features.open_store(Path(feature_repo))
    features.materialize_online(store, spec, datetime.now(UTC))
    say(f"materialize: {features.feature_view_name(spec)} loaded into the online store")
