"""Benchmark: serving throughput per task, side by side in one run, driven by wrk on loopback.

One model per task, each trained from its shipped example spec and served by Shepherd's predictor as deployed
(ONNX Runtime behind kserve.ModelServer): binary (specs/churn.yaml, 19 features), multiclass (specs/hpc.yaml,
7 features, 4 classes: per-class probabilities in every answer) and regression (specs/ames.yaml, 18 features,
one value). Each is measured with V1 requests at batch 1 and batch 32 with `wrk -t2 -c8 --latency` after a
warm-up, in interleaved rounds (every target once per round) so a slow spell of the shared machine hits all
alike; the report gives each target's median round and its ratio to the binary model. The load generator shares
the 2 cores with the server, so ratios matter more than absolute numbers. Beside it, the model's own time per
batch in this process (the loaded version's scorer on the same rows, median of 200 calls) and the answers' share
of it (`components.model_output.answers` plus the V1 rendering): what the task changes is separated from what the
model (a linear model for churn, tree ensembles for the others) costs.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.report import write_section
from benchmarks.serving import median_round, wait_ready, wrk, wrk_arguments

REPO = Path(__file__).resolve().parent.parent
SECTION = "## Serving throughput per task (issue H)"
MODELS = {"binary": "churn", "multiclass": "hpc", "regression": "ames"}
BATCHES = (1, 32)


def main() -> None:
    args = wrk_arguments(__doc__)

    from benchmarks.report import machine
    from components import data
    from components.spec import load_spec
    from pipelines.direct import train_and_register
    from serving.local_plane import free_port
    from serving.predictor import predictor_command
    from serving.traffic import instances

    runs: dict[tuple[str, int], list[dict]] = {}
    formats: dict[str, str] = {}
    in_process: dict[tuple[str, int], tuple[float, float]] = {}
    processes: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        uri = f"sqlite:///{work / 'mlflow.db'}"
        bodies, urls = {}, {}
        try:
            for task, name in MODELS.items():
                spec = load_spec(REPO / "specs" / f"{name}.yaml")
                features, entities = data.split_source(data.load_source(spec), spec)
                frame = entities.merge(features, on=[spec.entity.key, "event_timestamp"])
                print(f"[bench] training and registering {name} ({task})…", flush=True)
                train_and_register(spec, frame, uri, work)
                rows = instances(spec, frame.sample(64, random_state=0))
                for batch in BATCHES:
                    bodies[(task, batch)] = json.dumps({"instances": rows[:batch]})
                    in_process[(task, batch)] = _time_in_process(uri, name, spec, rows[:batch])
                port = free_port()
                log = (work / f"{name}.log").open("w")
                command = predictor_command(name, f"models:/{name}/1", uri, port, "champion")
                processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO))
                wait_ready(f"http://127.0.0.1:{port}/v2/models/{name}/ready", processes[-1])
                urls[task] = f"http://127.0.0.1:{port}/v1/models/{name}:predict"
                formats[task] = _platform(port, name)
            for round_number in range(1, args.rounds + 1):
                for task in MODELS:
                    for batch in BATCHES:
                        print(f"[bench] round {round_number}: {task} batch {batch}", flush=True)
                        result = wrk(urls[task], bodies[(task, batch)], args.seconds, work, round_number == 1)
                        runs.setdefault((task, batch), []).append(result)
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(timeout=30)
    results = {key: median_round(value) for key, value in runs.items()}
    write_report(args.output, results, formats, in_process, args.seconds, args.rounds, machine())


def _time_in_process(uri: str, name: str, spec, rows: list[dict]) -> tuple[float, float]:
    """(ms the loaded version's scorer takes for `rows`, ms turning its output into V1 answers): medians."""
    import statistics
    import time

    from components.model_output import answers
    from serving.payload import PayloadParser
    from serving.predictor import answer_renderers, load_version

    loaded = load_version(uri, f"models:/{name}/1")
    columns = PayloadParser(spec).from_v1({"instances": rows})
    render_v1, _ = answer_renderers(spec)
    ids = [str(i) for i in range(len(rows))]
    scored, rendered = [], []
    for _ in range(200):
        started = time.perf_counter()
        output = loaded.score(columns)
        middle = time.perf_counter()
        json.dumps(render_v1(answers(spec, output), ids))
        scored.append(middle - started)
        rendered.append(time.perf_counter() - middle)
    return 1000 * statistics.median(scored), 1000 * statistics.median(rendered)


def _platform(port: int, name: str) -> str:
    import httpx

    return httpx.get(f"http://127.0.0.1:{port}/v2/models/{name}", timeout=10).json()["platform"]


def write_report(
    path: Path, results: dict, formats: dict, in_process: dict, seconds: int, rounds: int, machine_text: str
) -> None:
    lines = [
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine_text}; `make bench` (`benchmarks/tasks.py`).",
        f"wrk -t2 -c8 -d{seconds}s --latency on loopback, V1 requests, {rounds} interleaved rounds (median round), "
        "the same 2 cores as the server. Each model is its example spec's first version, served as deployed.",
        "",
        "| task (example, served as) | batch | requests/s | rows/s | p50 ms | p99 ms | vs binary | non-2xx "
        "| model ms (in process) | answers ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for task, name in MODELS.items():
        for batch in BATCHES:
            r, base = results[(task, batch)], results[("binary", batch)]
            lines.append(
                f"| {task} ({name}, {formats[task]}) | {batch} | {r['rps']:,.0f} | {r['rps'] * batch:,.0f} | "
                f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['rps'] / base['rps']:.2f}x | {r['non_2xx']} | "
                f"{in_process[(task, batch)][0]:.3f} | {in_process[(task, batch)][1]:.3f} |"
            )
    lines += [
        "",
        "All rounds (requests/s): "
        + "; ".join(
            f"{task} b{batch} " + "/".join(f"{v:,.0f}" for v in results[(task, batch)]["all_rps"])
            for task in MODELS
            for batch in BATCHES
        )
        + ".",
    ]
    write_section(path, SECTION, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
