"""Benchmark: ground truth feedback (issue G). How fast labels go into the outcome ledger, through the
plane and by calling the ledger directly, and how long live quality's join of predictions with labels
takes as the ledger grows, on SQLite and on PostgreSQL, side by side in one run.

1. Ingestion: a real local plane serves churn v1 with the payload logger pointed at its own drift
   service; N rows of the real churn table are predicted (batches of 100), and once the ledger holds
   them their labels are posted to `POST /v1/models/churn/feedback` in parts of 1,000 and of 5,000
   (one client, parts one after another, as `shepherd feedback` sends a file). The same number of labels
   go to `OutcomeLedger.record_feedback` directly, on a SQLite file and on PostgreSQL, in the same parts.
   Every round labels fresh predictions (a label is final; the same label again is only a duplicate).
2. Join: `QualityMonitor.compute_model("churn")` on ledgers holding 10,000 and 100,000 predictions
   (champion v1 and canary v2, half of each labelled), SQLite vs PostgreSQL; then one cProfile of it
   to see where the time goes.

Needs PostgreSQL (`make e2e-tools`). Results go to docs/benchmarks.md.

    python -m benchmarks.feedback --output docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from benchmarks.report import machine, write_section

REPO = Path(__file__).resolve().parent.parent
SECTION = "## Feedback ingestion and the label join (issue G)"
MODEL = "churn"
PART_SIZES = (1_000, 5_000)
PREDICT_BATCH = 100
JOIN_SIZES = (10_000, 100_000)  # predictions in the ledger; half of them labelled
INGESTION_PATHS = ("plane", "sqlite", "postgres", "sqlite-entity", "postgres-entity")


def _churn():
    from components import data
    from components.spec import load_spec

    spec = load_spec(REPO / "specs" / "churn.yaml")
    features, entities = data.split_source(data.load_source(spec), spec)
    return spec, entities.merge(features, on=[spec.entity.key, "event_timestamp"])


def _facts(spec):
    from components.outcomes import TargetValues
    from monitoring.quality import SpecFacts

    target = TargetValues(spec.target.column, spec.target.positive, spec.target.negative)
    rules = spec.evaluation
    return SpecFacts(target, rules.decision_threshold, dict(rules.minimum), dict(rules.maximum))


def _parts(labels: list[tuple[str, str]], part: int) -> list[list[tuple[str, str]]]:
    return [labels[start : start + part] for start in range(0, len(labels), part)]


class PlanePath:
    """Predictions and labels through a running plane, as a client sends them."""

    def __init__(self, url: str, token: str, rows: list[dict], truth: list[str]):
        import httpx

        self.client = httpx.Client(base_url=url, timeout=300)
        self.auth = {"Authorization": f"Bearer {token}"}
        self.rows, self.truth = rows, truth
        self.cursor = 0

    def counts(self) -> dict:
        return self.client.get(f"/drift/models/{MODEL}/quality").json()

    def prepare(self, n: int) -> list[tuple[str, str]]:
        """Predict `n` rows in batches; wait until the ledger holds them. Returns (prediction id, true label)."""
        expected = self.counts()["predictions"] + n
        labels = []
        for _ in range(0, n, PREDICT_BATCH):
            picked = [(self.cursor + i) % len(self.rows) for i in range(PREDICT_BATCH)]
            self.cursor += PREDICT_BATCH
            answer = self.client.post(f"/v1/models/{MODEL}:predict", json={"instances": [self.rows[i] for i in picked]})
            answer.raise_for_status()
            predictions = answer.json()["predictions"]
            labels += [(p["id"], self.truth[i]) for p, i in zip(predictions, picked, strict=True)]
        answered = time.time()
        deadline = time.monotonic() + 300
        while (held := self.counts()["predictions"]) < expected:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the ledger holds {held} predictions, {expected} expected, after 300 s")
            time.sleep(0.2)
        self._settle(answered)
        return labels

    def _settle(self, answered: float) -> None:
        """Wait for the drift service's computation over the new rows (Evidently, every 5 s while rows come
        in): labels come back long after the predictions, and it would take the CPU from whatever is timed next."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            results = self.client.get(f"/drift/models/{MODEL}").json()["results"]
            if any(r["computed_at"] > answered for r in results):
                time.sleep(0.5)
                return
            time.sleep(0.2)
        raise RuntimeError("the drift service computed nothing over the new rows within 60 s")

    def post(self, labels: list[tuple[str, str]], part: int) -> float:
        bodies = [{"labels": [{"id": i, "label": label} for i, label in chunk]} for chunk in _parts(labels, part)]
        started = time.perf_counter()
        for body in bodies:
            answer = self.client.post(f"/v1/models/{MODEL}/feedback", json=body, headers=self.auth)
            if answer.status_code != 200 or answer.json()["accepted"] != len(body["labels"]):
                raise RuntimeError(f"feedback answered {answer.status_code}: {answer.text[:500]}")
        return time.perf_counter() - started

    def close(self) -> None:
        self.client.close()


