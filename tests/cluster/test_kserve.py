"""The real KServe controller (v0.20.0, built from its Go module: tests.support.kserve) with its admission webhooks,
on the real node (tests.support.node), reconciles the InferenceServices Shepherd writes in Standard mode, through
the code the deploy step and the rollout controller run (`KubernetesBackend`, `reconcile_once`):

- the model namespace as `manifests/base/models` makes it (the `shepherd` ServingRuntime, passed by KServe's
  ServingRuntime webhook, the `shepherd-models` ClusterStorageContainer whose init container checks the version,
  and the serving ConfigMap naming the MLflow server);
- the champion becomes KServe's Deployment and Service `churn-predictor`: the Shepherd image's predictor, hardened,
  loading the version its init container fetched into /mnt/models, answering through the Service what version 1
  answers in this process;
- the canary (version 2 at 10 %) becomes `churn-v2-predictor` beside it, each Service answering its own version,
  and KServe's status reports it; the shape KServe 0.20 refuses (an unnamed canary) is refused by its webhook;
- the rollout loop steps it (KServe's status follows; Shepherd's annotations, which the loop writes at every step,
  stay out of the pods, so no step restarts a predictor), promotes it (the stable Deployment rolls to version 2 and the
  canary's goes), and rolls a failing canary back to 0 % (KServe's status follows; the champion is untouched).

Metrics are the one stand-in (tests.support.rollouts.PrometheusAnswers): the loop's gates are proven against a
real Prometheus elsewhere (tests/e2e); here the question is what KServe does with what the loop writes.
"""

from __future__ import annotations

import contextlib
import copy
import sys
import time

import httpx
import mlflow
import numpy as np
import pytest
import yaml

from components import registry
from components.model_output import predict
from components.spec import parse_spec
from monitoring.metrics import DRIFT_WINDOW_ROWS
from pipelines.direct import train_and_register
from serving.backends import KubernetesBackend, ServingError
from serving.inference_service import build_inference_service
from serving.inference_service_view import InferenceServiceView
from serving.local_plane import free_port
from serving.rollout.loop import reconcile_once
from serving.rollout.machine import Action
from tests.support.node import POD_GATEWAY, answers, container_log, wait_rolled_out
from tests.support.rollouts import PrometheusAnswers
from tests.support.waiting import start_serving

NAMESPACE = "models"
GROUP, VERSION = "serving.kserve.io", "v1beta1"


@pytest.fixture(scope="module")
def two_versions(node, model_server, churn_spec, churn_frame, tmp_path_factory):
    """Version 2 (C=0.5) beside the node's champion v1; yields the spec the objects are built from."""
    data = yaml.safe_load(churn_spec.to_yaml())
    data["training"]["params"]["C"] = 0.5
    data["deployment"].update(namespace=NAMESPACE, canary_steps=[10, 50, 100], interval_seconds=60, failure_limit=1)
    spec = parse_spec(yaml.safe_dump(data))
    registered = train_and_register(spec, churn_frame, model_server[0], tmp_path_factory.mktemp("v2"), "v2")
    assert registered.version == "2"
    yield spec
    registry.connect(model_server[0]).set_registered_model_alias("churn", "champion", "1")  # as the node had it
    # The node's 2 CPUs are shared by the session's later tests: KServe deletes the predictors with the object.
    from kubernetes import client

    with contextlib.suppress(client.ApiException):
        client.CustomObjectsApi(node[0].plane.api_client()).delete_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, "inferenceservices", "churn"
        )


@pytest.fixture(scope="module")
def drift_service(model_server, tmp_path_factory):
    """Shepherd's drift service on this machine, where the predictors' payload loggers post (pods reach it through
    the bridge, as they reach MLflow); yields (URL here, URL for pods)."""
    port = free_port()
    command = [sys.executable, "-m", "monitoring.drift", "--host=0.0.0.0", f"--port={port}"]
    command.append(f"--tracking-uri={model_server[0]}")
    local = f"http://127.0.0.1:{port}"
    process = start_serving(command, tmp_path_factory.mktemp("drift") / "drift.log", f"{local}/healthz", 60)
    try:
        yield local, f"http://{POD_GATEWAY}:{port}/"
    finally:
        process.terminate()
        process.wait(timeout=30)


