"""The Kubernetes serving backend against a real kube-apiserver with KServe's CRD installed: create,
step the canary, read the status KServe would write, a lost write race retried, and server-side
validation that really rejects a broken object."""

from __future__ import annotations

import pytest
import yaml
from kubernetes import client

from components import registry
from components.deploy import apply_deployment
from components.spec import parse_spec
from serving.backends import KubernetesBackend, ServingError
from serving.inference_service import build_inference_service
from serving.rollout.loop import TAG_ROLLOUT
from tests.conftest import REPO

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"


def _in(spec, namespace):
    data = yaml.safe_load(spec.to_yaml())
    data["deployment"]["namespace"] = namespace
    return parse_spec(yaml.safe_dump(data))


def _write_status_as_kserve_would(api, namespace, champion, canary=None, percent=0):
    traffic = [{"revisionName": f"churn-predictor-{champion}", "percent": 100 - percent, "latestRevision": False}]
    if canary:
        traffic.append({"revisionName": f"churn-predictor-{canary}", "percent": percent, "latestRevision": True})
    status = {
        "components": {
            "predictor": {
                "traffic": traffic,
                "latestRolledoutRevision": f"churn-predictor-{champion}",
                "latestReadyRevision": f"churn-predictor-{canary or champion}",
            }
        },
        "conditions": [{"type": "Ready", "status": "True"}],
    }
    if canary:
        status["canaryStatuses"] = [{"name": f"churn-predictor-{canary}", "ready": True, "trafficPercent": percent}]
    api.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, "churn", {"status": status})


def test_create_step_and_read_status(control_plane, namespace, churn_spec):
    backend = KubernetesBackend(control_plane.api_client())
    spec = _in(churn_spec, namespace)
    created = backend.apply(build_inference_service(spec, "1"))
    assert created["metadata"]["uid"] and created["spec"]["predictor"]["minReplicas"] == 1

    _write_status_as_kserve_would(backend.api, namespace, "1")
    stepped = backend.apply(build_inference_service(spec, "2", champion_version="1", canary_percent=10))
    assert stepped["spec"]["canary"][0]["trafficPercent"] == 10
    assert stepped["metadata"]["resourceVersion"] != created["metadata"]["resourceVersion"]

    _write_status_as_kserve_would(backend.api, namespace, "1", canary="2", percent=10)
    seen = backend.get(namespace, "churn")
    assert seen["status"]["canaryStatuses"][0]["trafficPercent"] == 10
    assert {t["percent"] for t in seen["status"]["components"]["predictor"]["traffic"]} == {90, 10}
    # Replacing the spec leaves the status KServe wrote alone (status is a subresource).
    backend.apply(build_inference_service(spec, "2", champion_version="1", canary_percent=25))
    assert backend.get(namespace, "churn")["status"]["canaryStatuses"][0]["trafficPercent"] == 10
    assert backend.get(namespace, "missing") is None
    assert any(o["metadata"]["namespace"] == namespace for o in backend.list())


class _RacingApi(client.CustomObjectsApi):
    """The real API, plus a competing writer that updates the object just before our first replace."""

    def __init__(self, api_client):
        super().__init__(api_client)
        self.raced = False

    def replace_namespaced_custom_object(self, group, version, namespace, plural, name, body, **kwargs):
        if not self.raced:
            self.raced = True
            current = self.get_namespaced_custom_object(group, version, namespace, plural, name)
            current["metadata"].setdefault("annotations", {})["other-writer"] = "was here"
            super().replace_namespaced_custom_object(group, version, namespace, plural, name, current)
        return super().replace_namespaced_custom_object(group, version, namespace, plural, name, body, **kwargs)


def test_a_lost_write_race_is_retried(control_plane, namespace, churn_spec):
    backend = KubernetesBackend(control_plane.api_client())
    spec = _in(churn_spec, namespace)
    backend.apply(build_inference_service(spec, "1"))
    backend.api = _RacingApi(control_plane.api_client())
    result = backend.apply(build_inference_service(spec, "2", champion_version="1", canary_percent=10))
    assert backend.conflicts_retried == 1
    assert result["spec"]["canary"][0]["trafficPercent"] == 10


def test_the_api_server_really_validates(control_plane, namespace, churn_spec):
    backend = KubernetesBackend(control_plane.api_client())
    broken = build_inference_service(_in(churn_spec, namespace), "2", champion_version="1", canary_percent=10)
    broken["spec"]["canary"][0]["trafficPercent"] = "ten"
    with pytest.raises(ServingError, match=r"HTTP 422.*trafficPercent"):
        backend.apply(broken)


@pytest.mark.parametrize("mode", ["standard", "knative"])
def test_example_manifests_pass_server_side_dry_run(control_plane, namespace, mode):
    obj = yaml.safe_load((REPO / "manifests" / "examples" / f"inferenceservice-{mode}-canary.yaml").read_text())
    obj["metadata"]["namespace"] = namespace
    api = client.CustomObjectsApi(control_plane.api_client())
    accepted = api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, obj, dry_run="All")
    assert accepted["metadata"]["name"] == "churn"
    assert api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"] == []  # nothing stored


def test_deploy_target_kubernetes_uses_the_kubeconfig(control_plane, namespace, churn_spec, monkeypatch):
    from serving.backends import backend_for

    monkeypatch.setenv("KUBECONFIG", str(control_plane.kubeconfig))
    backend = backend_for("kubernetes")
    applied = backend.apply(build_inference_service(_in(churn_spec, namespace), "1"))
    assert applied["metadata"]["namespace"] == namespace
    with pytest.raises(ServingError, match="expected 'kubernetes' or the URL"):
        backend_for("k8s")


def test_a_newer_challenger_supersedes_an_unfinished_canary_and_says_so(control_plane, namespace, churn_spec, tmp_path):
    """Two runs of one model at once: the newest challenger wins (its rollout starts again at the first
    step), and the replaced canary's end is recorded, not silent."""
    backend = KubernetesBackend(control_plane.api_client())
    spec = _in(churn_spec, namespace)
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = registry.connect(tracking_uri)
    client.create_registered_model("churn")
    for _ in range(3):
        client.create_model_version("churn", source=str(tmp_path))

    apply_deployment(backend, build_inference_service(spec, "1"), tracking_uri)
    apply_deployment(backend, build_inference_service(spec, "2", champion_version="1", canary_percent=10), tracking_uri)
    assert backend.events(namespace, "churn") == []  # a first canary replaces nothing
    third = build_inference_service(spec, "3", champion_version="1", canary_percent=10)
    applied = apply_deployment(backend, third, tracking_uri)
    apply_deployment(backend, third, tracking_uri)  # the same version again supersedes nothing more

    assert applied["metadata"]["annotations"]["shepherd.io/model-version"] == "3"
    superseded = [e for e in backend.events(namespace, "churn") if e["reason"] == "CanarySuperseded"]
    assert len(superseded) == 1 and superseded[0]["type"] == "Warning"
    assert "v2 (canary at 10 %) superseded by v3" in superseded[0]["message"]
    assert client.get_model_version("churn", "2").tags[TAG_ROLLOUT].startswith("superseded: v2")
    assert TAG_ROLLOUT not in client.get_model_version("churn", "3").tags
