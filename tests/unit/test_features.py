"""The Feast repo on a real local store: point-in-time correctness and the online store."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import pytest

from components import features
from components.spec import EVENT_TIMESTAMP


@pytest.fixture
def store(tmp_path):
    return features.open_store(tmp_path / "repo")


def _rows(spec, frame, stamp, **overrides):
    rows = frame[[spec.entity.key, *spec.feature_names]].head(3).copy()
    rows[EVENT_TIMESTAMP] = pd.Timestamp(stamp, tz="UTC")
    for column, value in overrides.items():
        rows[column] = value
    return rows


def test_training_set_is_point_in_time_correct(store, churn_spec, churn_frame):
    # The same customers observed twice: tenure 5 in January, tenure 9 in March.
    history = pd.concat(
        [
            _rows(churn_spec, churn_frame, "2024-01-01", tenure=5),
            _rows(churn_spec, churn_frame, "2024-03-01", tenure=9),
        ]
    )
    features.publish_features(store, churn_spec, history)
    keys = history[churn_spec.entity.key].unique()
    labels = pd.DataFrame(
        {
            churn_spec.entity.key: list(keys) * 2,
            EVENT_TIMESTAMP: [pd.Timestamp("2024-02-01", tz="UTC")] * 3 + [pd.Timestamp("2024-04-01", tz="UTC")] * 3,
            "churn": ["No"] * 6,
        }
    )
    frame = features.training_frame(store, churn_spec, labels)
    by_time = frame.groupby(frame[EVENT_TIMESTAMP].dt.month)["tenure"].unique()
    assert list(by_time[2]) == [5]  # February labels never see March's values
    assert list(by_time[4]) == [9]


def test_definitions_cover_the_spec_and_a_feature_service(store, churn_spec, churn_frame):
    features.publish_features(store, churn_spec, _rows(churn_spec, churn_frame, "2024-01-01"))
    view = store.get_feature_view("churn_features")
    assert {f.name for f in view.features} == set(churn_spec.feature_names)
    assert view.entities == ["customer"]
    service = store.get_feature_service("churn_model")
    assert service.feature_view_projections[0].name == "churn_features"


def test_materialized_online_store_serves_latest_values(store, churn_spec, churn_frame):
    history = pd.concat(
        [
            _rows(churn_spec, churn_frame, "2024-01-01", monthly_charges=10.0),
            _rows(churn_spec, churn_frame, "2024-03-01", monthly_charges=20.0),
        ]
    )
    features.publish_features(store, churn_spec, history)
    features.materialize_online(store, churn_spec, datetime(2024, 6, 1, tzinfo=UTC))
    keys = [int(k) for k in history[churn_spec.entity.key].unique()]
    online = features.online_features(store, churn_spec, [*keys, 10**9])
    assert list(online["monthly_charges"][:3]) == [20.0, 20.0, 20.0]
    assert pd.isna(online["monthly_charges"].iloc[3])  # unknown customer: no values, no error
