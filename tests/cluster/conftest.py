"""A real kube-apiserver with KServe's CRDs for the cluster tests (started once per session)."""

from __future__ import annotations

import os
import shutil
import uuid

import pytest

from tests.support.control_plane import ControlPlane, build_binaries
from tests.support.crds import KSERVE_MODULE, KSERVE_VERSION, module_dir, prometheus_operator_crds


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
