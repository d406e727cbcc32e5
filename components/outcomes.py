"""The outcome ledger: every logged prediction and, once it comes back, its label (the ground truth).

Predictions are recorded by the monitoring service from the payload log (one row per predicted row,
under its prediction id `<request id>-<row>`, see `serving/prediction_ids.py`); labels arrive as feedback,
by prediction id or by entity key and event time (the latest prediction for that entity at or before
it). The ledger is durable and lives with the feature store (`feature_repo`): a repo directory keeps it
in `data/outcomes.db` (SQLite, write-ahead log), a PostgreSQL `feature_repo` in two tables of that same
database, so a restart of any process loses nothing that was acknowledged.

Read by the monitoring service (live model quality per revision), by the rollout's quality gate (through
its metrics) and by the extract step (labelled production rows become training rows).
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from components.errors import ShepherdError
from components.feature_location import is_postgres, sqlalchemy_url

if TYPE_CHECKING:
    import pandas as pd
    from sqlalchemy.engine import Engine

LEDGER_FILE = "outcomes.db"  # in a repo directory's data/
MAX_ID_LENGTH = 160  # a request id (≤ 128) + "-" + a row index
MAX_LABEL_LENGTH = 256
ID_CHUNK = 500  # ids per IN (...) query


class FeedbackRejected(ShepherdError):
    """Feedback that cannot be recorded; each error names the item and field. Nothing was recorded."""

    http_status = 422
    exit_code = 10

    def __init__(self, errors: list[str], *, hint: str | None = None):
        shown = errors[:20]
        more = f"\n  … and {len(errors) - len(shown)} more" if len(errors) > len(shown) else ""
        super().__init__(
            f"{len(errors)} feedback item(s) rejected, nothing recorded:\n  " + "\n  ".join(shown) + more, hint=hint
        )
        self.errors = errors


@dataclass(frozen=True)
class Prediction:
    """One predicted row as the payload log showed it."""

    id: str
    model: str
    version: str
    role: str  # champion | canary
    predicted_at: float  # unix seconds
    score: float  # the predicted probability of the positive class
    features: dict
    entity_key: str | None = None


@dataclass(frozen=True)
class Feedback:
    """One label as a client sent it: for a prediction id, or for an entity at an event time."""

    label: object
    id: str | None = None
    entity: str | None = None
    event_time: float | None = None  # unix seconds


@dataclass(frozen=True)
class TargetValues:
    """The values a label may take, per task: binary the spec's two values (1/true and 0/false stand for
    them), multiclass one of the listed classes, regression a finite number (within min..max if given)."""

    column: str
    positive: str | None = None
    negative: str | None = None
    classes: tuple[str, ...] | None = None
    numeric: bool = False
    min: float | None = None
    max: float | None = None

    @classmethod
    def of(cls, spec) -> TargetValues:
        """The values a label of a model trained from `spec` may take."""
        target = spec.target
        if spec.task == "regression":
            return cls(target.column, numeric=True, min=target.min, max=target.max)
        if spec.task == "multiclass":
            return cls(target.column, classes=tuple(target.classes))
        return cls(target.column, target.positive, target.negative)

    @property
    def expected(self) -> str:
        """The values allowed, in words (for an error message)."""
        if self.numeric:
            low = "" if self.min is None else f" >= {self.min:g}"
            high = "" if self.max is None else f" <= {self.max:g}"
            return "a number" + (f"{low}{' and' if low and high else ''}{high}" if low or high else "")
        if self.classes is not None:
            return f"one of {list(self.classes)}"
        return f"{self.positive!r} or {self.negative!r} (or 1/0, true/false)"

    def normalise(self, value: object) -> str | None:
        """The target's own value for `value` (a number's canonical text for regression), or None if it is
        not one."""
        if self.numeric:
            return self._number(value)
        if self.classes is not None:
            text = value if isinstance(value, str) else None
            if isinstance(value, int) and not isinstance(value, bool):
                text = str(value)  # a class named "3" sent as the number 3
            return text if text in self.classes else None
        if isinstance(value, bool):
            return self.positive if value else self.negative
        if isinstance(value, int | float) and not isinstance(value, bool) and value in (0, 1):
            return self.positive if value == 1 else self.negative
        if isinstance(value, str):
            if value in (self.positive, self.negative):
                return value
            lowered = value.strip().lower()
            if lowered in ("1", "true"):
                return self.positive
            if lowered in ("0", "false"):
                return self.negative
        return None

    def _number(self, value: object) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            return None
        try:
            number = float(value)
        except ValueError:
            return None
        if not math.isfinite(number):
            return None
        if (self.min is not None and number < self.min) or (self.max is not None and number > self.max):
            return None
        return repr(number)


@dataclass(frozen=True)
class Receipt:
    """What a feedback call recorded."""

    accepted: int  # new labels
    duplicates: int  # the same label again for a labelled prediction: nothing changed
    skipped: list[str] = field(default_factory=list)  # unknown predictions left out (when asked to skip)


MAX_FEEDBACK_ITEMS = 10_000  # per call; `shepherd feedback` sends bigger files in parts


def parse_feedback(body: object) -> list[Feedback]:
    """Feedback items from a request body `{"labels": [{"id": ..., "label": ...}, {"entity": ...,
    "event_time": ..., "label": ...}]}`; raises FeedbackRejected naming each bad `labels[i].<field>`."""
    if not isinstance(body, dict) or not isinstance(body.get("labels"), list):
        raise FeedbackRejected(['labels: required, a list of {"id", "label"} or {"entity", "event_time", "label"}'])
    raw = body["labels"]
    unknown_keys = sorted(set(body) - {"labels"})
    if unknown_keys:
        raise FeedbackRejected([f"{k}: not a field of a feedback body (only 'labels')" for k in unknown_keys])
    if not raw:
        raise FeedbackRejected(["labels: empty; send at least one label"])
    if len(raw) > MAX_FEEDBACK_ITEMS:
        raise FeedbackRejected([f"labels: {len(raw)} items, more than the {MAX_FEEDBACK_ITEMS} one call takes"])
    items, errors = [], []
    for index, entry in enumerate(raw):
        where = f"labels[{index}]"
        if not isinstance(entry, dict):
            errors.append(f"{where}: expected an object, got {type(entry).__name__}")
            continue
        extra = sorted(set(entry) - {"id", "entity", "event_time", "label"})
        if extra:
            errors.append(f"{where}.{extra[0]}: not a field (expected id, or entity and event_time; and label)")
            continue
        if "label" not in entry or entry["label"] is None:
            errors.append(f"{where}.label: required")
            continue
        label = entry["label"]
        if not isinstance(label, str | int | float | bool) or (
            isinstance(label, str) and len(label) > MAX_LABEL_LENGTH
        ):
            errors.append(f"{where}.label: expected a string, a number or a boolean")
            continue
        if "id" in entry:
            if "entity" in entry or "event_time" in entry:
                errors.append(f"{where}: give id, or entity and event_time, not both")
                continue
            ident = entry["id"]
            if not isinstance(ident, str) or not 0 < len(ident) <= MAX_ID_LENGTH:
                errors.append(f"{where}.id: expected a prediction id (a string of 1-{MAX_ID_LENGTH} characters)")
                continue
            items.append(Feedback(label=label, id=ident))
            continue
        if "entity" not in entry:
            errors.append(f"{where}.id: required (or entity and event_time)")
            continue
        entity = entry["entity"]
        if isinstance(entity, bool) or not isinstance(entity, str | int) or not 0 < len(str(entity)) <= 128:
            errors.append(f"{where}.entity: expected the entity key (a string or an integer)")
            continue
        when = _timestamp(entry.get("event_time"))
        if when is None:
            errors.append(f"{where}.event_time: required with entity, an ISO 8601 time with a zone or unix seconds")
            continue
        items.append(Feedback(label=label, entity=str(entity), event_time=when))
    if errors:
        raise FeedbackRejected(errors)
    return items


def _timestamp(value: object) -> float | None:
    """Unix seconds from unix seconds or an ISO 8601 string with a zone; None when neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) and value >= 0 else None
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed.timestamp() if parsed.tzinfo is not None else None
    return None


