"""Benchmark: serving throughput and latency, side by side in one run, driven by wrk on loopback.

Targets, all serving the same registered churn model (or nothing, for the floor):
  shepherd          Shepherd's predictor as deployed (ONNX Runtime behind kserve.ModelServer on uvloop, no
                    per-request logs nor the middleware that times them)
  shepherd-asyncio  the same on the standard asyncio loop (--event-loop asyncio): what uvloop buys
  shepherd-verbose  the same with KServe's per-request log lines and their timing middleware (--log_each_request)
  plane             the same predictor behind the local serving plane's router, with payload logging to the
                    plane's drift service on (what `shepherd up` serves): the router's cost
  plane-unlogged    the same plane and model deployed a second time without a payload logger: the router
                    alone, without the logging and the drift service's ingestion sharing the cores
  mlserver          MLServer 1.7.1 + mlserver-sklearn serving the same scikit-learn pipeline (V2, pandas codec)
  kserve-constant   kserve.ModelServer with a model that returns a constant: KServe's own framework cost
  fastapi-floor     FastAPI under uvicorn answering a constant (the floor KServe is built on)
  asgi-floor        a bare ASGI app under uvicorn answering a constant: the transport floor
Each is measured at batch 1 and batch 32 with `wrk -t2 -c8 --latency` after a warm-up (and `shepherd` and
`plane` also at one connection, batch 1: the latency the router adds), in interleaved rounds (every target
once per round) so that a slow spell of the shared machine hits all targets alike;
the report gives each target's median round. The load generator shares the 2 cores with the server,
so ratios matter more than absolute numbers.

MLServer lives in its own venv under ~/.cache/shepherd (it pins other versions than the stack).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from benchmarks.report import write_section

REPO = Path(__file__).resolve().parent.parent
MLSERVER_VERSION = "1.7.1"
MLSERVER_VENV = Path(os.environ.get("SHEPHERD_CACHE", Path.home() / ".cache" / "shepherd")) / (
    f"bench-mlserver-{MLSERVER_VERSION}"
)
SECTION = "## Serving throughput and latency (issue B)"
SINGLE_CONNECTION = ("shepherd", "plane")
TARGETS = (
    "shepherd",
    "shepherd-asyncio",
    "shepherd-verbose",
    "plane",
    "plane-unlogged",
    "mlserver",
    "kserve-constant",
    "fastapi-floor",
    "asgi-floor",
)


def ensure_mlserver() -> Path:
    python = MLSERVER_VENV / "bin" / "python"
    if not (MLSERVER_VENV / ".complete").exists():
        print(f"[bench] installing MLServer {MLSERVER_VERSION} into {MLSERVER_VENV} (once)…", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(MLSERVER_VENV)], check=True)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "-q",
                f"mlserver=={MLSERVER_VERSION}",
                f"mlserver-sklearn=={MLSERVER_VERSION}",
                "scikit-learn==1.9.1",
                "pandas==2.3.3",
            ],
            check=True,
        )
        (MLSERVER_VENV / ".complete").touch()
    return MLSERVER_VENV / "bin" / "mlserver"


def wait_ready(url: str, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server for {url} exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} not ready after {seconds} s")


def wrk(url: str, body: str, seconds: int, workdir: Path, warm_up: bool, connections: int = 8) -> dict:
    script = workdir / "post.lua"
    script.write_text(
        f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = [==[{body}]==]\n'
    )
    if warm_up:  # JIT-free Python still warms caches, connection pools, allocator.
        subprocess.run(["wrk", "-t2", "-c8", "-d2s", "-s", str(script), url], capture_output=True, check=True)
    threads = min(2, connections)
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def latency_ms(percent: str) -> float:
        value, unit = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": latency_ms("50"),
        "p99_ms": latency_ms("99"),
        "non_2xx": int(errors.group(1)) if errors else 0,
    }


def wrk_arguments(description: str) -> argparse.Namespace:
    """The options of a wrk-driven benchmark (--output, --seconds, --rounds); exits when wrk is missing."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--seconds", type=int, default=6, help="length of one wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median round is reported")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")
    return args


