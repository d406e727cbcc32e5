"""A real Kubernetes node on this machine (tests.support.node): a kubelet on containerd and runc with a CNI
bridge, the real controllers, scheduler and kube-proxy. The Shepherd image's predictor runs as a Deployment's pod
with the chart's hardening (uid 10001, read-only root, no capabilities), loads its model from an MLflow server
over HTTP, passes its readiness probe, and answers through its Service's ClusterIP what the registered pipeline
answers in this process; a killed pod is replaced by the ReplicaSet and answers again.

Its own control plane (not the session's): the other cluster tests write controllers' status themselves, which
real controllers would fight."""

from __future__ import annotations

import os
import subprocess
import time

import mlflow
import numpy as np

from components.model_output import predict
from tests.support.node import NETNS_DIR, NODE_NAME, answers, delete_pod_netns, pod_netns, wait_rolled_out

READY_SECONDS = 240


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
    first_ready = wait_rolled_out(apps, "churn-predictor", namespace)
    url = f"http://{service.spec.cluster_ip}"  # kube-proxy's iptables rules lead to the pod
    rows = churn_frame.sample(16, random_state=4)
    mlflow.set_tracking_uri(local_uri)
    expected = predict(mlflow.sklearn.load_model("models:/churn@champion"), rows, churn_spec)

    def answered() -> np.ndarray:
        return np.array([p["probability"] for p in answers(url, churn_spec, rows)["predictions"]])

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
    # The node's 2 CPUs are shared by the session's later tests: give back what this one requested.
    core.delete_namespace(namespace)


def test_a_stopped_node_deletes_the_network_namespaces_its_pods_leave(node):
    """containerd killed with pods running never calls CNI DEL: Node.stop deletes the `cni-*` namespaces that
    appeared while it ran (and only those). Proven on a namespace made like containerd makes them."""
    name = f"cni-shepherd-probe-{os.getpid()}"
    # As containerd pins a pod's namespace: a new network namespace bind-mounted on a file. (Not `ip netns add`:
    # on first use it bind-mounts /run/netns over itself, which hides the namespaces already pinned under it.)
    NETNS_DIR.mkdir(parents=True, exist_ok=True)
    (NETNS_DIR / name).touch()
    subprocess.run(["unshare", f"--net={NETNS_DIR / name}", "true"], check=True, capture_output=True, timeout=30)
    try:
        made_while_running = pod_netns() - node[0].netns_before
        assert name in made_while_running
        delete_pod_netns(made_while_running & {name})  # the live pods' own namespaces stay until Node.stop
        assert name not in pod_netns()
        assert not (NETNS_DIR / name).exists()
    finally:
        if (NETNS_DIR / name).exists():
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=30, check=False)
