"""Time to roll back a canary that fails every request, and the share of requests that failed meanwhile;
the latency clients see while a healthy canary is promoted; the drift service's ingestion rate and its
overhead over calling Evidently directly.

Paths, side by side in one run, on the local plane with real traffic (one client, batch 1):
- loop: the rollout loop scraping the revisions (the embedded default) with a 5 s analysis interval
  and failure limit 1;
- loop with the drift service dead: the same, with the plane's drift service SIGKILLed whenever it is
  there (the drift gates are inconclusive; the error-rate gate must still act);
- alert: Prometheus (5 s scrape, the rules' 5 s canary group) -> Alertmanager (group_wait 2 s) -> the
  webhook (the cluster path; the loop is running but its failure limit is out of reach).
Anchor: Flagger's default analysis, 60 s interval x 5 failed checks = 5 min of a failing canary.
Then a healthy canary stepped 10 -> 50 -> 100 % and promoted: p50/p99 of the client's requests during
the rollout vs the same client with the champion alone, at rest (target: p99 within 2x).

    python -m benchmarks.rollback --output docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import yaml

from benchmarks.report import machine, write_section
from serving.inference_service_view import serving_container

REPO = Path(__file__).resolve().parent.parent
TOKEN = "bench-token"
FIRST_STEPS = (10, 1)  # the canary's first traffic step: the failed share is about step x time


def _spec(base, first_step: int = 10, **deployment):
    from components.spec import parse_spec

    data = yaml.safe_load(base.to_yaml())
    steps = [first_step, 50, 100]
    data["deployment"].update(canary_steps=steps, interval_seconds=5, min_requests=20, **deployment)
    return parse_spec(yaml.safe_dump(data))


class Stoppable:
    def __init__(self, process: subprocess.Popen):
        self.process = process

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=15)


class Traffic(threading.Thread):
    def __init__(self, url: str, model: str, rows: list[dict]):
        super().__init__(daemon=True)
        self.url, self.model, self.rows = url, model, rows
        self.answers: list[tuple[float, int, str, float]] = []  # (time, status, role, seconds)
        self.halt = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            i = 0
            while not self.halt.is_set():
                started = time.perf_counter()
                response = client.post(
                    f"/v1/models/{self.model}:predict", json={"instances": [self.rows[i % len(self.rows)]]}
                )
                took = time.perf_counter() - started
                role = response.headers.get("x-shepherd-role", "")
                self.answers.append((time.time(), response.status_code, role, took))
                i += 1


def _measure_rollback(backend, spec, version: str, traffic: Traffic, timeout: float = 180) -> dict:
    from serving.inference_service import build_inference_service
    from serving.predictor import ENV_FAULT_ERROR_RATE
    from serving.rollout.loop import canary_percent

    first_step = spec.deployment.canary_steps[0]
    obj = build_inference_service(spec, version, champion_version="1", canary_percent=first_step)
    container = serving_container(obj["spec"]["canary"][0]["predictor"])
    container["env"] = [*(container.get("env") or []), {"name": ENV_FAULT_ERROR_RATE, "value": "1.0"}]
    deployed = time.time()
    backend.apply(obj)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if canary_percent(backend.get("models", spec.name)) == 0:
            break
        time.sleep(0.2)
    else:
        raise RuntimeError("the failing canary was not rolled back in time")
    rolled_back = time.time()
    window = [a for a in traffic.answers if deployed <= a[0] <= rolled_back]
    failures = [a for a in window if a[1] == 500]
    first_failure = min(a[0] for a in failures)
    return {
        "seconds": rolled_back - first_failure,
        "failed_share": len(failures) / len(window),
        "requests": len(window),
        "failed": len(failures),
    }


class DriftKiller(threading.Thread):
    """SIGKILLs the plane's drift service whenever it is there (the plane restarts it each time)."""

    def __init__(self, plane_pid: int):
        super().__init__(daemon=True)
        self.plane_pid = plane_pid
        self.halt = threading.Event()
        self.kills = 0

    def run(self) -> None:
        import signal

        from tests.support.plane_processes import drift_services

        while not self.halt.is_set():
            for pid in drift_services(self.plane_pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                    self.kills += 1
                except OSError:
                    continue
            self.halt.wait(0.1)


def _percentiles(seconds: list[float]) -> dict:
    ordered = sorted(seconds)
    return {
        "requests": len(ordered),
        "p50_ms": 1000 * ordered[len(ordered) // 2],
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "max_ms": 1000 * ordered[-1],
    }


def _measure_promotion(backend, base, version: str, traffic: Traffic, rest_seconds: float = 20) -> dict:
    """The client's latency with the champion alone (at rest), then while `version` is rolled out
    and promoted (the revisions started, re-split and replaced under the same traffic)."""
    from serving.inference_service import build_inference_service
    from serving.rollout.loop import canary_percent

    rest_from = time.time()
    time.sleep(rest_seconds)
    rest_until = time.time()
    spec = _spec(base, gates={"error_rate": {"max": 0.01}})
    started = time.time()
    backend.apply(build_inference_service(spec, version, champion_version="1", canary_percent=10))
    deadline = time.monotonic() + 300
    while canary_percent(backend.get("models", spec.name)) is not None:
        if time.monotonic() > deadline:
            raise RuntimeError("the healthy canary was not promoted in time")
        time.sleep(0.2)
    promoted = time.time()
    time.sleep(2)  # the old champion's stop is part of the promotion too
    ended = time.time()

    def latencies(since: float, until: float) -> list[float]:
        return [a[3] for a in traffic.answers if since <= a[0] <= until and a[1] == 200]

    return {
        "rest": _percentiles(latencies(rest_from, rest_until)),
        "promotion": _percentiles(latencies(started, ended)),
        "promotion_seconds": promoted - started,
        "failed": sum(1 for a in traffic.answers if started <= a[0] <= ended and a[1] != 200),
    }


def run_bench(repeats: int) -> tuple[dict, dict]:
    from components.spec import load_spec
    from monitoring import alertmanager, rules
    from monitoring.webhook import webhook_command
    from pipelines.direct import train_and_register
    from serving.backends import LocalBackend, start_plane, stop_plane
    from serving.inference_service import build_inference_service
    from serving.local_plane import free_port
    from serving.rollout import controller
    from serving.traffic import instances
    from tests.conftest import CHURN_SPEC
    from tests.support.prometheus import plane_scrape_configs, start_alertmanager, start_prometheus

    base = load_spec(CHURN_SPEC)
    from components import data

    features, entities = data.split_source(data.load_source(base), base)
    frame = entities.merge(features, on=[base.entity.key, "event_timestamp"])
    results: dict[tuple[str, int], list[dict]] = {(p, s): [] for p in ("loop", "alert") for s in FIRST_STEPS}
    results[("loop-drift-dead", FIRST_STEPS[0])] = []
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        uri = f"sqlite:///{home / 'mlflow.db'}"
        train_and_register(_spec(base), frame, uri, home, "v1")
        canary_versions = [
            train_and_register(_spec(base).model_copy(), frame, uri, home, f"c{i}").version for i in range(2)
        ]
        plane = start_plane(home, uri, free_port())
        backend = LocalBackend(plane.url)
        backend.apply(build_inference_service(_spec(base), "1"))
        traffic = Traffic(plane.url, base.name, instances(base, frame.head(500)))
        traffic.start()

        def start_alert_path():
            token = home / "token"
            token.write_text(TOKEN)
            hook_port = free_port()
            hook = subprocess.Popen(
                webhook_command(hook_port, token, uri, plane.url, home),
                cwd=REPO,
                stdout=open(home / "webhook.log", "w"),  # noqa: SIM115
                stderr=subprocess.STDOUT,
            )
            am = start_alertmanager(
                home / "am", alertmanager.render(alertmanager.config(f"http://127.0.0.1:{hook_port}/alerts", token))
            )
            rule_file = home / "rules.yaml"
            rule_file.write_text(rules.render(rules.rule_groups({base.name: _spec(base).deployment})))
            prometheus = start_prometheus(
                home / "prom",
                {
                    "global": {
                        "scrape_interval": rules.SCRAPE_INTERVAL,
                        "evaluation_interval": rules.CANARY_EVALUATION_INTERVAL,
                    },
                    "rule_files": [str(rule_file)],
                    "alerting": {
                        "alertmanagers": [{"static_configs": [{"targets": [am.url.removeprefix("http://")]}]}]
                    },
                    "scrape_configs": plane_scrape_configs(plane.url, drift=False),
                },
            )
            return [prometheus, am, Stoppable(hook)]

        stop = threading.Event()
        loop = threading.Thread(
            target=controller.run, args=(backend, uri, "models", 1.0, None, None, stop), daemon=True
        )
        loop.start()
        servers = []
        try:
            time.sleep(5)  # the champion's baseline traffic
            killer = DriftKiller(plane.pid)
            killer.start()
            spec = _spec(base, FIRST_STEPS[0], failure_limit=1)
            for i in range(repeats):
                result = _measure_rollback(backend, spec, canary_versions[i % len(canary_versions)], traffic)
                result["drift_kills"] = killer.kills
                print(f"loop, drift dead {FIRST_STEPS[0]} %: {json.dumps(result)}", flush=True)
                results[("loop-drift-dead", FIRST_STEPS[0])].append(result)
                backend.apply(build_inference_service(_spec(base), "1"))
                time.sleep(2)
            killer.halt.set()
            killer.join()
            # The loop alone first (no Prometheus yet, so no alert can act), then the alert path.
            for path, failure_limit in (("loop", 1), ("alert", 1000)):  # 1000: only the alert may act
                if path == "alert":
                    servers = start_alert_path()
                    time.sleep(10)  # a few scrapes of the champion
                for first_step in FIRST_STEPS:
                    spec = _spec(base, first_step, failure_limit=failure_limit)
                    for i in range(repeats):
                        version = canary_versions[i % len(canary_versions)]
                        result = _measure_rollback(backend, spec, version, traffic)
                        print(f"{path} {first_step} %: {json.dumps(result)}", flush=True)
                        results[(path, first_step)].append(result)
                        backend.apply(build_inference_service(_spec(base), "1"))  # the champion alone again
                        time.sleep(35 if path == "alert" else 2)  # let the 30 s alert window forget it
            promotion = _measure_promotion(backend, base, canary_versions[0], traffic)
            print(f"promotion: {json.dumps(promotion)}", flush=True)
        finally:
            stop.set()
            traffic.halt.set()
            for server in servers:
                server.stop()
            stop_plane(home)
    return results, promotion


def drift_ingestion(events: int = 2000) -> dict:
    """Events/s into a running drift service, and compute() vs Evidently called directly."""
    from prometheus_client import CollectorRegistry

    from components.spec import load_spec
    from monitoring.drift import REQUEST_EVENT, RESPONSE_EVENT, DriftService, Features, psi_report, psi_scores
    from serving.traffic import instances
    from tests.conftest import CHURN_SPEC

    base = load_spec(CHURN_SPEC)
    from components import data

    features_frame, _ = data.split_source(data.load_source(base), base)
    rows = instances(base, features_frame.head(1000))

    class References:  # the training sample, without a registry round trip (measured separately below)
        def __init__(self):
            import pandas as pd

            self.frame = pd.DataFrame(rows)
            self.features = Features(
                [f.name for f in base.features if f.type != "category"],
                [f.name for f in base.features if f.type == "category"],
            )

        def get(self, model, version):
            return self.features, self.frame

    service = DriftService(References(), CollectorRegistry(), window_rows=500, min_rows=200)
    from fastapi.testclient import TestClient

    from monitoring.drift import create_app

    headers = {"ce-inferenceservicename": base.name, "ce-modelid": "1", "ce-endpoint": "default"}
    with TestClient(create_app(service, compute_interval=3600)) as client:
        started = time.perf_counter()
        for i in range(events // 2):
            event_id = str(uuid.uuid4())
            body = {"instances": [rows[i % len(rows)]]}
            client.post("/", json=body, headers={**headers, "ce-type": REQUEST_EVENT, "ce-id": event_id})
            client.post(
                "/",
                json={"predictions": [{"probability": 0.3}]},
                headers={**headers, "ce-type": RESPONSE_EVENT, "ce-id": event_id},
            )
        ingest_seconds = time.perf_counter() - started
    window = service.windows[(base.name, "champion")].frame()
    reference = service.references.frame
    features = service.references.features
    direct, report, via_service = [], [], []
    for _ in range(5):  # interleaved: the three see the same machine
        t = time.perf_counter()
        psi_scores(window, reference, features)
        direct.append(time.perf_counter() - t)
        t = time.perf_counter()
        psi_report(window, reference, features)
        report.append(time.perf_counter() - t)
        t = time.perf_counter()
        service.compute(force=True)
        via_service.append(time.perf_counter() - t)
    return {
        "events_per_second": events / ingest_seconds,
        "direct_ms": statistics.median(direct) * 1000,
        "report_ms": statistics.median(report) * 1000,
        "service_ms": statistics.median(via_service) * 1000,
    }


def render(results: dict, drift: dict, promotion: dict) -> str:
    from monitoring import rules

    scrape, group = rules.SCRAPE_INTERVAL, rules.CANARY_EVALUATION_INTERVAL
    labels = {
        "loop": "rollout loop, scraping each revision (5 s analysis interval, failure limit 1)",
        "alert": f"Prometheus ({scrape} scrape, {group} rule group) -> Alertmanager (group_wait 2 s) -> webhook",
        "loop-drift-dead": "rollout loop as above, the drift service SIGKILLed whenever the plane restarts it",
    }
    lines = [
        f"Machine: {machine()}. Date: {time.strftime('%Y-%m-%d')}. One client sending batch-1 requests through "
        "the local plane; the canary fails every request (`SHEPHERD_FAULT_ERROR_RATE=1.0`). Failed share: "
        "failed / all requests from the canary's deployment to 0 %.",
        "",
        "| path | first step | time to 0 % (from the first failing response) | failed share of all requests |",
        "|---|---|---|---|",
    ]
    for (path, first_step), runs in results.items():
        seconds = ", ".join(f"{r['seconds']:.1f} s" for r in runs)
        shares = ", ".join(f"{100 * r['failed_share']:.2f} % ({r['failed']}/{r['requests']})" for r in runs)
        lines.append(f"| {labels[path]} | {first_step} % | {seconds} | {shares} |")
    median = {key: statistics.median(r["seconds"] for r in runs) for key, runs in results.items()}
    lines += [
        "| Flagger default analysis (anchor, not run here) | - | 300 s (60 s interval x 5 failed checks) | - |",
        "",
        "Median time to 0 %: "
        + "; ".join(f"{p} at {s} %: {m:.1f} s ({300 / m:.0f}x faster than the anchor)" for (p, s), m in median.items())
        + ". Target: under 15 s and under 1 % failed. The failed share is about the first step times the "
        "share of the rollout spent failing, so it is the first step (not the speed) that decides whether it "
        "stays under 1 %.",
        "",
        f"Drift service: {drift['events_per_second']:,.0f} CloudEvents/s ingested over HTTP (one client, request + "
        f"response events, in-process ASGI transport); a drift computation over a 500-row window against a "
        f"1,000-row reference takes {drift['service_ms']:.0f} ms through the service vs {drift['direct_ms']:.0f} ms "
        f"calling Evidently's column drift directly ({drift['service_ms'] / drift['direct_ms']:.2f}x; "
        "the service also sets the gauges); Evidently's full DataDriftPreset report over the same frames (what "
        f"the service computed before 2026-12-03, now only for the HTML report) takes {drift['report_ms']:.0f} ms "
        f"({drift['report_ms'] / drift['service_ms']:.1f}x the service's computation).",
        "",
        "Latency during a promotion (same client; a healthy canary stepped 10 -> 50 -> 100 % at 5 s intervals "
        f"and promoted in {promotion['promotion_seconds']:.0f} s, its revision replaced by one labelled champion):",
        "",
        "| window | requests | p50 | p99 | max |",
        "|---|---|---|---|---|",
        *(
            f"| {label} | {w['requests']} | {w['p50_ms']:.1f} ms | {w['p99_ms']:.1f} ms | {w['max_ms']:.0f} ms |"
            for label, w in (
                ("champion alone, at rest", promotion["rest"]),
                ("during the rollout", promotion["promotion"]),
            )
        ),
        "",
        f"p99 during the promotion / at rest: {promotion['promotion']['p99_ms'] / promotion['rest']['p99_ms']:.2f}x "
        f"(target: within 2x); requests not answered 200 during it: {promotion['failed']}.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    drift = drift_ingestion()
    print(f"drift: {json.dumps(drift)}", flush=True)
    results, promotion = run_bench(args.repeats)
    text = render(results, drift, promotion)
    write_section(args.output, "## Time to rollback and drift ingestion (issue C)", text)
    print(text)


if __name__ == "__main__":
    main()