def main() -> None:
    args = wrk_arguments(__doc__)

    import joblib
    import mlflow

    from benchmarks.report import machine
    from components import data
    from components.spec import load_spec
    from pipelines.direct import train_and_register
    from serving.backends import LocalBackend, start_plane, stop_plane
    from serving.inference_service import build_inference_service
    from serving.local_plane import free_port
    from serving.predictor import predictor_command
    from serving.traffic import instances

    spec = load_spec(REPO / "specs" / "churn.yaml")
    feature_rows, entity_rows = data.split_source(data.load_source(spec), spec)
    frame = entity_rows.merge(feature_rows, on=[spec.entity.key, "event_timestamp"])
    mlserver = ensure_mlserver()
    results: dict[tuple[str, int], dict] = {}
    processes: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        uri = f"sqlite:///{work / 'mlflow.db'}"
        print("[bench] training and registering churn v1…", flush=True)
        train_and_register(spec, frame, uri, work)
        rows = instances(spec, frame.head(64))

        # MLServer model directory: the same scikit-learn pipeline, saved with joblib.
        mlflow.set_tracking_uri(uri)
        model_dir = work / "mlserver" / "churn"
        model_dir.mkdir(parents=True)
        joblib.dump(mlflow.sklearn.load_model("models:/churn/1"), model_dir / "model.joblib")
        (model_dir / "model-settings.json").write_text(
            json.dumps(
                {
                    "name": "churn",
                    "implementation": "mlserver_sklearn.SKLearnModel",
                    "parameters": {"uri": "./model.joblib"},
                }
            )
        )
        ports = {name: free_port() for name in TARGETS}
        (work / "mlserver" / "settings.json").write_text(
            json.dumps(
                {
                    "http_port": ports["mlserver"],
                    "grpc_port": free_port(),
                    "metrics_port": free_port(),
                    "parallel_workers": 0,
                }
            )
        )
        logs = work / "logs"
        logs.mkdir()

        def start(name: str, command: list[str], cwd: Path = REPO) -> subprocess.Popen:
            log = open(logs / f"{name}.log", "w")  # noqa: SIM115 (closed with the process)
            process = subprocess.Popen(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
            processes.append(process)
            return process

        def predictor(name: str, *extra: str) -> list[str]:
            return predictor_command("churn", "models:/churn/1", uri, ports[name], "champion", *extra)

        uvicorn = [sys.executable, "-m", "uvicorn", "--log-level", "warning", "--no-access-log", "--port"]
        kserve_constant = [sys.executable, "-m", "benchmarks.floor_app", str(ports["kserve-constant"])]
        servers = {
            "shepherd": start("shepherd", predictor("shepherd")),
            "shepherd-asyncio": start("shepherd-asyncio", predictor("shepherd-asyncio", "--event-loop", "asyncio")),
            "shepherd-verbose": start("shepherd-verbose", predictor("shepherd-verbose", "--log_each_request")),
            "mlserver": start("mlserver", [str(mlserver), "start", "."], cwd=work / "mlserver"),
            "kserve-constant": start("kserve-constant", kserve_constant),
            "fastapi-floor": start(
                "fastapi-floor", [*uvicorn, str(ports["fastapi-floor"]), "benchmarks.floor_app:fastapi_app"]
            ),
            "asgi-floor": start("asgi-floor", [*uvicorn, str(ports["asgi-floor"]), "benchmarks.floor_app:app"]),
        }
        plane_home = work / "plane"
        try:
            print("[bench] starting the local serving plane and deploying churn v1 behind it…", flush=True)
            plane_url = start_plane(plane_home, uri, ports["plane"]).url
            LocalBackend(plane_url).apply(build_inference_service(spec, "1", payload_log_url=f"{plane_url}/drift/"))
            unlogged = build_inference_service(spec, "1")
            unlogged["metadata"]["name"] = "churn-unlogged"
            LocalBackend(plane_url).apply(unlogged)
            for name in (t for t in TARGETS if t in servers and not t.endswith("-floor")):  # V2 readiness
                wait_ready(f"http://127.0.0.1:{ports[name]}/v2/health/ready", servers[name])
            wait_ready(f"http://127.0.0.1:{ports['fastapi-floor']}/docs", servers["fastapi-floor"])
            wait_ready(f"http://127.0.0.1:{ports['asgi-floor']}/", servers["asgi-floor"])
            for batch in (1, 32):
                batch_rows = (rows * 2)[:batch]
                v1 = json.dumps({"instances": batch_rows})
                v2 = json.dumps(
                    {
                        "parameters": {"content_type": "pd"},
                        "inputs": [
                            {
                                "name": f.name,
                                "shape": [batch],
                                "datatype": "BYTES" if f.type == "category" else "FP64",
                                "data": [
                                    r[f.name] if r[f.name] is not None else (None if f.type == "category" else 0.0)
                                    for r in batch_rows
                                ],
                            }
                            for f in spec.features
                        ],
                        "outputs": [{"name": "predict_proba"}],
                    }
                )
                v1_path = "/v1/models/churn:predict"
                targets = {
                    "shepherd": (f"http://127.0.0.1:{ports['shepherd']}{v1_path}", v1),
                    "shepherd-asyncio": (f"http://127.0.0.1:{ports['shepherd-asyncio']}{v1_path}", v1),
                    "shepherd-verbose": (f"http://127.0.0.1:{ports['shepherd-verbose']}{v1_path}", v1),
                    "plane": (f"{plane_url}{v1_path}", v1),
                    "plane-unlogged": (f"{plane_url}/v1/models/churn-unlogged:predict", v1),
                    "mlserver": (f"http://127.0.0.1:{ports['mlserver']}/v2/models/churn/infer", v2),
                    "kserve-constant": (f"http://127.0.0.1:{ports['kserve-constant']}{v1_path}", v1),
                    "fastapi-floor": (f"http://127.0.0.1:{ports['fastapi-floor']}/", v1),
                    "asgi-floor": (f"http://127.0.0.1:{ports['asgi-floor']}/", v1),
                }
                for name, (url, body) in targets.items():
                    check = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=30)
                    if check.status_code != 200:
                        raise RuntimeError(f"{name} answered {check.status_code}: {check.text[:300]}")
                rounds: dict[str, list[dict]] = {name: [] for name in targets}
                for round_number in range(1, args.rounds + 1):
                    for name, (url, body) in targets.items():
                        print(f"[bench] batch {batch}, round {round_number}/{args.rounds}: {name}…", flush=True)
                        rounds[name].append(wrk(url, body, args.seconds, work, warm_up=round_number == 1))
                        print(f"[bench]   {rounds[name][-1]}", flush=True)
                for name, runs in rounds.items():
                    results[(name, batch)] = median_round(runs)
                if batch == 1:  # one client at a time: what the router adds to each request's latency
                    single = {name: targets[name] for name in SINGLE_CONNECTION}
                    one: dict[str, list[dict]] = {name: [] for name in single}
                    for round_number in range(1, args.rounds + 1):
                        for name, (url, body) in single.items():
                            print(f"[bench] 1 connection, round {round_number}/{args.rounds}: {name}…", flush=True)
                            one[name].append(wrk(url, body, args.seconds, work, warm_up=False, connections=1))
                            print(f"[bench]   {one[name][-1]}", flush=True)
                    for name, runs in one.items():
                        results[(f"{name} (1 connection)", 1)] = median_round(runs)
        finally:
            stop_plane(plane_home)
            for process in processes:
                process.terminate()
            for process in processes:
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
    write_report(args.output, results, args.seconds, args.rounds, machine())


