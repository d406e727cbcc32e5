"""The servers a containerised pipeline run shares, as context managers for tests and benchmarks: an
MLflow tracking server on a database with proxied artifacts, and podman's Docker-compatible API socket
(what `DOCKER_HOST` names for KFP's DockerRunner)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from serving.local_plane import free_port

READY_SECONDS = 120


@contextlib.contextmanager
def mlflow_server(backend_store_uri: str, workdir: Path) -> Iterator[str]:
    """`mlflow server` from this venv on `backend_store_uri`, artifacts under `workdir`; yields its URL."""
    artifacts = workdir / "mlflow-artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "mlflow-server.log"
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--host=127.0.0.1", f"--port={port}", "--workers=1"]
    command += [f"--backend-store-uri={backend_store_uri}", "--serve-artifacts", f"--artifacts-destination={artifacts}"]
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + READY_SECONDS
            while True:
                if server.poll() is not None:
                    raise RuntimeError(f"mlflow server exited: {log_path.read_text()[-3000:]}")
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"mlflow server did not answer in {READY_SECONDS} s")
                time.sleep(0.5)
            yield url
        finally:
            server.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(timeout=20)


@contextlib.contextmanager
def docker_host(workdir: Path) -> Iterator[str]:
    """`podman system service` on a socket under `workdir`, named by DOCKER_HOST meanwhile (restored after)."""
    socket = workdir / "podman.sock"
    service = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{socket}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    previous = os.environ.get("DOCKER_HOST")
    try:
        deadline = time.monotonic() + 30
        while not socket.exists():
            if service.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("podman system service did not create its socket")
            time.sleep(0.2)
        os.environ["DOCKER_HOST"] = f"unix://{socket}"
        yield os.environ["DOCKER_HOST"]
    finally:
        if previous is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = previous
        service.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            service.wait(timeout=20)
