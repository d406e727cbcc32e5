"""Benchmark: cold vs warm `shepherd run` on the bundled churn spec, side by side in one session.

Cold: a fresh SHEPHERD_HOME (empty registry and feature repo) runs the whole DAG. Warm: the same
home again with unchanged data, spec and code, so only extract runs and nothing is trained. Each
is timed end to end as a user sees it (a `shepherd run` subprocess). Results go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.report import machine, write_section

REPO = Path(__file__).resolve().parent.parent
SECTION = "## `shepherd run`: cold vs warm (issue A)"


def _shepherd_run(home: Path) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "run", "--home", str(home)],
        cwd=REPO,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--repeat", type=int, default=2, help="cold and warm runs each")
    args = parser.parse_args()

    cold, warm = [], []
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            home = Path(tmp)
            print(f"[bench] round {i + 1}/{args.repeat}: cold run…", flush=True)
            cold.append(_shepherd_run(home))
            print(f"[bench]   cold {cold[-1]:.1f} s; warm run…", flush=True)
            warm.append(_shepherd_run(home))
            print(f"[bench]   warm {warm[-1]:.1f} s", flush=True)
    cold_s, warm_s = statistics.median(cold), statistics.median(warm)
    when = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    body = f"""Measured {when} on {machine()}; `make bench`, {args.repeat} rounds, median.
Cold = fresh registry and feature repo, whole DAG (extract, validate, materialize, train, evaluate,
register, deploy render). Warm = the same inputs again: extract finds the fingerprint, nothing trains.

| run | median s | all runs s |
|---|---|---|
| cold (whole DAG) | {cold_s:.1f} | {", ".join(f"{t:.1f}" for t in cold)} |
| warm (unchanged inputs) | {warm_s:.1f} | {", ".join(f"{t:.1f}" for t in warm)} |

Warm / cold = **{warm_s / cold_s:.2f}** (the warm run is {cold_s / warm_s:.1f}x faster).
Where the cold time goes: each step is a subprocess that imports its stack again (MLflow, Feast,
Great Expectations, scikit-learn: 3-5 s per step); the model fit itself takes about 0.1 s.
"""
    write_section(args.output, SECTION, body)
    print(f"{SECTION}\n\n{body}")


if __name__ == "__main__":
    main()
