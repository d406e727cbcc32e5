"""A real `serving.predictor` process on a free loopback port, for tests that talk to it over HTTP."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from serving.local_plane import free_port
from serving.predictor import predictor_command
from tests.conftest import REPO

READY_TIMEOUT_SECONDS = 60


@dataclass
class RunningPredictor:
    process: subprocess.Popen
    base_url: str
    log_path: Path

    def rss_kib(self) -> int:
        """The process's resident set size (VmRSS), in KiB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError(f"no VmRSS for pid {self.process.pid}")


@contextlib.contextmanager
def running_predictor(
    tracking_uri: str,
    model_uri: str,
    log_dir: Path,
    env: dict[str, str] | None = None,
    name: str = "churn",
    extra: tuple[str, ...] = (),
) -> Iterator[RunningPredictor]:
    """Start the predictor serving `model_uri` as `name` (`extra`: more of its arguments), wait until it is ready,
    stop it afterwards."""
    port = free_port()
    log_path = log_dir / f"predictor-{port}.log"
    # A file, not a pipe: an unread pipe fills up with logs and blocks the server.
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            predictor_command(name, model_uri, tracking_uri, port, "champion", *extra),
            cwd=REPO,
            env={**os.environ, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            base_url = f"http://127.0.0.1:{port}"
            _wait_ready(process, base_url, log_path)
            yield RunningPredictor(process, base_url, log_path)
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


def _wait_ready(process: subprocess.Popen, base_url: str, log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"predictor exited: {log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"{base_url}/v2/health/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"predictor not ready in {READY_TIMEOUT_SECONDS} s: {log_path.read_text()[-3000:]}")


def sample(metrics_text: str, series: str) -> float:
    """The value of one series (`name{labels}`, labels in Prometheus' sorted order) in a /metrics page; 0 if absent."""
    for line in metrics_text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
