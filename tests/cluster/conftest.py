"""The cluster tests' fixtures: a bare kube-apiserver with KServe's CRDs (tests write controllers' status
themselves), and a real node (tests.support.node) with an MLflow server its pods reach, the real KServe controller,
a real Prometheus scraping the node's predictor pods as the chart's PodMonitor says, and the chart installed with
`helm install`, all once per session."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import threading
import time
import uuid

import pytest
import yaml

from tests.conftest import REPO
from tests.support.containers import shepherd_image
from tests.support.control_plane import ControlPlane, build_binaries
from tests.support.crds import KSERVE_MODULE, KSERVE_VERSION, module_dir, prometheus_operator_crds
from tests.support.kserve import AGENT_IMAGE, KServeController, agent_archive, build_kserve
from tests.support.node import POD_GATEWAY, Node, missing_prerequisites, node_ip
from tests.support.prometheus import start_prometheus
from tests.support.waiting import start_serving

GROUP = "serving.kserve.io"
MODEL_NAMESPACE = "models"  # test_kserve's: its rollouts are driven by the test, no controller pod watches it
CHART_MODEL_NAMESPACE = "chart-models"  # the chart's controller pod's (test_chart_on_node, test_rollout_on_node)
RELEASE_NAMESPACE = "shepherd"


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
    local = f"http://127.0.0.1:{port}"
    server = start_serving(command, work / "mlflow.log", f"{local}/health")
    try:
        assert train_and_register(churn_spec, churn_frame, local, work).alias == "champion"
        yield local, f"http://{POD_GATEWAY}:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


def prepare_model_namespace(api, namespace: str, image: str, tracking_uri: str) -> None:
    """A model namespace as `manifests/base/models` makes it: the `shepherd` ServingRuntime (the test's image) and
    the serving ConfigMap naming the MLflow server pods reach. Created if missing."""
    from kubernetes import client
    from kubernetes.client import ApiException

    core = client.CoreV1Api(api)
    try:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    except ApiException as exc:
        if exc.status != 409:
            raise
    config_map = yaml.safe_load((REPO / "manifests/base/models/serving-config.yaml").read_text())
    config_map["data"]["MLFLOW_TRACKING_URI"] = tracking_uri
    core.create_namespaced_config_map(namespace, config_map)
    runtime = yaml.safe_load((REPO / "manifests/base/models/servingruntime.yaml").read_text())
    runtime["spec"]["containers"][0]["image"] = image
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, "v1alpha1", namespace, "servingruntimes", runtime
    )


@pytest.fixture(scope="session")
def kserve(node, model_server, tmp_path_factory):
    """KServe's controller and webhooks on the node's control plane (its agent image in containerd), the
    `shepherd-models` ClusterStorageContainer (the test's image), and test_kserve's model namespace."""
    from kubernetes import client

    the_node, image = node
    binaries = build_kserve()
    the_node.import_archive(AGENT_IMAGE, agent_archive(binaries))  # the payload logger KServe adds to pods
    controller = KServeController(tmp_path_factory.mktemp("kserve"), the_node.plane, binaries / "manager")
    try:
        controller.start()
        api = the_node.plane.api_client()
        storage = yaml.safe_load((REPO / "manifests/base/models/storage-container.yaml").read_text())
        storage["spec"]["container"]["image"] = image
        client.CustomObjectsApi(api).create_cluster_custom_object(
            GROUP, "v1alpha1", "clusterstoragecontainers", storage
        )
        prepare_model_namespace(api, MODEL_NAMESPACE, image, model_server[1])
        yield controller
    finally:
        controller.stop()


def predictor_scrape_config(discovery_url: str, namespace: str, interval: str = "1s") -> dict:
    """What prometheus-operator makes of the chart's PodMonitor (helm template of the chart's defaults): a
    pod-discovery job over `namespace`, its selector and relabelings as the operator translates them, the job
    label `<namespace>/<name>` the rules expect. Debian's Prometheus is built without Kubernetes discovery, so the
    pods come from `PodDiscovery` (the same `__meta_kubernetes_pod_*` labels, over HTTP discovery)."""
    from tests.cluster.test_helm_chart import by_kind, documents, render

    monitor = by_kind(documents(render("default", RELEASE_NAMESPACE, namespace)), "PodMonitor")["shepherd-predictor"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    (selected,) = monitor["spec"]["selector"]["matchExpressions"]
    assert selected["operator"] == "Exists" and monitor["spec"]["namespaceSelector"]["matchNames"] == [namespace]
    relabel = [
        {"action": "keep", "source_labels": [PodDiscovery.label("labelpresent", selected["key"])], "regex": "true"}
    ]
    renamed = {"sourceLabels": "source_labels", "targetLabel": "target_label"}
    relabel += [{renamed.get(key, key): value for key, value in rule.items()} for rule in endpoint["relabelings"]]
    job = f"{RELEASE_NAMESPACE}/shepherd-predictor"
    relabel.append({"action": "replace", "target_label": "job", "replacement": job})
    return {
        "job_name": f"podMonitor/{job}/0",
        "honor_labels": endpoint["honorLabels"],
        "metrics_path": endpoint["path"],
        "scrape_interval": interval,
        "scrape_timeout": interval,
        "http_sd_configs": [{"url": discovery_url, "refresh_interval": "1s"}],
        "relabel_configs": relabel,
    }


class PodDiscovery:
    """Prometheus' Kubernetes pod discovery (role: pod) for one namespace, served over HTTP discovery: one target
    per container of each running pod, with the `__meta_kubernetes_pod_*` labels Kubernetes discovery gives it."""

    def __init__(self, api, namespace: str):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from kubernetes import client

        core, namespace_ = client.CoreV1Api(api), namespace

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                body = json.dumps(PodDiscovery.targets(core, namespace_)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/targets"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def label(kind: str, name: str) -> str:
        return f"__meta_kubernetes_pod_{kind}_" + "".join(c if c.isalnum() else "_" for c in name)

    @staticmethod
    def targets(core, namespace: str) -> list[dict]:
        groups = []
        for pod in core.list_namespaced_pod(namespace).items:
            if not pod.status.pod_ip or pod.status.phase != "Running":
                continue
            labels = {"__meta_kubernetes_namespace": namespace, "__meta_kubernetes_pod_name": pod.metadata.name}
            labels["__meta_kubernetes_pod_ip"] = pod.status.pod_ip
            for key, value in (pod.metadata.labels or {}).items():
                labels[PodDiscovery.label("label", key)] = value
                labels[PodDiscovery.label("labelpresent", key)] = "true"
            for container in pod.spec.containers:
                ports = [p.container_port for p in container.ports or []]
                address = f"{pod.status.pod_ip}:{ports[0]}" if ports else pod.status.pod_ip
                groups.append(
                    {"targets": [address], "labels": {**labels, "__meta_kubernetes_pod_container_name": container.name}}
                )
        return groups

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture(scope="session")
def cluster_prometheus(node, tmp_path_factory):
    """A real Prometheus on this machine scraping the node's predictor pods in the chart's model namespace, where
    the chart's controller pod reaches it (the bridge's address); yields (Prometheus, URL for pods)."""
    from tests.support.prometheus import binary

    binary("prometheus")  # fails (CI) or skips with how to get it
    discovery = PodDiscovery(node[0].plane.api_client(), CHART_MODEL_NAMESPACE)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [predictor_scrape_config(discovery.url, CHART_MODEL_NAMESPACE)],
    }
    try:
        prometheus = start_prometheus(tmp_path_factory.mktemp("cluster-prometheus"), config, listen_host="0.0.0.0")
        try:
            yield prometheus, prometheus.url.replace("127.0.0.1", POD_GATEWAY)
        finally:
            prometheus.stop()
    finally:
        discovery.stop()


@pytest.fixture(scope="session")
def chart_release(node, kserve, model_server, cluster_prometheus, tmp_path_factory):
    """helm/shepherd installed for real (`helm install --wait`) with its defaults (ci/default-values.yaml), the
    test's image, the MLflow server and the Prometheus pods reach, a 2 s controller interval, and its model
    namespace prepared; yields (core API, seconds from install to every pod Ready)."""
    from kubernetes import client

    from tests.cluster.test_helm_chart import CHART, RELEASE, helm

    the_node, image = node
    plane = the_node.plane
    for crd in prometheus_operator_crds(tmp_path_factory.mktemp("crds")):  # the chart's monitoring objects
        plane.install_crd(crd)
    api = plane.api_client()
    prepare_model_namespace(api, CHART_MODEL_NAMESPACE, image, model_server[1])
    core = client.CoreV1Api(api)
    repository, tag = image.rsplit(":", 1)
    settings = {
        "image.repository": repository,
        "image.tag": tag,
        "image.pullPolicy": "Never",
        "modelNamespace": CHART_MODEL_NAMESPACE,
        "mlflow.externalUrl": model_server[1],
        "controller.prometheusUrl": cluster_prometheus[1],
        "controller.intervalSeconds": "2",
    }
    started = time.monotonic()
    installed = helm(
        "install",
        RELEASE,
        str(CHART),
        "--namespace",
        RELEASE_NAMESPACE,
        "--create-namespace",
        "--values",
        str(CHART / "ci" / "default-values.yaml"),
        "--set",
        ",".join(f"{k}={v}" for k, v in settings.items()),
        "--wait",
        "--timeout=5m",
        kubeconfig=plane.kubeconfig,
        timeout=400,
    )
    seconds = time.monotonic() - started
    if installed.returncode != 0:
        raise AssertionError(f"helm install failed:\n{installed.stderr}\n{pods_report(core, RELEASE_NAMESPACE)}")
    print(f"\nhelm install -> every pod Ready in {seconds:.1f} s")
    try:
        yield core, seconds
    finally:
        helm("uninstall", RELEASE, "--namespace", RELEASE_NAMESPACE, "--wait", kubeconfig=plane.kubeconfig, timeout=200)


def pods_report(core, namespace: str) -> str:
    """Each pod's phase and containers' state, with the log tail of any not ready or restarted (for failures)."""
    lines = []
    for pod in core.list_namespaced_pod(namespace).items:
        statuses = pod.status.container_statuses or []
        states = [(s.name, s.ready, s.restart_count, s.state.waiting and s.state.waiting.reason) for s in statuses]
        lines.append(f"{pod.metadata.name}: {pod.status.phase} {states}")
        for status in statuses:
            if status.restart_count or not status.ready:
                with contextlib.suppress(Exception):
                    lines.append(core.read_namespaced_pod_log(pod.metadata.name, namespace, tail_lines=20))
    return "\n".join(lines) or "(no pods)"