def median_round(runs: list[dict]) -> dict:
    """The run with the median throughput (its own latencies), and the non-2xx answers of all runs."""
    middle = sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]
    return {**middle, "non_2xx": sum(r["non_2xx"] for r in runs), "all_rps": [r["rps"] for r in runs]}


def write_report(path: Path, results: dict, seconds: int, rounds: int, machine_text: str) -> None:
    lines = [
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine_text}; `make bench`.",
        f"wrk -t2 -c8 -d{seconds}s --latency on loopback, same 2 cores as the servers, {rounds} interleaved "
        "rounds, median round shown; churn model (19 features, logistic regression pipeline). Every "
        "response checked 200 before the runs.",
        "",
        "| target | batch | req/s | rows/s | p50 ms | p99 ms | non-2xx | req/s of each round |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (name, batch), r in results.items():
        each = ", ".join(f"{rps:.0f}" for rps in r["all_rps"])
        lines.append(
            f"| {name} | {batch} | {r['rps']:.0f} | {r['rps'] * batch:.0f} | {r['p50_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | {r['non_2xx']} | {each} |"
        )
    lines.append("")
    for batch in (1, 32):
        r = {name: results[(name, batch)] for name in TARGETS}
        ours = r["shepherd"]["rps"]
        lines.append(
            f"- batch {batch}: Shepherd / MLServer throughput **{ours / r['mlserver']['rps']:.1f}x**, p99 "
            f"{r['shepherd']['p99_ms']:.1f} vs {r['mlserver']['p99_ms']:.1f} ms. Shepherd / KServe with a constant "
            f"model {ours / r['kserve-constant']['rps']:.2f}; "
            f"/ FastAPI floor **{ours / r['fastapi-floor']['rps']:.2f}**;"
            f" / bare ASGI floor {ours / r['asgi-floor']['rps']:.2f}. uvloop / asyncio "
            f"{ours / r['shepherd-asyncio']['rps']:.2f}x; per-request log lines and their timing middleware cost "
            f"{1 - r['shepherd-verbose']['rps'] / ours:.0%} of the throughput. Through the plane's router (payload "
            f"logging on): **{r['plane']['rps'] / ours:.0%}** of the predictor's direct throughput at 8 connections "
            f"(target >= 60 %); without payload logging **{r['plane-unlogged']['rps'] / ours:.0%}**."
        )
    direct, routed = results[("shepherd (1 connection)", 1)], results[("plane (1 connection)", 1)]
    lines.append(
        f"- one connection, batch 1: p50 {direct['p50_ms']:.2f} ms direct, {routed['p50_ms']:.2f} ms through the "
        f"plane: the router adds **{routed['p50_ms'] - direct['p50_ms']:.2f} ms** (target <= 1 ms)."
    )
    body = "\n".join(lines)
    write_section(path, SECTION, body)
    print(f"{SECTION}\n\n{body}")


if __name__ == "__main__":
    main()
