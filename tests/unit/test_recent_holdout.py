"""The time-based holdout (`training.holdout_by: time`, the default): the most recent rows judge a model, and the
evaluate step scores the champion on those same rows; a source without timestamps falls back to the stable
entity-key hash. Labelled production rows join the training set observed at their prediction time."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from components import data, train
from components.evaluate import evaluate_run
from components.metrics import classification_metrics
from components.spec import EVENT_TIMESTAMP, parse_spec


def _with_months(frame: pd.DataFrame) -> pd.DataFrame:
    """The churn rows spread over twelve months, as a source with a timestamp column would give them."""
    months = pd.date_range("2025-01-01", periods=12, freq="MS", tz="UTC")
    return frame.assign(**{EVENT_TIMESTAMP: months[np.arange(len(frame)) % 12]})


def test_the_holdout_is_the_most_recent_rows_of_an_exact_size(churn_spec, churn_frame):
    frame = _with_months(churn_frame)
    learn, holdout = train.split(frame, churn_spec)
    assert len(holdout) == round(len(frame) * 0.2)
    assert holdout[EVENT_TIMESTAMP].min() >= learn[EVENT_TIMESTAMP].max()
    newest = frame[EVENT_TIMESTAMP].max()
    assert (holdout[EVENT_TIMESTAMP] == newest).sum() == (frame[EVENT_TIMESTAMP] == newest).sum()  # all of Dec


def test_without_timestamps_the_entity_hash_decides_as_before(churn_spec, churn_frame):
    _, holdout = train.split(churn_frame, churn_spec)  # every row at the spec's snapshot time
    by_hash = data.holdout_mask(churn_frame[churn_spec.entity.key], 0.2, 42)
    assert len(holdout) == round(len(churn_frame) * 0.2)
    overlap = holdout[churn_spec.entity.key].isin(churn_frame.loc[by_hash, churn_spec.entity.key]).mean()
    assert overlap > 0.97  # the same rows but for the boundary (an exact size instead of a threshold)
    entity_spec = parse_spec(
        yaml.safe_dump(
            {
                **yaml.safe_load(churn_spec.to_yaml()),
                "training": {**yaml.safe_load(churn_spec.to_yaml())["training"], "holdout_by": "entity"},
            }
        )
    )
    _, hashed = train.split(churn_frame, entity_spec)
    assert set(hashed[churn_spec.entity.key]) == set(churn_frame.loc[by_hash, churn_spec.entity.key])


@pytest.mark.parametrize("timestamps", ["a timestamp column", "none"])
def test_the_champion_is_rescored_on_the_challengers_holdout(
    registered_churn, churn_spec, churn_frame, tmp_path, timestamps
):
    """evaluate_run (the evaluate step's logic) loads @champion from the registry and scores it on the run's
    holdout: its metrics equal a direct computation on the most recent rows."""
    frame = _with_months(churn_frame) if timestamps != "none" else churn_frame
    path = tmp_path / "training_set.parquet"
    frame.to_parquet(path, index=False)
    uri = registered_churn["tracking_uri"]
    challenger = train.train_and_log(churn_spec, path, uri, {"shepherd.fingerprint": f"holdout-{timestamps}"})
    verdict = evaluate_run(churn_spec, path, uri, challenger.model_uri)

    _, holdout = train.split(frame, churn_spec)
    champion = mlflow.sklearn.load_model(f"models:/churn/{registered_churn['version']}")
    y = data.labels(holdout, churn_spec)
    expected = classification_metrics(y, train.predict_positive(champion, holdout, churn_spec), 0.5)
    assert verdict.champion == pytest.approx(expected)
    assert str(verdict.champion_version) == str(registered_churn["version"])
    if timestamps != "none":
        assert holdout[EVENT_TIMESTAMP].min() == pd.Timestamp("2025-10-01", tz="UTC")


def test_production_rows_are_observed_at_their_prediction_time_with_their_own_keys(churn_spec):
    labelled = pd.DataFrame(
        {
            "id": ["a-0", "a-1", "b-0"],
            "entity_key": [None, "17", None],
            "predicted_at": [1_796_292_000.0, 1_796_292_001.0, 1_796_292_002.0],
            "features": [{"tenure": 3, "contract": "Month-to-month", "extra": 1}, {"tenure": 5}, {"tenure": 7}],
            "label": ["Yes", "No", "Yes"],
        }
    )
    features, entities = data.production_rows(labelled, churn_spec)
    assert list(entities["churn"]) == ["Yes", "No", "Yes"]
    keys = list(entities[churn_spec.entity.key])
    assert keys[1] == 17 and keys[0] < 0 and keys[2] < 0 and keys[0] != keys[2]
    assert keys == list(data.production_rows(labelled, churn_spec)[1][churn_spec.entity.key])  # stable
    assert entities[EVENT_TIMESTAMP].iloc[0] == pd.Timestamp("2026-12-03T10:00:00", tz="UTC")
    assert "extra" not in features.columns and list(features["tenure"]) == [3, 5, 7]


def test_the_training_window_keeps_the_newest_days(churn_spec):
    stamps = pd.to_datetime(["2026-01-01", "2026-11-20", "2026-12-01"], utc=True)
    frame = pd.DataFrame({EVENT_TIMESTAMP: stamps, "x": [1, 2, 3]})
    assert list(data.within_window(frame, stamps.max(), 30)["x"]) == [2, 3]
    assert list(data.within_window(frame, stamps.max(), None)["x"]) == [1, 2, 3]
