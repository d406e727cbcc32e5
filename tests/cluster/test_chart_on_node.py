"""helm/shepherd installed for real (`helm install --wait`, not `template`) on the real node (tests.support.node)
with the Shepherd image, as a platform team installs it with the chart's defaults (ci/default-values.yaml: the
rollout controller, drift service and webhook, NetworkPolicies and the prometheus-operator objects on):

- every component's pod is Running and Ready, its probes passing, under the chart's securityContext;
- the webhook answers through its Service, only with the token of the Secret the chart made, and acts under its
  Role (it reads InferenceServices in the model namespace to judge an alert);
- the rollout controller's ServiceAccount lists InferenceServices under the chart's Role: its
  `shepherd_rollout_backend_up` gauge, read through its Service, is 1;
- the drift service answers through its Service;
- the NetworkPolicies and monitoring objects are accepted by the API server. (The node's CNI bridge plugin does
  not enforce NetworkPolicies: what they admit is checked on the rendered objects in test_helm_chart.py.)
"""

from __future__ import annotations

import base64
import re
import time

import httpx
import pytest
import yaml

from tests.cluster.conftest import CHART_MODEL_NAMESPACE, RELEASE_NAMESPACE, pods_report
from tests.cluster.test_helm_chart import CHART, RELEASE
from tests.support.node import wait_answering

NAMESPACE = RELEASE_NAMESPACE
COMPONENTS = ("controller", "drift", "webhook")


@pytest.fixture(scope="module")
def release(chart_release):
    return chart_release


def _pods_report(core) -> str:
    return pods_report(core, NAMESPACE)


def _service_url(core, component: str) -> str:
    service = core.read_namespaced_service(f"{RELEASE}-{component}", NAMESPACE)
    url = f"http://{service.spec.cluster_ip}:{service.spec.ports[0].port}"
    wait_answering(f"{url}/healthz")
    return url


def test_every_component_runs_ready_under_the_charts_security_context(release):
    core, _ = release
    pods = [p for p in core.list_namespaced_pod(NAMESPACE).items if p.metadata.deletion_timestamp is None]
    by_component = {p.metadata.labels["app.kubernetes.io/component"]: p for p in pods}
    assert sorted(by_component) == sorted(COMPONENTS), _pods_report(core)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for component, pod in by_component.items():
        (status,) = pod.status.container_statuses
        assert pod.status.phase == "Running" and status.ready, (component, _pods_report(core))
        assert status.restart_count == 0, (component, _pods_report(core))
        (container,) = pod.spec.containers
        context = core.api_client.sanitize_for_serialization(container.security_context)
        assert context == values["securityContext"], component
        pod_context = core.api_client.sanitize_for_serialization(pod.spec.security_context)
        assert pod_context == values["podSecurityContext"], component
    print("\n" + _pods_report(core))


def test_the_webhook_answers_through_its_service_only_with_the_charts_token(release):
    core, _ = release
    secret = core.read_namespaced_secret(f"{RELEASE}-webhook-token", NAMESPACE)
    token = base64.b64decode(secret.data["token"]).decode()
    url = _service_url(core, "webhook")
    alert = {
        "version": "4",
        "status": "firing",
        "receiver": "shepherd",
        "groupKey": '{}:{alertname="ShepherdCanaryErrorRateHigh"}',
        "alerts": [
            {
                "status": "firing",
                "labels": {
                    "alertname": "ShepherdCanaryErrorRateHigh",
                    "shepherd_action": "rollback",
                    "model": "absent",
                    "namespace": CHART_MODEL_NAMESPACE,
                },
                "annotations": {},
                "startsAt": "2026-12-07T00:00:00Z",
            }
        ],
    }
    with httpx.Client(timeout=30) as http:
        assert http.get(f"{url}/healthz").status_code == 200
        assert http.post(f"{url}/alerts", json=alert).status_code == 401
        assert http.post(f"{url}/alerts", json=alert, headers={"Authorization": "Bearer wrong"}).status_code == 401
        answer = http.post(f"{url}/alerts", json=alert, headers={"Authorization": f"Bearer {token}"})
    # 200, not 503: the webhook read the model namespace under its Role and found no such InferenceService.
    assert answer.status_code == 200, answer.text
    assert "absent" in answer.text


def test_the_controller_lists_inference_services_under_its_role(release):
    core, _ = release
    url = _service_url(core, "controller")
    deadline = time.monotonic() + 90
    while True:
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        found = re.search(r"^shepherd_rollout_backend_up (\S+)$", metrics, re.M)
        if found and float(found.group(1)) == 1.0:
            break
        assert time.monotonic() < deadline, (found and found.group(0), _pods_report(core))
        time.sleep(2)


def test_the_drift_service_answers_through_its_service(release):
    core, _ = release
    url = _service_url(core, "drift")
    assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
    assert "shepherd_" in httpx.get(f"{url}/metrics", timeout=10).text


def test_the_network_policies_and_monitoring_objects_are_on_the_cluster(release, node):
    from kubernetes import client

    api = node[0].plane.api_client()
    policies = client.NetworkingV1Api(api).list_namespaced_network_policy(NAMESPACE).items
    assert {p.metadata.name for p in policies} >= {f"{RELEASE}-{c}" for c in COMPONENTS}, policies
    custom = client.CustomObjectsApi(api)
    for plural in ("servicemonitors", "prometheusrules"):
        listed = custom.list_namespaced_custom_object("monitoring.coreos.com", "v1", NAMESPACE, plural)["items"]
        assert listed, plural
