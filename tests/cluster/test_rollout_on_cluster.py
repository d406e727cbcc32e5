"""The rollout loop against a real kube-apiserver with KServe's CRD: it steps, promotes and rolls back
by writing the InferenceService, records Kubernetes Events, resumes after a restart from the object
alone, and never overwrites a concurrent change (a real 409 from the server).

The metric provider is the one stand-in: it answers what Prometheus would, so the test can say
"healthy" or "failing" per interval; the KServe controller's part (status) is written by the test.
"""

from __future__ import annotations

import pytest
import yaml
from kubernetes import client

from components import registry
from components.spec import parse_spec
from pipelines.direct import train_and_register
from serving.backends import KubernetesBackend
from serving.inference_service import build_inference_service
from serving.inference_service_view import serving_container
from serving.rollout.loop import TAG_ROLLOUT, canary_percent, reconcile_once
from serving.rollout.machine import Action
from tests.cluster.test_kubernetes_backend import GROUP, PLURAL, VERSION, _write_status_as_kserve_would
from tests.support.rollouts import PrometheusAnswers


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory, churn_spec, churn_frame):
    home = tmp_path_factory.mktemp("cluster-rollout")
    uri = f"sqlite:///{home / 'mlflow.db'}"
    assert train_and_register(churn_spec, churn_frame, uri, home, "v1").version == "1"
    data = yaml.safe_load(churn_spec.to_yaml())
    data["training"]["params"]["C"] = 0.5
    assert train_and_register(parse_spec(yaml.safe_dump(data)), churn_frame, uri, home, "v2").version == "2"
    return uri


def _spec(churn_spec, namespace, **deployment):
    data = yaml.safe_load(churn_spec.to_yaml())
    data["deployment"].update(namespace=namespace, canary_steps=[10, 50, 100], interval_seconds=60, **deployment)
    return parse_spec(yaml.safe_dump(data))


def _deploy_canary(control_plane, namespace, spec, version="2"):
    backend = KubernetesBackend(control_plane.api_client())
    backend.apply(build_inference_service(spec, version, champion_version="1", canary_percent=10))
    _write_status_as_kserve_would(backend.api, namespace, "1", canary=version, percent=10)
    return backend


def test_steps_and_promotes_writing_the_object_and_events(control_plane, namespace, churn_spec, two_versions):
    backend = _deploy_canary(control_plane, namespace, _spec(churn_spec, namespace))
    metrics, now, actions = PrometheusAnswers(), 1000.0, []
    while (decision := reconcile_once(backend, two_versions, namespace, "churn", now, provider=metrics)) is not None:
        actions.append(decision.action)
        obj = backend.get(namespace, "churn")
        if obj is not None and canary_percent(obj):
            _write_status_as_kserve_would(backend.api, namespace, "1", canary="2", percent=canary_percent(obj))
        now += 61
        assert len(actions) < 10, actions
    assert [a for a in actions if a is not Action.HOLD] == [Action.STEP, Action.STEP, Action.PROMOTE]
    served = backend.get(namespace, "churn")
    assert "canary" not in served["spec"]
    assert "--model_uri=models:/churn/2" in serving_container(served["spec"]["predictor"])["args"]
    assert "--role=champion" in serving_container(served["spec"]["predictor"])["args"]
    reasons = [e["reason"] for e in backend.events(namespace, "churn")]
    assert reasons == ["RolloutStart", "RolloutStep", "RolloutStep", "RolloutPromote"]
    mlflow = registry.connect(two_versions)
    assert str(mlflow.get_model_version_by_alias("churn", "champion").version) == "2"
    mlflow.set_registered_model_alias("churn", "champion", "1")  # the next test starts from v1 again


def test_a_failing_canary_is_rolled_back_and_a_restarted_loop_agrees(
    control_plane, namespace, churn_spec, two_versions
):
    spec = _spec(churn_spec, namespace, failure_limit=2)
    backend = _deploy_canary(control_plane, namespace, spec)
    metrics = PrometheusAnswers()
    reconcile_once(backend, two_versions, namespace, "churn", 1000.0, provider=metrics)  # starts the rollout
    metrics.errors = 30.0
    first = reconcile_once(backend, two_versions, namespace, "churn", 1061.0, provider=metrics)
    assert first.action is Action.HOLD and first.state.failures == 1
    # A new process (new client, nothing in memory) reads the object and makes the next decision.
    restarted = KubernetesBackend(control_plane.api_client())
    second = reconcile_once(restarted, two_versions, namespace, "churn", 1122.0, provider=metrics)
    assert second.action is Action.ROLLBACK and "canary error rate 30.00%" in second.reason
    assert canary_percent(restarted.get(namespace, "churn")) == 0
    events = restarted.events(namespace, "churn")
    assert events[-1]["reason"] == "RolloutRollback" and events[-1]["type"] == "Warning"
    mlflow = registry.connect(two_versions)
    assert str(mlflow.get_model_version_by_alias("churn", "champion").version) == "1"
    assert mlflow.get_model_version("churn", "2").tags[TAG_ROLLOUT].startswith("rollback")


class RacingBackend(KubernetesBackend):
    """Someone else (a person with kubectl) changes the object between the loop's read and its write."""

    def apply(self, obj):
        other = client.CustomObjectsApi(self.api.api_client)
        meta = obj["metadata"]
        current = other.get_namespaced_custom_object(GROUP, VERSION, meta["namespace"], PLURAL, meta["name"])
        current["metadata"].setdefault("labels", {})["touched-by"] = "someone-else"
        other.replace_namespaced_custom_object(GROUP, VERSION, meta["namespace"], PLURAL, meta["name"], current)
        return super().apply(obj)


def test_a_concurrent_change_is_never_overwritten(control_plane, namespace, churn_spec, two_versions):
    spec = _spec(churn_spec, namespace)
    _deploy_canary(control_plane, namespace, spec)
    plain = KubernetesBackend(control_plane.api_client())
    metrics = PrometheusAnswers()
    reconcile_once(plain, two_versions, namespace, "churn", 1000.0, provider=metrics)
    racing = RacingBackend(control_plane.api_client())
    decision = reconcile_once(racing, two_versions, namespace, "churn", 1061.0, provider=metrics)
    assert decision.action is Action.HOLD and "changed since it was read" in decision.reason
    after = plain.get(namespace, "churn")
    assert after["metadata"]["labels"]["touched-by"] == "someone-else"  # their change stands
    assert canary_percent(after) == 10  # and the step was not written over it
    # The next reconcile reads the new object and steps.
    assert reconcile_once(plain, two_versions, namespace, "churn", 1062.0, provider=metrics).action is Action.STEP