class LedgerPath:
    """The same, calling the ledger in this process (predictions recorded as the drift service would), the
    labels by prediction id or (`by_entity`) by entity key and event time."""

    def __init__(self, ledger, facts, rows: list[dict], truth: list[str], by_entity: bool = False):
        self.ledger, self.facts = ledger, facts
        self.rows, self.truth = rows, truth
        self.by_entity = by_entity
        self.rng = np.random.default_rng(0)
        self.event_time = 0.0

    def prepare(self, n: int) -> list[tuple[str, str]]:
        """`n` new predictions; returns (prediction id or entity key, true label)."""
        from components.outcomes import Prediction

        request = uuid.uuid4().hex[:16]
        now = time.time()
        self.event_time = now + 1
        predictions = [
            Prediction(
                id=f"{request}{i // PREDICT_BATCH}-{i % PREDICT_BATCH}",
                model=MODEL,
                version="1",
                role="champion",
                predicted_at=now,
                score=float(self.rng.uniform()),
                features=self.rows[i % len(self.rows)],
                entity_key=f"{request}-{i}",
            )
            for i in range(n)
        ]
        for start in range(0, n, 10_000):
            self.ledger.record_predictions(predictions[start : start + 10_000])
        return [
            (p.entity_key if self.by_entity else p.id, self.truth[i % len(self.truth)])
            for i, p in enumerate(predictions)
        ]

    def post(self, labels: list[tuple[str, str]], part: int) -> float:
        from components.outcomes import Feedback

        def item(key: str, label: str) -> Feedback:
            if self.by_entity:
                return Feedback(label, entity=key, event_time=self.event_time)
            return Feedback(label, id=key)

        chunks = [[item(key, label) for key, label in chunk] for chunk in _parts(labels, part)]
        started = time.perf_counter()
        for items in chunks:
            receipt = self.ledger.record_feedback(MODEL, items, lambda version: self.facts.target)
            if receipt.accepted != len(items):
                raise RuntimeError(f"record_feedback accepted {receipt.accepted} of {len(items)}")
        return time.perf_counter() - started


