"""A real Prometheus and a real Alertmanager for tests, as local processes on loopback ports.

The binaries are the Debian packages' (`apt-get install prometheus prometheus-alertmanager`): Prometheus
2.42 with `promtool`, Alertmanager 0.25 with `amtool`. Outside CI a missing binary skips the caller
with that hint; in CI it fails. Output goes to log files in the work directory, never to pipes (an
unread pipe fills up and blocks the server); the last lines are quoted when a server does not start.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import httpx
import yaml

from serving.local_plane import free_port
from tests.support.availability import unavailable

INSTALL_HINT = "apt-get install prometheus prometheus-alertmanager"
PROMETHEUS = "prometheus"
ALERTMANAGER = ("prometheus-alertmanager", "alertmanager")  # Debian's name, then upstream's
PROMTOOL = "promtool"
AMTOOL = "amtool"
READY_TIMEOUT_SECONDS = 60


def _unavailable(reason: str) -> NoReturn:
    unavailable(reason, f"install it with `{INSTALL_HINT}` to run this test")


def binary(*names: str) -> str:
    """The path of the first of `names` on PATH (skip or fail the test when none is installed)."""
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    _unavailable(f"`{names[0]}` is not installed")


def run_tool(tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run promtool/amtool; the caller asserts on returncode and output."""
    return subprocess.run(
        [binary(tool), *args], capture_output=True, text=True, timeout=timeout, check=False, cwd=os.getcwd()
    )


@dataclass
class Target:
    """A scrape target with the labels a PodMonitor's relabelling would give it."""

    address: str  # host:port
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class _Server:
    name: str
    workdir: Path
    process: subprocess.Popen | None = None
    url: str = ""

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def _spawn(self, command: list[str]) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def _wait_ready(self, timeout: float = READY_TIMEOUT_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.name} not ready after {timeout} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def _get(self, path: str, **params) -> dict | list:
        response = httpx.get(f"{self.url}{path}", params=params, timeout=30)
        try:
            body = response.json()
        except ValueError:
            raise RuntimeError(f"{self.name} {path}: HTTP {response.status_code}: {response.text[:500]}") from None
        if response.status_code != 200 or (isinstance(body, dict) and body.get("status") == "error"):
            error = body.get("error", body) if isinstance(body, dict) else body
            raise RuntimeError(f"{self.name} {path} {params}: HTTP {response.status_code}: {error}")
        return body


@dataclass
class Prometheus(_Server):
    """A running Prometheus. `query` raises with Prometheus' own error text when a query is refused."""

    def query(self, promql: str, at: float | None = None) -> list[dict]:
        """Instant query; the result vector (or matrix/scalar as Prometheus returns it)."""
        params = {"query": promql} if at is None else {"query": promql, "time": at}
        return self._get("/api/v1/query", **params)["data"]["result"]

    def query_range(self, promql: str, start: float, end: float, step: str) -> list[dict]:
        return self._get("/api/v1/query_range", query=promql, start=start, end=end, step=step)["data"]["result"]

    def alerts(self) -> list[dict]:
        """Pending and firing alerts as Prometheus sees them (labels, annotations, state, value)."""
        return self._get("/api/v1/alerts")["data"]["alerts"]

    def rule_groups(self) -> list[dict]:
        return self._get("/api/v1/rules")["data"]["groups"]

    def targets(self) -> list[dict]:
        return self._get("/api/v1/targets")["data"]["activeTargets"]


@dataclass
class Alertmanager(_Server):
    def alerts(self) -> list[dict]:
        """The alerts Alertmanager holds (API v2)."""
        return self._get("/api/v2/alerts")


def prometheus_config(
    targets: list[Target],
    rule_files: list[Path] = (),
    alertmanager_url: str | None = None,
    scrape_interval: str = "1s",
    evaluation_interval: str = "1s",
    job: str = "shepherd-predictor",
) -> dict:
    """prometheus.yml: one job scraping `targets` (their own `model`/`version`/`role` labels win over the
    target's, as `honor_labels` makes them on the cluster), the rule files, the Alertmanager."""
    config = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": evaluation_interval},
        "rule_files": [str(Path(p).resolve()) for p in rule_files],
        "scrape_configs": [
            {
                "job_name": job,
                "honor_labels": True,
                "scrape_timeout": scrape_interval,
                "static_configs": [{"targets": [t.address], "labels": t.labels} for t in targets],
            }
        ],
    }
    if alertmanager_url:
        host = alertmanager_url.removeprefix("http://").rstrip("/")
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [host]}]}]}
    return config


def plane_scrape_configs(plane_url: str, drift: bool = True) -> list[dict]:
    """Scrape jobs for a local serving plane: its revisions through Prometheus' HTTP service discovery
    (they come and go with their ports, as pods do), and its drift service."""
    jobs = [
        {
            "job_name": "shepherd-predictor",
            "honor_labels": True,
            "http_sd_configs": [{"url": f"{plane_url}/sd/predictors", "refresh_interval": "1s"}],
        }
    ]
    if drift:
        jobs.append(
            {
                "job_name": "shepherd-drift",
                "honor_labels": True,
                "metrics_path": "/drift/metrics",
                "static_configs": [{"targets": [plane_url.removeprefix("http://")]}],
            }
        )
    return jobs


def start_prometheus(workdir: Path, config: dict, listen_host: str = "127.0.0.1") -> Prometheus:
    """Start Prometheus with `config` (see prometheus_config) and wait until it is ready; `listen_host` 0.0.0.0
    when pods must reach it (tests/cluster)."""
    path = binary(PROMETHEUS)
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    server = Prometheus("prometheus", workdir, url=f"http://127.0.0.1:{port}")
    server._spawn(
        [
            path,
            f"--config.file={config_file}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address={listen_host}:{port}",
            "--log.level=warn",
        ]
    )
    server._wait_ready()
    return server


def start_alertmanager(workdir: Path, config_text: str) -> Alertmanager:
    """Start a single Alertmanager (clustering off) with the given alertmanager.yml text."""
    path = binary(*ALERTMANAGER)
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / "alertmanager.yml"
    config_file.write_text(config_text)
    port = free_port()
    server = Alertmanager("alertmanager", workdir, url=f"http://127.0.0.1:{port}")
    server._spawn(
        [
            path,
            f"--config.file={config_file}",
            f"--storage.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ]
    )
    server._wait_ready()
    return server


# Grafana's built-in variables, as Grafana would fill them for a 1-hour view of 5 s scrapes.
GRAFANA_INTERVALS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}


def grafana_expr(expr: str, model: str = ".*") -> str:
    """A dashboard query as Grafana sends it: template variables substituted (`$model` by a regex)."""
    for name, value in GRAFANA_INTERVALS.items():
        expr = expr.replace(name, value)
    return expr.replace("${model}", model).replace("$model", model)