def ledger_url(feature_repo: str | Path) -> str:
    """The SQLAlchemy URL of the ledger that lives with `feature_repo`."""
    if is_postgres(feature_repo):
        return sqlalchemy_url(str(feature_repo))
    data = Path(feature_repo) / "data"
    data.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{data / LEDGER_FILE}"


def _tables():
    from sqlalchemy import Column, Float, Index, MetaData, String, Table, Text

    metadata = MetaData()
    predictions = Table(
        "shepherd_predictions",
        metadata,
        Column("model", String(64), primary_key=True),
        Column("id", String(MAX_ID_LENGTH), primary_key=True),
        Column("version", String(32), nullable=False),
        Column("role", String(16), nullable=False),
        Column("predicted_at", Float, nullable=False),
        Column("score", Float, nullable=False),
        Column("entity_key", String(128), nullable=True),
        Column("features", Text, nullable=False),
        Index("ix_shepherd_predictions_time", "model", "predicted_at"),
        Index("ix_shepherd_predictions_entity", "model", "entity_key", "predicted_at"),
        # What serves each role now (its latest prediction) and each role's quality window, without a scan.
        Index("ix_shepherd_predictions_role_time", "model", "role", "predicted_at"),
    )
    labels = Table(
        "shepherd_labels",
        metadata,
        Column("model", String(64), primary_key=True),
        Column("prediction_id", String(MAX_ID_LENGTH), primary_key=True),
        Column("label", String(MAX_LABEL_LENGTH), nullable=False),
        Column("labelled_at", Float, nullable=False),
        Index("ix_shepherd_labels_time", "model", "labelled_at"),
    )
    return metadata, predictions, labels