def ingestion(n: int, rounds: int, postgres, work: Path, spec, frame) -> tuple[dict, dict]:
    """Seconds to post `n` labels, per (path, part size), one entry per round; the plane's ledger at the end
    (predictions, labels, seconds of one compute_model on it)."""
    from prometheus_client import CollectorRegistry

    from components.outcomes import OutcomeLedger
    from monitoring.quality import QualityMonitor
    from pipelines.direct import train_and_register
    from serving.backends import LocalBackend
    from serving.inference_service import build_inference_service
    from serving.plane_auth import token_for
    from serving.traffic import instances
    from tests.support.plane_processes import running_plane

    rows, truth = instances(spec, frame), frame[spec.target.column].astype(str).tolist()
    facts = _facts(spec)
    print("[bench] training and registering churn v1…", flush=True)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    assert train_and_register(spec, frame, uri, work).version == "1"
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    results: dict[tuple[str, int], list[float]] = {(p, s): [] for p in INGESTION_PATHS for s in PART_SIZES}
    home = work / "plane"
    home.mkdir()
    print("[bench] starting the plane, deploying churn v1 with the payload logger…", flush=True)
    with running_plane(home, uri) as plane:
        LocalBackend(plane.url).apply(build_inference_service(spec, "1", payload_log_url=f"{plane.url}/drift/"))
        sqlite_ledger = OutcomeLedger.at(work / "direct_repo")
        postgres_ledger = OutcomeLedger.at(postgres.create_database(f"feedback_{uuid.uuid4().hex[:8]}"))
        through_plane = PlanePath(plane.url, token_for(plane.url), rows, truth)
        paths = {
            "plane": through_plane,
            "sqlite": LedgerPath(sqlite_ledger, facts, rows, truth),
            "postgres": LedgerPath(postgres_ledger, facts, rows, truth),
            "sqlite-entity": LedgerPath(sqlite_ledger, facts, rows, truth, by_entity=True),
            "postgres-entity": LedgerPath(postgres_ledger, facts, rows, truth, by_entity=True),
        }
        try:
            for round_number in range(1, rounds + 1):
                for name, path in paths.items():
                    for part in PART_SIZES:
                        started = time.perf_counter()
                        labels = path.prepare(n)
                        prepared = time.perf_counter() - started
                        seconds = path.post(labels, part)
                        results[(name, part)].append(seconds)
                        print(
                            f"[bench] round {round_number}/{rounds}: {name}, parts of {part}: {n} labels in "
                            f"{seconds:.2f} s = {n / seconds:,.0f} rows/s (predictions ready in {prepared:.1f} s)",
                            flush=True,
                        )
            held = through_plane.counts()
            # What the drift service's quality loop (every 5 s) now does each time, measured on its ledger.
            plane_ledger = OutcomeLedger.at(home / "feature_repo")
            try:
                monitor = QualityMonitor(plane_ledger, lambda model, version: facts, CollectorRegistry())
                started = time.perf_counter()
                monitor.compute_model(MODEL)
                held["compute_seconds"] = time.perf_counter() - started
            finally:
                plane_ledger.close()
            print(
                f"[bench] the plane's ledger: {held['predictions']} predictions, {held['labels']} labels; "
                f"compute_model on it {held['compute_seconds']:.2f} s",
                flush=True,
            )
        finally:
            through_plane.close()
            sqlite_ledger.close()
            postgres_ledger.close()
    return results, held


def _join_ledger(ledger, n: int, rows: list[dict], truth: list[str], now: float) -> None:
    """`n` predictions over the last day, alternating champion v1 / canary v2; every other pair labelled."""
    from components.outcomes import Feedback, Prediction, TargetValues

    rng = np.random.default_rng(n)
    predictions = [
        Prediction(
            id=f"req{i // PREDICT_BATCH}-{i % PREDICT_BATCH}",
            model=MODEL,
            version="1" if i % 2 == 0 else "2",
            role="champion" if i % 2 == 0 else "canary",
            predicted_at=now - 86_400 + i * 86_000 / n,
            score=float(rng.uniform()),
            features=rows[i % len(rows)],
            entity_key=str(i),
        )
        for i in range(n)
    ]
    for start in range(0, n, 10_000):
        ledger.record_predictions(predictions[start : start + 10_000])
    labelled = [Feedback(truth[i % len(truth)], id=p.id) for i, p in enumerate(predictions) if i % 4 < 2]
    target = TargetValues("churn", "Yes", "No")
    for start in range(0, len(labelled), 5_000):
        ledger.record_feedback(MODEL, labelled[start : start + 5_000], lambda version: target, now=now)


def _where_time_goes(compute: Callable[[], object]) -> dict[str, float]:
    """One profiled compute: total seconds and the cumulative seconds of its main parts."""
    profiler = cProfile.Profile()
    profiler.enable()
    compute()
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # (file, line, function) -> (calls, ncalls, tottime, cumtime, callers)

    def cumulative(file_suffix: str, function: str, caller: tuple[str, str] | None = None) -> float:
        """Cumulative seconds of `function`, all of it or only its calls from `caller` (file, function)."""
        total = 0.0
        for (file, _, name), (_, _, _, cumtime, callers) in stats.items():
            if not (file.endswith(file_suffix) and name == function):
                continue
            if caller is None:
                total += cumtime
                continue
            total += sum(c[3] for (f, _, n), c in callers.items() if f.endswith(caller[0]) and n == caller[1])
        return total

    labelled = ("components/outcomes.py", "labelled")
    return {
        "total": cumulative("monitoring/quality.py", "compute_model"),
        "serving_versions": cumulative("components/outcomes.py", "serving_versions"),
        "labelled": cumulative(*labelled),
        "query": cumulative("sqlalchemy/engine/base.py", "execute", labelled)
        + cumulative("sqlalchemy/engine/result.py", "all", labelled),
        "dataframe": cumulative("pandas/core/frame.py", "__init__", labelled),
        "features_json": cumulative("json/__init__.py", "loads"),
        "score": cumulative("monitoring/quality.py", "score_window"),
    }