def _logged_rows(drift_url: str, expected: dict, seconds: float = 30) -> dict:
    """The drift service's window rows by (version, role) once they equal `expected` (the agents post as they
    answer, a moment later), or what they were at the deadline."""
    from prometheus_client.parser import text_string_to_metric_families

    deadline = time.monotonic() + seconds
    while True:
        families = text_string_to_metric_families(httpx.get(f"{drift_url}/metrics", timeout=5).text)
        rows = {
            (sample.labels["version"], sample.labels["role"]): int(sample.value)
            for family in families
            if family.name == DRIFT_WINDOW_ROWS
            for sample in family.samples
            if sample.labels.get("model") == "churn"
        }
        if rows == expected or time.monotonic() > deadline:
            return rows
        time.sleep(0.5)


@pytest.fixture(scope="module")
def cluster(node, kserve):
    from kubernetes import client

    api = node[0].plane.api_client()
    return KubernetesBackend(api), client.CoreV1Api(api), client.AppsV1Api(api), node[1]


def _expected(tracking_uri: str, version: str, spec, rows) -> np.ndarray:
    mlflow.set_tracking_uri(tracking_uri)
    return predict(mlflow.sklearn.load_model(f"models:/churn/{version}"), rows, spec)


def _served(core, service: str, spec, rows) -> np.ndarray:
    ip = core.read_namespaced_service(service, NAMESPACE).spec.cluster_ip
    return np.array([p["probability"] for p in answers(f"http://{ip}", spec, rows)["predictions"]])


def _wait_status(backend, test, what: str, seconds: float = 120) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        obj = backend.get(NAMESPACE, "churn")
        if obj is not None and test(obj.get("status") or {}):
            return obj
        time.sleep(1)
    raise AssertionError(f"KServe's status never showed {what}: {(obj or {}).get('status')}")


