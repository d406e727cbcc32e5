"""Benchmark: the same DAG with each step in the Shepherd image (`--runner docker`, KFP's DockerRunner via
podman) vs as subprocesses of this venv, on the same shared stores, side by side in one session.

Both runners use an MLflow server on PostgreSQL and Feast in PostgreSQL (a fresh database pair per
run), so the only difference is where the steps run. Cold = the whole DAG for a new model; warm = the
same inputs again (extract only). Needs the image (`make image`), podman and PostgreSQL
(`make e2e-tools`). Results go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.report import machine, write_section

REPO = Path(__file__).resolve().parent.parent
SECTION = "## The DAG in containers vs subprocesses (issue F1)"


def _timed_runs(runner: str, postgres, spec, work: Path) -> tuple[float, float]:
    from pipelines.local import run_local
    from pipelines.settings import Settings
    from tests.support import stores

    tag = uuid.uuid4().hex[:8]
    backend = postgres.create_database(f"mlflow_{tag}").replace("postgresql+psycopg://", "postgresql://")
    with stores.mlflow_server(backend, work / f"mlflow-{tag}") as tracking_uri:
        settings = Settings.from_env(
            home=work / f"home-{tag}", tracking_uri=tracking_uri, feature_repo=postgres.create_database(f"feast_{tag}")
        )
        times = []
        for _ in ("cold", "warm"):
            started = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                run_local(spec, settings, runner=runner)
            times.append(time.perf_counter() - started)
    return times[0], times[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; medians are reported")
    args = parser.parse_args()

    from components.spec import load_spec
    from tests.support import postgres as postgres_server
    from tests.support import stores
    from tests.support.containers import _build

    image = _build()
    if image.startswith("error: "):
        raise SystemExit(f"the image is needed: {image[7:]}")
    spec = load_spec(REPO / "specs" / "churn.yaml")
    results: dict[str, list[tuple[float, float]]] = {"subprocess": [], "docker": []}
    server = postgres_server.start()
    try:
        with tempfile.TemporaryDirectory() as tmp, stores.docker_host(Path(tmp)):
            for round_number in range(1, args.rounds + 1):
                for runner in results:
                    print(f"[bench] round {round_number}/{args.rounds}: {runner} runner, cold then warm…", flush=True)
                    results[runner].append(_timed_runs(runner, server, spec, Path(tmp)))
                    print(f"[bench]   {results[runner][-1][0]:.1f} s, {results[runner][-1][1]:.1f} s", flush=True)
    finally:
        postgres_server.stop(server)

    def median(runner: str, index: int) -> float:
        return statistics.median(run[index] for run in results[runner])

    def every(runner: str, index: int) -> str:
        return ", ".join(f"{run[index]:.1f}" for run in results[runner])

    def ratio(index: int) -> float:
        return median("docker", index) / median("subprocess", index)

    def row(runner: str) -> str:
        cells = [runner, f"{median(runner, 0):.1f}", f"{median(runner, 1):.1f}", every(runner, 0), every(runner, 1)]
        return "| " + " | ".join(cells) + " |"

    when = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    body = f"""Measured {when} on {machine()}; `make bench`, {args.rounds} interleaved rounds, median.
Both runners on the same kind of stores: an MLflow server on PostgreSQL (artifacts proxied) and Feast
in PostgreSQL, fresh databases per run. Image {image}.

| runner | cold s (whole DAG) | warm s (unchanged inputs) | cold runs s | warm runs s |
|---|---|---|---|---|
{row("subprocess")}
{row("docker")}

Containers / subprocesses: cold **{ratio(0):.2f}x**, warm **{ratio(1):.2f}x**.
A container step pays podman's start and KFP's image lookup on top of the same Python imports a
subprocess step pays; the imports dominate.
"""
    write_section(args.output, SECTION, body)
    print(f"{SECTION}\n\n{body}")


if __name__ == "__main__":
    main()