def _analyze(ledger) -> None:
    """What autovacuum does within a minute (autovacuum_naptime) of the inserts: the planner's statistics."""
    from sqlalchemy import text

    with ledger.engine.begin() as connection:
        connection.execute(text("ANALYZE shepherd_predictions"))
        connection.execute(text("ANALYZE shepherd_labels"))


def _count_rows_read(ledger) -> list[int]:
    """Wrap this ledger object's `labelled` to record how many rows each compute reads (rows[0] += ...)."""
    rows = [0]
    read = ledger.labelled

    def counted(*args, **kwargs):
        found = read(*args, **kwargs)
        rows[0] += len(found)
        return found

    ledger.labelled = counted
    return rows


def join(sizes: tuple[int, ...], rounds: int, postgres, work: Path, spec, frame) -> dict:
    """Seconds per compute_model, per (backend, size); the profile of the largest; the labelled rows one
    compute reads from the ledger."""
    from prometheus_client import CollectorRegistry

    from components.outcomes import OutcomeLedger
    from monitoring.quality import QualityMonitor
    from serving.traffic import instances

    rows, truth = instances(spec, frame), frame[spec.target.column].astype(str).tolist()
    facts = _facts(spec)
    now = time.time()
    monitors: dict[tuple[str, int], QualityMonitor] = {}
    read: dict[tuple[str, int], list[int]] = {}
    for size in sizes:
        for backend in ("sqlite", "postgres"):
            where = work / f"join_{size}" if backend == "sqlite" else postgres.create_database(f"join_{size}")
            started = time.perf_counter()
            ledger = OutcomeLedger.at(where)
            _join_ledger(ledger, size, rows, truth, now)
            if backend == "postgres":
                _analyze(ledger)
            print(
                f"[bench] join ledger {backend}, {size:,} predictions: filled in {time.perf_counter() - started:.1f} s",
                flush=True,
            )
            monitors[(backend, size)] = QualityMonitor(ledger, lambda model, version: facts, CollectorRegistry())
            read[(backend, size)] = _count_rows_read(ledger)
    seconds: dict[tuple[str, int], list[float]] = {key: [] for key in monitors}
    joined_rows: dict[tuple[str, int], int] = {}
    try:
        for round_number in range(1, rounds + 1):
            for key, monitor in monitors.items():
                read[key][0] = 0
                started = time.perf_counter()
                found = monitor.compute_model(MODEL)
                seconds[key].append(time.perf_counter() - started)
                joined_rows[key] = read[key][0]
                window = min(monitor.window, key[1] // 4)  # a quarter of the predictions: each role's labelled
                if sorted((r.role, r.version, r.labelled_rows) for r in found) != [
                    ("canary", "2", window),
                    ("champion", "1", window),
                ]:
                    raise RuntimeError(f"compute_model on {key}: unexpected {found}")
                print(
                    f"[bench] round {round_number}/{rounds}: compute_model, {key[0]}, {key[1]:,} predictions: "
                    f"{seconds[key][-1]:.3f} s",
                    flush=True,
                )
        profiles = {
            backend: _where_time_goes(lambda m=monitors[(backend, sizes[-1])]: m.compute_model(MODEL))
            for backend in ("sqlite", "postgres")
        }
    finally:
        for monitor in monitors.values():
            monitor.ledger.close()
    return {"seconds": seconds, "profiles": profiles, "joined_rows": joined_rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--labels", type=int, default=20_000, help="labels posted per path, part size and round")
    parser.add_argument(
        "--join-sizes",
        type=lambda text: tuple(int(n) for n in text.split(",")),
        default=JOIN_SIZES,
        help="predictions in the join's ledgers, comma-separated (default: %(default)s)",
    )
    args = parser.parse_args()
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

    from monitoring.quality import DEFAULT_WINDOW
    from tests.support import postgres as postgres_server

    spec, frame = _churn()
    began = time.perf_counter()
    server = postgres_server.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            # The plane's admin token is kept here, not in the user's ~/.config/shepherd (serving/plane_auth.py).
            os.environ.setdefault("SHEPHERD_CONFIG_DIR", str(work / "config"))
            ingested, plane_ledger = ingestion(args.labels, args.rounds, server, work, spec, frame)
            join_rounds = max(args.rounds, 3)
            joins = join(args.join_sizes, join_rounds, server, work, spec, frame)
    finally:
        postgres_server.stop(server)
    took = time.perf_counter() - began
    joined, profiles, joined_rows = joins["seconds"], joins["profiles"], joins["joined_rows"]
    n = args.labels

    def rate(key: tuple[str, int]) -> float:
        return n / statistics.median(ingested[key])

    def every(key: tuple[str, int]) -> str:
        return ", ".join(f"{n / s:,.0f}" for s in ingested[key])

    described = {
        "plane": "`POST /v1/models/churn/feedback` through the plane (SQLite ledger)",
        "sqlite": "`record_feedback` directly, SQLite file",
        "postgres": "`record_feedback` directly, PostgreSQL",
        "sqlite-entity": "the same by entity key and event time, SQLite file",
        "postgres-entity": "the same by entity key and event time, PostgreSQL",
    }
    ingestion_rows = "\n".join(
        f"| {described[path]} | {part:,} | {rate((path, part)):,.0f} | "
        f"{1000 * statistics.median(ingested[(path, part)]) / (n / part):.0f} | {every((path, part))} |"
        for path in INGESTION_PATHS
        for part in PART_SIZES
    )

    def ratio(path: str, other: str, part: int) -> str:
        return f"{rate((path, part)) / rate((other, part)):.2f}x"

    def compute(key: tuple[str, int]) -> float:
        return statistics.median(joined[key])

    join_table = "\n".join(
        f"| {backend} | {size:,} | {size // 2:,} | {joined_rows[(backend, size)]:,} | {compute((backend, size)):.3f} | "
        + ", ".join(f"{s:.3f}" for s in joined[(backend, size)])
        + " |"
        for size in args.join_sizes
        for backend in ("sqlite", "postgres")
    )
    small, large = args.join_sizes[0], args.join_sizes[-1]
    scaling = ", ".join(
        f"{backend} {compute((backend, large)) / compute((backend, small)):.1f}x" for backend in ("sqlite", "postgres")
    )

    def profile_line(backend: str) -> str:
        p = profiles[backend]
        share = {k: 100 * v / p["total"] for k, v in p.items()}
        return (
            f"{backend} ({p['total']:.2f} s under the profiler): running the join and fetching its rows "
            f"{share['query']:.0f} %, building the DataFrame {share['dataframe']:.0f} %, `json.loads` of every "
            f"row's features {share['features_json']:.0f} %, `serving_versions` {share['serving_versions']:.0f} %, "
            f"the metrics over the two 1,000-row windows {share['score']:.0f} %"
        )

    wasted = {backend: profiles[backend]["dataframe"] + profiles[backend]["features_json"] for backend in profiles}
    when = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    one, five = PART_SIZES
    backends = f"{compute(('postgres', large)) / compute(('sqlite', large)):.2f}x"

    def trend(path: str) -> str:
        return f"{n / ingested[(path, one)][0]:,.0f} -> {n / ingested[(path, one)][-1]:,.0f}"

    plane_one, plane_five = ratio("plane", "sqlite", one), ratio("plane", "sqlite", five)
    pg_one, pg_five = ratio("postgres", "sqlite", one), ratio("postgres", "sqlite", five)
    entity_call = {b: f"{10_000 / rate((f'{b}-entity', one)):.1f} s" for b in ("sqlite", "postgres")}
    unused = {b: f"{100 * wasted[b] / profiles[b]['total']:.0f} %" for b in profiles}
    quality_loop = f"({plane_ledger['labels']:,} labels) took {plane_ledger['compute_seconds']:.2f} s"
    windows = 2 * min(DEFAULT_WINDOW, large // 4)  # champion's and canary's
    if joined_rows[("sqlite", large)] > windows:
        reads = (
            f"`compute_model` scores the latest {DEFAULT_WINDOW:,} labelled predictions per role, but it reads "
            f"{joined_rows[('sqlite', large)]:,} rows (every labelled prediction of the serving versions in the\n"
            "  last 7 days, features parsed from JSON) and cuts the windows from that DataFrame: its cost grows with "
            f"the labelled\n  rows, not with the window. Building that DataFrame and parsing the features "
            f"(which quality never reads) are\n  {unused['sqlite']} (SQLite) and {unused['postgres']} (PostgreSQL) "
            "of it."
        )
    else:
        reads = (
            f"`compute_model` reads only its windows ({joined_rows[('sqlite', large)]:,} rows: the database cuts the "
            "latest\n  per role), so what grows with the ledger is the database's work to find them."
        )
    first, last = n / ingested[("plane", one)][0], n / ingested[("plane", one)][-1]
    if last < 0.7 * first:
        plane_trend = (
            f"From the first\n  round to the last, parts of {one:,} through the plane went {trend('plane')} rows/s, "
            f"direct SQLite\n  {trend('sqlite')}: the loop's work grows with the ledger, the likely reason the "
            "plane's rate falls."
        )
    else:
        plane_trend = (
            f"From the first\n  round to the last, parts of {one:,} through the plane went {trend('plane')} rows/s, "
            f"direct SQLite\n  {trend('sqlite')}."
        )
    body = f"""Measured {when} on {machine()}; `make bench` (`python -m benchmarks.feedback`),
{args.rounds} interleaved rounds for ingestion and {join_rounds} for the join, medians; the whole run took
{took / 60:.1f} min.

**Ingestion.** A local plane serves churn v1 with the payload logger pointed at its own drift service (the
ledger: SQLite in the plane's feature repo). {n:,} real churn rows are predicted (batches of {PREDICT_BATCH}); once
the ledger holds them and the drift service has computed drift over them, their true labels are posted by
prediction id, one client, the parts one after another (as `shepherd feedback` sends a file). The direct paths
call `OutcomeLedger.record_feedback` in this process on as many new predictions, in the same parts. Every
round labels new predictions (a label is final), so the ledgers grow over the run: the plane's to
{plane_ledger["predictions"]:,} predictions, all labelled.

| path | labels per part | rows/s (median) | ms per part | rows/s of each round |
|---|---|---|---|---|
{ingestion_rows}

- Plane / direct SQLite: **{plane_one}** in parts of {one:,}, **{plane_five}** in parts of {five:,}. The plane adds
  the JSON body, `parse_feedback` and two HTTP hops (router -> drift service) to the same ledger work, and it
  shares the drift service's process (one GIL) with the live-quality loop, which runs every 5 s: one
  `compute_model` on the plane's ledger at the end {quality_loop}. {plane_trend}
- PostgreSQL / SQLite, direct: {pg_one} (parts of {one:,}), {pg_five} (parts of {five:,}),
  although this PostgreSQL (tests/support/postgres.py) runs with `fsync=off` and the SQLite ledger commits
  with `synchronous=FULL`. The labels' insert is an executemany that psycopg sends as one statement per row,
  and each 500-id `IN` query is parsed with 500 bound parameters.
- By entity key and event time the ledger looks the labels' predictions up with one query per 500 entities
  (their predictions up to the latest event time, newest first; by id: one `IN` query per 500 ids):
  by entity / by id, parts of {one:,}, SQLite {ratio("sqlite-entity", "sqlite", one)},
  PostgreSQL {ratio("postgres-entity", "postgres", one)}; a full 10,000-label call by entity takes
  {entity_call["sqlite"]} on SQLite, {entity_call["postgres"]} on PostgreSQL.

**Join.** `QualityMonitor.compute_model("churn")` (window 1,000) on ledgers filled directly: predictions
over the last day alternating champion v1 / canary v2, every other pair labelled; the PostgreSQL tables
analysed after filling (as autovacuum does within a minute).

| ledger | predictions | labelled | rows one compute reads | s per compute (median) | each round s |
|---|---|---|---|---|---|
{join_table}

- {small:,} -> {large:,} predictions: {scaling} slower; at {large:,} PostgreSQL / SQLite {backends}.
  {reads}
- Where the time goes at {large:,} (one cProfile run each): {profile_line("sqlite")}; {profile_line("postgres")}.
"""
    write_section(args.output, SECTION, body)
    print(f"{SECTION}\n\n{body}")


if __name__ == "__main__":
    main()