def _ready(status: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", []))


def _pod_args(core, deployment: str) -> list[str]:
    pods = core.list_namespaced_pod(NAMESPACE, label_selector=f"app=isvc.{deployment}").items
    running = [p for p in pods if p.metadata.deletion_timestamp is None]
    assert len(running) == 1, [p.metadata.name for p in pods]
    return running[0].spec.containers[0].args


def test_the_champion_runs_as_kserves_deployment_and_answers(
    cluster, two_versions, model_server, churn_frame, drift_service
):
    backend, core, apps, image = cluster
    spec = two_versions
    created = time.monotonic()
    backend.apply(build_inference_service(spec, "1", image=image, payload_log_url=drift_service[1]))
    wait_rolled_out(apps, "churn-predictor", NAMESPACE)
    _wait_status(backend, _ready, "Ready")
    print(f"\nInferenceService created -> Ready in {time.monotonic() - created:.1f} s")

    template = apps.read_namespaced_deployment("churn-predictor", NAMESPACE).spec.template.spec
    (container,) = template.containers
    assert container.image == image and container.command == ["python", "-m", "serving.predictor"]
    # The runtime's arguments, then the object's (KServe concatenates them).
    assert container.args[:3] == ["--model_name=churn", "--http_port=8080", "--model_dir=/mnt/models"]
    assert container.args[3:] == ["--model_uri=models:/churn/1", "--role=champion"]
    context = container.security_context
    assert context.run_as_non_root and context.read_only_root_filesystem and context.capabilities.drop == ["ALL"]
    assert {e.config_map_ref.name for e in container.env_from} == {"shepherd-serving"}

    rows = churn_frame.sample(16, random_state=5)
    expected = _expected(model_server[0], "1", spec, rows)
    np.testing.assert_allclose(_served(core, "churn-predictor", spec, rows), expected, atol=1e-5)
    # The storage initializer fetched and verified the version into /mnt/models; the predictor loaded it from there
    # instead of downloading it a second time.
    pods = core.list_namespaced_pod(NAMESPACE, label_selector="app=isvc.churn-predictor").items
    (pod,) = [p for p in pods if p.metadata.deletion_timestamp is None]
    log = container_log(pod, "kserve-container")
    loaded_from = "loaded from /mnt/models, fetched and verified by the storage initializer"
    assert f"serving churn v1 (onnx, {loaded_from}) as champion" in log, log

    # The payload logger: KServe's pod mutator added its agent beside the predictor, the Service sends requests
    # through it (port 9081), and it posted each request and answer to the drift service, which paired them
    # under the champion's version (the registry's @champion: KServe's agent names no version).
    assert [c.name for c in pod.spec.containers] == ["kserve-container", "agent"]
    assert [p.target_port for p in core.read_namespaced_service("churn-predictor", NAMESPACE).spec.ports] == [9081]
    assert _logged_rows(drift_service[0], {("1", "champion"): 16}) == {("1", "champion"): 16}


def test_kserves_admission_refuses_the_canary_shape_it_does_not_support(cluster, two_versions):
    backend, _, _, image = cluster
    obj = build_inference_service(two_versions, "2", champion_version="1", canary_percent=10, image=image)
    unnamed = copy.deepcopy(obj)
    del unnamed["spec"]["canary"][0]["predictor"]["name"]
    with pytest.raises(ServingError, match=r"canary\[0\] predictor.name is required"):
        backend.apply(unnamed)
    assert "canary" not in backend.get(NAMESPACE, "churn")["spec"]  # nothing was written


def test_the_canary_runs_beside_the_champion_each_answering_its_version(
    cluster, two_versions, model_server, churn_frame, drift_service
):
    backend, core, apps, image = cluster
    spec = two_versions
    backend.apply(
        build_inference_service(
            spec, "2", champion_version="1", canary_percent=10, image=image, payload_log_url=drift_service[1]
        )
    )
    wait_rolled_out(apps, "churn-v2-predictor", NAMESPACE)
    obj = _wait_status(
        backend, lambda s: [c.get("ready") for c in s.get("canaryStatuses", [])] == [True], "the canary ready"
    )
    (canary,) = obj["status"]["canaryStatuses"]
    assert (canary["name"], canary["ready"], canary["trafficPercent"]) == ("v2", True, 10)
    assert [m.version for m in InferenceServiceView(obj).served()] == ["1", "2"]
    assert _pod_args(core, "churn-v2-predictor")[3:] == ["--model_uri=models:/churn/2", "--role=canary"]

    rows = churn_frame.sample(16, random_state=6)
    v1, v2 = (_expected(model_server[0], v, spec, rows) for v in ("1", "2"))
    assert np.abs(v1 - v2).max() > 1e-4  # the two versions are told apart by their answers
    np.testing.assert_allclose(_served(core, "churn-predictor", spec, rows), v1, atol=1e-5)
    np.testing.assert_allclose(_served(core, "churn-v2-predictor", spec, rows), v2, atol=1e-5)

    # KServe 0.20 gives the canary's pod the agent but builds its Service without the predictor's logger
    # (reconcileCanaryDeployments passes an empty ComponentExtensionSpec), so the Service bypasses the agent and
    # the answers above were not logged. Sent to the pod's agent port, as a gateway must be told to, they are, and
    # land in the canary's window: KServe's agent names no revision in Standard mode, and the drift service reads
    # it from the canary's logger URL (`?role=canary&version=2`).
    assert [p.target_port for p in core.read_namespaced_service("churn-v2-predictor", NAMESPACE).spec.ports] == [8080]
    pods = core.list_namespaced_pod(NAMESPACE, label_selector="app=isvc.churn-v2-predictor").items
    (pod,) = [p for p in pods if p.metadata.deletion_timestamp is None]
    through_agent = [p["probability"] for p in answers(f"http://{pod.status.pod_ip}:9081", spec, rows)["predictions"]]
    np.testing.assert_allclose(through_agent, v2, atol=1e-5)
    expected = {("1", "champion"): 32, ("2", "canary"): 16}
    assert _logged_rows(drift_service[0], expected) == expected


def _pod_uids(core) -> dict[str, str]:
    """The running predictor pods' uids by Deployment: a rolled Deployment has new pods."""
    pods = core.list_namespaced_pod(NAMESPACE).items
    running = [p for p in pods if p.metadata.deletion_timestamp is None and p.status.phase == "Running"]
    uids = {(p.metadata.labels or {}).get("app", ""): p.metadata.uid for p in running}
    assert {"isvc.churn-predictor", "isvc.churn-v2-predictor"} <= set(uids), uids
    return uids


def test_the_rollout_loop_steps_and_promotes_on_the_real_controller(
    cluster, two_versions, model_server, churn_frame, drift_service
):
    backend, core, apps, _ = cluster
    spec, metrics, now, actions = two_versions, PrometheusAnswers(), 1000.0, []
    pods_before = _pod_uids(core)
    while (decision := reconcile_once(backend, model_server[0], NAMESPACE, "churn", now, provider=metrics)) is not None:
        actions.append(decision.action)
        if decision.action is Action.STEP:
            percent = InferenceServiceView(backend.get(NAMESPACE, "churn")).canary_percent
            _wait_status(
                backend,
                lambda s, p=percent: [c["trafficPercent"] for c in s.get("canaryStatuses", [])] == [p],
                f"the canary at {percent} %",
            )
            # Each step wrote the loop's state and baseline annotations: KServe, told to keep them out of the pods
            # (tests.support.kserve), rolled neither predictor's pods for it.
            for deployment in ("churn-predictor", "churn-v2-predictor"):
                template = apps.read_namespaced_deployment(deployment, NAMESPACE).spec.template
                copied = [k for k in template.metadata.annotations or {} if k.startswith("shepherd.io/")]
                assert copied == [], (deployment, copied)
            assert _pod_uids(core) == pods_before
        now += 61
        assert len(actions) < 10, actions
    assert [a for a in actions if a is not Action.HOLD] == [Action.STEP, Action.STEP, Action.PROMOTE]

    # KServe rolls the stable Deployment to version 2 and removes the canary's.
    promoted = time.monotonic()
    _wait_gone(apps, "churn-v2-predictor")
    wait_rolled_out(apps, "churn-predictor", NAMESPACE)
    assert _pod_args(core, "churn-predictor")[3:] == ["--model_uri=models:/churn/2", "--role=champion"]
    obj = _wait_status(backend, lambda s: _ready(s) and not s.get("canaryStatuses"), "no canary")
    print(f"\npromoted: stable Deployment on v2, canary gone, in {time.monotonic() - promoted:.1f} s")
    assert InferenceServiceView(obj).mode == "single"
    rows = churn_frame.sample(16, random_state=7)
    expected = _expected(model_server[0], "2", spec, rows)
    np.testing.assert_allclose(_served(core, "churn-predictor", spec, rows), expected, atol=1e-5)
    assert str(registry.connect(model_server[0]).get_model_version_by_alias("churn", "champion").version) == "2"
    # The promoted predictor's payload log opens a new champion window on version 2 (v1's is dropped).
    logged = {("2", "champion"): 16, ("2", "canary"): 16}
    assert _logged_rows(drift_service[0], logged) == logged


def test_a_failing_canary_is_rolled_back_on_the_real_controller(cluster, two_versions, model_server, drift_service):
    backend, _, apps, image = cluster
    client = registry.connect(model_server[0])
    client.set_registered_model_alias("churn", "challenger", "1")  # v1 comes back as the challenger of v2
    backend.apply(
        build_inference_service(
            two_versions, "1", champion_version="2", canary_percent=10, image=image, payload_log_url=drift_service[1]
        )
    )
    wait_rolled_out(apps, "churn-v1-predictor", NAMESPACE)
    metrics = PrometheusAnswers()
    metrics.errors = 30.0  # every interval: the canary fails 30 % of its requests
    started = time.monotonic()
    # The first reconcile starts the rollout, the next judges it. KServe writes the object too (its status): a write
    # over a stale read is refused and decided again on the next reconcile.
    for now in (5000.0, 5061.0, 5122.0, 5183.0, 5244.0):
        decision = reconcile_once(backend, model_server[0], NAMESPACE, "churn", now, provider=metrics)
        if decision.action is not Action.HOLD:
            break
    assert decision.action is Action.ROLLBACK and "error rate" in decision.reason, decision.reason
    _wait_status(backend, lambda s: [c["trafficPercent"] for c in s.get("canaryStatuses", [])] == [0], "0 %")
    print(f"\nrolled back: KServe's status shows the canary at 0 % {time.monotonic() - started:.1f} s after the start")
    # KServe 0.20 keeps a 0 % canary's Deployment (it does not scale a canary to zero); the stable one serves v2.
    stable = apps.read_namespaced_deployment("churn-predictor", NAMESPACE).spec.template.spec.containers[0]
    assert stable.args[3:] == ["--model_uri=models:/churn/2", "--role=champion"]
    assert str(client.get_model_version_by_alias("churn", "champion").version) == "2"


def _wait_gone(apps, name: str, seconds: float = 120) -> None:
    from kubernetes.client import ApiException

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            apps.read_namespaced_deployment(name, NAMESPACE)
        except ApiException as exc:
            if exc.status == 404:
                return
            raise
        time.sleep(1)
    raise AssertionError(f"Deployment {name} still there after {seconds:.0f} s")
