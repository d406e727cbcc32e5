"""The cluster tests' fixtures: a bare kube-apiserver with KServe's CRDs (tests write controllers' status
themselves), and a real node (tests.support.node) with an MLflow server its pods reach, both once per session."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid

import httpx
import pytest

from tests.support.containers import shepherd_image
from tests.support.control_plane import ControlPlane, build_binaries
from tests.support.crds import KSERVE_MODULE, KSERVE_VERSION, module_dir, prometheus_operator_crds
from tests.support.node import POD_GATEWAY, Node, missing_prerequisites, node_ip


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory):
    if shutil.which("go") is None:
        message = "the cluster tests build etcd and kube-apiserver with Go (https://go.dev/dl)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    plane = ControlPlane(tmp_path_factory.mktemp("control-plane"), build_binaries())
    plane.start()
    try:
        crds = module_dir(KSERVE_MODULE, KSERVE_VERSION) / "config" / "crd" / "full"
        plane.install_crd(crds / "serving.kserve.io_inferenceservices.yaml")
        # The Helm chart's monitoring objects (ServiceMonitor, PodMonitor, PrometheusRule, AlertmanagerConfig).
        for crd in prometheus_operator_crds(tmp_path_factory.mktemp("crds")):
            plane.install_crd(crd)
        plane.install_crd(crds / "serving.kserve.io_servingruntimes.yaml")
        plane.install_crd(crds / "clusterstoragecontainer" / "serving.kserve.io_clusterstoragecontainers.yaml")
        yield plane
    finally:
        plane.stop()


@pytest.fixture
def namespace(control_plane):
    """A fresh namespace per test. (Not deleted: without the namespace controller a deleted
    namespace stays Terminating; the whole control plane goes away with the session.)"""
    from kubernetes import client

    core = client.CoreV1Api(control_plane.api_client())
    name = f"t-{uuid.uuid4().hex[:10]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    return name


@pytest.fixture(scope="session")
def node(tmp_path_factory):
    """A real node on its own control plane (not `control_plane`: real controllers would fight the status other
    tests write), with the Shepherd image in containerd; yields (node, the image's name for pods)."""
    if reason := missing_prerequisites():
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI runs every test)")
        pytest.skip(reason)
    image = shepherd_image()
    workdir = tmp_path_factory.mktemp("real-node")
    plane = ControlPlane(workdir / "control-plane", build_binaries(), advertise=node_ip()).start()  # pods call it
    started = time.monotonic()
    node = Node(workdir / "node", plane, build_binaries())
    try:
        node.start()
        ready_seconds = time.monotonic() - started
        loaded = time.monotonic()
        local = node.load_image(image)
        print(f"\nnode Ready in {ready_seconds:.1f} s; image in containerd in {time.monotonic() - loaded:.1f} s")
        yield node, local
    finally:
        node.stop()
        plane.stop()


@pytest.fixture(scope="session")
def model_server(tmp_path_factory, churn_spec, churn_frame):
    """An MLflow server pods reach through the bridge (on all addresses: the bridge appears with the first
    pod), holding churn v1 @champion with its artifacts served over HTTP; yields (URL here, URL for pods)."""
    from pipelines.direct import train_and_register
    from serving.local_plane import free_port

    work = tmp_path_factory.mktemp("node-mlflow")
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--host=0.0.0.0", f"--port={port}", "--workers=1"]
    command += [f"--backend-store-uri=sqlite:///{work / 'mlflow.db'}", f"--artifacts-destination={work / 'art'}"]
    log = open(work / "mlflow.log", "w")  # noqa: SIM115 (owned by the child)
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        local = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{local}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, (work / "mlflow.log").read_text()[-2000:]
            time.sleep(0.5)
        assert train_and_register(churn_spec, churn_frame, local, work).alias == "champion"
        yield local, f"http://{POD_GATEWAY}:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)
