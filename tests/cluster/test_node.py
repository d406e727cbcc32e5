"""A real Kubernetes node on this machine (tests.support.node): a kubelet on containerd and runc with a CNI
bridge, the real controllers, scheduler and kube-proxy. The Shepherd image's predictor runs as a Deployment's pod
with the chart's hardening (uid 10001, read-only root, no capabilities), loads its model from an MLflow server
over HTTP, passes its readiness probe, and answers through its Service's ClusterIP what the registered pipeline
answers in this process; a killed pod is replaced by the ReplicaSet and answers again.

Its own control plane (not the session's): the other cluster tests write controllers' status themselves, which
real controllers would fight."""

from __future__ import annotations

import os
import time

import httpx
import mlflow
import numpy as np
import pytest

from components.model_output import predict
from serving.traffic import instances
from tests.support.containers import shepherd_image
from tests.support.control_plane import ControlPlane, build_binaries
from tests.support.node import NODE_NAME, POD_GATEWAY, Node, missing_prerequisites

READY_SECONDS = 240


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    if reason := missing_prerequisites():
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI runs every test)")
        pytest.skip(reason)
    image = shepherd_image()
    workdir = tmp_path_factory.mktemp("real-node")
    plane = ControlPlane(workdir / "control-plane", build_binaries()).start()
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


@pytest.fixture(scope="module")
def model_server(tmp_path_factory, churn_spec, churn_frame):
    """An MLflow server pods reach through the bridge (on all addresses: the bridge appears with the first
    pod), holding churn v1 @champion with its artifacts served over HTTP."""
    import subprocess
    import sys

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


def _apps(node):
    from kubernetes import client

    api = node.plane.api_client()
    return client.CoreV1Api(api), client.AppsV1Api(api)


def test_the_node_is_a_real_kubelet_on_containerd(node):
    core, _ = _apps(node[0])
    info = core.read_node(NODE_NAME).status.node_info
    assert info.kubelet_version == "v1.34.4"
    assert info.container_runtime_version.startswith("containerd://1.6")


def _deployment(image: str, tracking_uri: str) -> dict:
    hardened = {
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "churn-predictor"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "churn-predictor"}},
            "template": {
                "metadata": {"labels": {"app": "churn-predictor"}},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 10001},
                    "containers": [
                        {
                            "name": "kserve-container",
                            "image": image,
                            "imagePullPolicy": "Never",
                            "command": ["python", "-m", "serving.predictor"],
                            "args": [
                                "--model_name=churn",
                                "--model_uri=models:/churn@champion",
                                f"--tracking_uri={tracking_uri}",
                                "--http_port=8080",
                            ],
                            "ports": [{"containerPort": 8080}],
                            "readinessProbe": {
                                "httpGet": {"path": "/v2/models/churn/ready", "port": 8080},
                                "periodSeconds": 2,
                            },
                            "securityContext": hardened,
                            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                        }
                    ],
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }


def _wait_available(apps, name: str, namespace: str, seconds: float = READY_SECONDS) -> float:
    started, deadline = time.monotonic(), time.monotonic() + seconds
    while time.monotonic() < deadline:
        status = apps.read_namespaced_deployment_status(name, namespace).status
        if (status.available_replicas or 0) >= 1 and (status.unavailable_replicas or 0) == 0:
            return time.monotonic() - started
        time.sleep(1)
    raise AssertionError(f"{name} not available after {seconds:.0f} s: {status}")


def test_the_shepherd_predictor_runs_as_a_pod_and_answers_through_its_service(
    node, model_server, churn_spec, churn_frame
):
    from kubernetes import client

    the_node, image = node
    local_uri, pod_uri = model_server
    core, apps = _apps(the_node)
    namespace = "node-test"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    apps.create_namespaced_deployment(namespace, _deployment(image, pod_uri))
    service = core.create_namespaced_service(
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "churn-predictor"},
            "spec": {"selector": {"app": "churn-predictor"}, "ports": [{"port": 80, "targetPort": 8080}]},
        },
    )
    first_ready = _wait_available(apps, "churn-predictor", namespace)
    url = f"http://{service.spec.cluster_ip}"  # kube-proxy's iptables rules lead to the pod
    rows = churn_frame.sample(16, random_state=4)
    mlflow.set_tracking_uri(local_uri)
    expected = predict(mlflow.sklearn.load_model("models:/churn@champion"), rows, churn_spec)

    def answered() -> np.ndarray:
        deadline = time.monotonic() + 60
        while True:  # the Service's endpoints and iptables rules follow readiness by a moment
            try:
                response = httpx.post(
                    f"{url}/v1/models/churn:predict", json={"instances": instances(churn_spec, rows)}, timeout=10
                )
                if response.status_code == 200:
                    return np.array([p["probability"] for p in response.json()["predictions"]])
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "no answer through the Service"
            time.sleep(1)

    np.testing.assert_allclose(answered(), expected, atol=1e-5)
    (pod,) = core.list_namespaced_pod(namespace, label_selector="app=churn-predictor").items
    assert pod.status.pod_ip.startswith("10.244.0.") and pod.spec.node_name == NODE_NAME
    assert pod.status.container_statuses[0].ready

    # A killed pod: the ReplicaSet controller makes another, the scheduler places it, the kubelet starts it.
    core.delete_namespaced_pod(pod.metadata.name, namespace, grace_period_seconds=0)
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        pods = core.list_namespaced_pod(namespace, label_selector="app=churn-predictor").items
        fresh = [p for p in pods if p.metadata.name != pod.metadata.name]
        statuses = (fresh[0].status.container_statuses or []) if fresh else []
        if len(pods) == 1 and statuses and all(s.ready for s in statuses):
            break
        time.sleep(1)
    else:
        raise AssertionError("the deleted pod was not replaced by a Ready one")
    np.testing.assert_allclose(answered(), expected, atol=1e-5)
    print(f"\npredictor Deployment available {first_ready:.1f} s after it was created")
