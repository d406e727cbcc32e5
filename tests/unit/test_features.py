"""The Feast store on both kinds of location (components/feature_location.py): the embedded default repo
directory and one real PostgreSQL database holding the registry, the offline rows and the online store
(what a cluster's pods share). Point-in-time correctness, definitions and the online store, alike."""

from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import UTC, datetime

import pandas as pd
import pytest

from components import features
from components.errors import PipelineRunError
from components.spec import EVENT_TIMESTAMP
from tests.conftest import CHURN_SPEC, REPO


@pytest.fixture(params=["directory", "postgres"])
def store(request, tmp_path):
    if request.param == "directory":
        return features.open_store(tmp_path / "repo")
    server = request.getfixturevalue("postgres")
    return features.open_store(server.create_database(f"feast_{uuid.uuid4().hex[:12]}"))


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


def test_a_second_publish_replaces_the_rows(store, churn_spec, churn_frame):
    features.publish_features(store, churn_spec, _rows(churn_spec, churn_frame, "2024-01-01", tenure=5))
    features.publish_features(store, churn_spec, _rows(churn_spec, churn_frame, "2024-01-01", tenure=7))
    keys = _rows(churn_spec, churn_frame, "2024-01-01")[churn_spec.entity.key]
    labels = pd.DataFrame(
        {churn_spec.entity.key: keys, EVENT_TIMESTAMP: pd.Timestamp("2024-02-01", tz="UTC"), "churn": "No"}
    )
    assert list(features.training_frame(store, churn_spec, labels)["tenure"]) == [7, 7, 7]


def test_a_postgres_location_shares_one_store_between_processes(postgres, churn_spec, churn_frame):
    """What separate pods see: another process opening the same URI reads what this one published."""
    location = postgres.create_database(f"feast_{uuid.uuid4().hex[:12]}")
    store = features.open_store(location)
    features.publish_features(store, churn_spec, _rows(churn_spec, churn_frame, "2024-01-01", monthly_charges=42.5))
    features.materialize_online(store, churn_spec, datetime(2024, 6, 1, tzinfo=UTC))
    key = int(_rows(churn_spec, churn_frame, "2024-01-01")[churn_spec.entity.key].iloc[0])
    script = (
        "import sys; from components import features; from components.spec import load_spec; "
        "spec = load_spec(sys.argv[2]); "
        "print(features.online_features(features.open_store(sys.argv[1]), spec, [int(sys.argv[3])])"
        "['monthly_charges'][0])"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, location, str(CHURN_SPEC), str(key)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "42.5"


@pytest.mark.parametrize(
    ("uri", "named"),
    [
        ("postgresql://127.0.0.1:5432/db", "user"),
        ("postgresql://u@127.0.0.1:5432/", "database"),
        ("postgresql://u@127.0.0.1/db", "password"),
    ],
)
def test_an_incomplete_postgres_uri_is_refused_naming_what_is_missing(uri, named, monkeypatch):
    monkeypatch.delenv("PGPASSWORD", raising=False)
    with pytest.raises(PipelineRunError, match=f"feature_repo: .*lacks.*{named}"):
        features.open_store(uri)