class OutcomeLedger:
    """Predictions and their labels in a SQL database (SQLite file or PostgreSQL)."""

    def __init__(self, url: str):
        from sqlalchemy import create_engine, event

        self.url = url
        self.engine: Engine = create_engine(url, pool_pre_ping=True)
        if self.engine.dialect.name == "sqlite":

            @event.listens_for(self.engine, "connect")
            def _durable(connection, _record):  # WAL: readers never block the writer; FULL: a commit is on disk
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA synchronous=FULL")
                connection.execute("PRAGMA busy_timeout=30000")

        self.metadata, self.predictions, self.labels = _tables()
        self.metadata.create_all(self.engine)
        for index in self.predictions.indexes | self.labels.indexes:  # a ledger made by an older release
            index.create(self.engine, checkfirst=True)
        self._write_lock = threading.Lock()  # one writer per process; the database serialises the rest

    @classmethod
    def at(cls, feature_repo: str | Path) -> OutcomeLedger:
        return cls(ledger_url(feature_repo))

    def close(self) -> None:
        self.engine.dispose()

    def _insert(self, table):
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        return insert(table)

    # -- predictions ----------------------------------------------------------------------------
    def record_predictions(self, predictions: Sequence[Prediction]) -> int:
        """Record predicted rows; a prediction id seen before keeps its first record. Returns how many."""
        if not predictions:
            return 0
        rows = [
            {
                "model": p.model,
                "id": p.id,
                "version": p.version,
                "role": p.role,
                "predicted_at": p.predicted_at,
                "score": p.score,
                "entity_key": p.entity_key,
                "features": json.dumps(p.features, default=str, allow_nan=True),
            }
            for p in predictions
        ]
        statement = self._insert(self.predictions).on_conflict_do_nothing()
        with self._write_lock, self.engine.begin() as connection:
            connection.execute(statement, rows)
        return len(rows)

    # -- feedback -------------------------------------------------------------------------------
    def record_feedback(
        self,
        model: str,
        items: Sequence[Feedback],
        target_of: Callable[[str], TargetValues],
        *,
        skip_unknown: bool = False,
        now: float | None = None,
    ) -> Receipt:
        """Label predictions of `model`, all or nothing: any bad item raises FeedbackRejected (naming
        `labels[i].<field>`) and nothing is recorded. `target_of(version)` gives the values a label of
        that version's prediction may take. The same label again is a duplicate (idempotent); another
        label for a labelled prediction is an error. Unknown predictions are errors unless `skip_unknown`."""
        from sqlalchemy import select

        now = datetime.now(UTC).timestamp() if now is None else now
        errors: list[str] = []
        found = self._resolve(model, items)
        targets: dict[str, TargetValues] = {}
        wanted: dict[str, tuple[int, str]] = {}  # prediction id -> (item index, label)
        skipped: list[str] = []
        for index, item in enumerate(items):
            where = f"labels[{index}]"
            prediction = found.get(index)
            if prediction is None:
                asked = (
                    f"id {item.id!r}"
                    if item.id is not None
                    else f"entity {item.entity!r} at or before {_iso(item.event_time)}"
                )
                if skip_unknown:
                    skipped.append(item.id if item.id is not None else f"{item.entity}@{_iso(item.event_time)}")
                    continue
                errors.append(
                    f"{where}.{'id' if item.id is not None else 'entity'}: no prediction of {model!r} for {asked}"
                )
                continue
            prediction_id, version = prediction
            if version not in targets:
                targets[version] = target_of(version)
            target = targets[version]
            value = target.normalise(item.label)
            if value is None:
                errors.append(
                    f"{where}.label: {item.label!r} is not a value of the target {target.column!r}; "
                    f"expected {target.expected}"
                )
                continue
            earlier = wanted.get(prediction_id)
            if earlier is not None and earlier[1] != value:
                errors.append(
                    f"{where}.label: {value!r} for prediction {prediction_id!r}, which labels[{earlier[0]}] "
                    f"labels {earlier[1]!r}"
                )
                continue
            wanted[prediction_id] = (index, value)
        existing: dict[str, str] = {}
        ids = list(wanted)
        with self.engine.connect() as connection:
            for start in range(0, len(ids), ID_CHUNK):
                chunk = ids[start : start + ID_CHUNK]
                query = select(self.labels.c.prediction_id, self.labels.c.label).where(
                    self.labels.c.model == model, self.labels.c.prediction_id.in_(chunk)
                )
                existing.update(dict(connection.execute(query).tuples().all()))
        new, duplicates = [], 0
        for prediction_id, (index, value) in wanted.items():
            before = existing.get(prediction_id)
            if before is None:
                new.append({"model": model, "prediction_id": prediction_id, "label": value, "labelled_at": now})
            elif before == value:
                duplicates += 1
            else:
                errors.append(
                    f"labels[{index}].label: prediction {prediction_id!r} is already labelled {before!r}; "
                    f"a label is final"
                )
        if errors:
            raise FeedbackRejected(
                errors,
                hint="fix or drop the items named (`shepherd feedback --skip-unknown` leaves out predictions "
                "the ledger never saw) and send the file again: labels already recorded count as duplicates",
            )
        if new:
            # A concurrent call may have labelled the same prediction meanwhile: the first label stays.
            statement = self._insert(self.labels).on_conflict_do_nothing()
            with self._write_lock, self.engine.begin() as connection:
                connection.execute(statement, new)
        return Receipt(accepted=len(new), duplicates=duplicates, skipped=skipped)

    def _resolve(self, model: str, items: Sequence[Feedback]) -> dict[int, tuple[str, str]]:
        """Item index -> (prediction id, version) for the items whose prediction is in the ledger."""
        from sqlalchemy import select

        table = self.predictions
        found: dict[int, tuple[str, str]] = {}
        by_id: dict[str, list[int]] = {}
        for index, item in enumerate(items):
            if item.id is not None:
                by_id.setdefault(item.id, []).append(index)
        ids = list(by_id)
        with self.engine.connect() as connection:
            for start in range(0, len(ids), ID_CHUNK):
                chunk = ids[start : start + ID_CHUNK]
                query = select(table.c.id, table.c.version).where(table.c.model == model, table.c.id.in_(chunk))
                for prediction_id, version in connection.execute(query):
                    for index in by_id[prediction_id]:
                        found[index] = (prediction_id, version)
            by_entity: dict[str, list[int]] = {}
            for index, item in enumerate(items):
                if item.id is None:
                    by_entity.setdefault(item.entity, []).append(index)
            entities = list(by_entity)
            for start in range(0, len(entities), ID_CHUNK):
                # One query per chunk of entities: their predictions up to the chunk's latest event time,
                # newest first; each item takes its entity's newest at or before its own event time.
                chunk = entities[start : start + ID_CHUNK]
                until = max(items[i].event_time for entity in chunk for i in by_entity[entity])
                query = (
                    select(table.c.entity_key, table.c.predicted_at, table.c.id, table.c.version)
                    .where(table.c.model == model, table.c.entity_key.in_(chunk), table.c.predicted_at <= until)
                    .order_by(table.c.entity_key, table.c.predicted_at.desc(), table.c.id.desc())
                )
                history: dict[str, list[tuple[float, str, str]]] = {}
                for entity, predicted_at, prediction_id, version in connection.execute(query):
                    history.setdefault(entity, []).append((predicted_at, prediction_id, version))
                for entity in chunk:
                    newest_first = history.get(entity, [])
                    for index in by_entity[entity]:
                        at = items[index].event_time
                        match = next((row for row in newest_first if row[0] <= at), None)
                        if match is not None:
                            found[index] = (match[1], match[2])
        return found

    # -- reading --------------------------------------------------------------------------------
    def labelled(
        self,
        model: str,
        *,
        since: float | None = None,
        versions: Iterable[str] | None = None,
        role: str | None = None,
        latest: int | None = None,
        features: bool = True,
    ) -> pd.DataFrame:
        """Labelled predictions of `model` (oldest first): id, version, role, predicted_at, score, entity_key,
        features (a dict; left out with `features=False`), label (the target's value), labelled_at. `since`
        bounds the prediction time; `latest` keeps only the newest N (the database cuts them, so a quality
        window costs the same however many labels the ledger holds)."""
        import pandas as pd
        from sqlalchemy import select

        p, lab = self.predictions, self.labels
        columns = [p.c.id, p.c.version, p.c.role, p.c.predicted_at, p.c.score, p.c.entity_key]
        columns += [p.c.features] if features else []
        query = (
            select(*columns, lab.c.label, lab.c.labelled_at)
            .join(lab, (lab.c.model == p.c.model) & (lab.c.prediction_id == p.c.id))
            .where(p.c.model == model)
        )
        if since is not None:
            query = query.where(p.c.predicted_at >= since)
        if versions is not None:
            query = query.where(p.c.version.in_(list(versions)))
        if role is not None:
            query = query.where(p.c.role == role)
        if latest is not None:
            query = query.order_by(p.c.predicted_at.desc(), p.c.id.desc()).limit(latest)
        else:
            query = query.order_by(p.c.predicted_at, p.c.id)
        with self.engine.connect() as connection:
            frame = pd.DataFrame(connection.execute(query).mappings().all())
        names = ["id", "version", "role", "predicted_at", "score", "entity_key"]
        names += ["features"] if features else []
        if frame.empty:
            return pd.DataFrame(columns=[*names, "label", "labelled_at"])
        if latest is not None:
            frame = frame.iloc[::-1].reset_index(drop=True)
        if features:
            frame["features"] = frame["features"].map(json.loads)
        return frame

    def serving_versions(self, model: str, roles: Iterable[str]) -> dict[str, str]:
        """Role -> the version of that role's latest recorded prediction: what serves it now (one index
        lookup per role)."""
        from sqlalchemy import select

        p = self.predictions
        found = {}
        with self.engine.connect() as connection:
            for role in roles:
                latest = (
                    select(p.c.version)
                    .where((p.c.model == model) & (p.c.role == role))
                    .order_by(p.c.predicted_at.desc())
                    .limit(1)
                )
                version = connection.execute(latest).scalar()
                if version is not None:
                    found[role] = version
        return found

    def models(self) -> list[str]:
        """Models with at least one label."""
        from sqlalchemy import select

        with self.engine.connect() as connection:
            return sorted(connection.execute(select(self.labels.c.model).distinct()).scalars().all())

    def counts(self, model: str) -> dict[str, int]:
        """How many predictions and labels the ledger holds for `model`."""
        from sqlalchemy import func, select

        with self.engine.connect() as connection:
            predictions = connection.execute(
                select(func.count()).select_from(self.predictions).where(self.predictions.c.model == model)
            ).scalar_one()
            labels = connection.execute(
                select(func.count()).select_from(self.labels).where(self.labels.c.model == model)
            ).scalar_one()
        return {"predictions": int(predictions), "labels": int(labels)}

    # -- retention --------------------------------------------------------------------------------
    def prune_unlabelled(self, older_than: float, chunk: int = 5_000) -> int:
        """Delete predictions made before `older_than` (unix seconds) that never got a label: most
        predictions never do, and they are only kept for a label to find. Labelled predictions stay (they
        are training rows and live quality). Deletes in chunks, each its own short transaction, so
        ingestion and feedback wait at most one chunk. Returns how many were deleted."""
        from sqlalchemy import and_, delete, exists, select

        p, lab = self.predictions, self.labels
        unlabelled = and_(
            p.c.predicted_at < older_than,
            ~exists().where((lab.c.model == p.c.model) & (lab.c.prediction_id == p.c.id)),
        )
        deleted = 0
        while True:
            with self._write_lock, self.engine.begin() as connection:
                keys = connection.execute(select(p.c.model, p.c.id).where(unlabelled).limit(chunk)).all()
                for model in {model for model, _ in keys}:
                    ids = [i for m, i in keys if m == model]
                    for start in range(0, len(ids), ID_CHUNK):
                        part = ids[start : start + ID_CHUNK]
                        # The condition again: a label recorded since the select keeps its prediction.
                        done = connection.execute(delete(p).where((p.c.model == model) & p.c.id.in_(part), unlabelled))
                        deleted += done.rowcount
            if len(keys) < chunk:
                return deleted


def _iso(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    return datetime.fromtimestamp(seconds, UTC).isoformat()
