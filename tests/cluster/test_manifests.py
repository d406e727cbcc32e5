"""manifests/: each kustomize overlay renders, and a real kube-apiserver with KServe's CRDs accepts
everything it renders (server-side apply, dry run, strict field validation); the pipeline runner's RBAC
lets the deploy step's own code deploy in its model namespace and nowhere else; a broken object is
refused by the server."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest
import yaml

from serving.inference_service_view import serving_container
from tests.conftest import REPO
from tests.support.tools import run

MANIFESTS = REPO / "manifests"
ENVIRONMENTS = {
    # env: (model namespace, runner ServiceAccount, KServe mode of the example)
    "dev": ("models-dev", "shepherd-pipeline-runner-dev", "Knative"),
    "staging": ("models-staging", "shepherd-pipeline-runner-staging", "Standard"),
    "prod": ("models", "shepherd-pipeline-runner", "Standard"),
}
KFP_NAMESPACE = "kubeflow"


def run_kubectl(*args: str, kubeconfig: Path | None = None, stdin: str | None = None, check: bool = True):
    # kubectl (with its built-in kustomize) at the test apiserver's version, from scripts/go-tools.sh.
    result = run("kubectl", *args, stdin=stdin, env={"KUBECONFIG": str(kubeconfig)} if kubeconfig else None)
    if check and result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


@cache
def rendered(env: str) -> str:
    # The examples are generated into manifests/examples/, outside the components that include them.
    return run_kubectl("kustomize", "--load-restrictor=LoadRestrictionsNone", str(MANIFESTS / "overlays" / env)).stdout


def objects(env: str) -> list[dict]:
    return [o for o in yaml.safe_load_all(rendered(env)) if o]


def find(objs: list[dict], kind: str, name: str | None = None) -> dict:
    matches = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


# --------------------------------------------------------------------------------------------------
# Rendering (kustomize only, no server)
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_overlay_renders_its_environment(env):
    model_ns, runner, mode = ENVIRONMENTS[env]
    objs = objects(env)
    kinds = sorted(o["kind"] for o in objs)
    assert set(kinds) >= {"Namespace", "ConfigMap", "ServingRuntime", "ClusterStorageContainer", "InferenceService"}
    assert set(kinds) >= {"ServiceAccount", "Role", "RoleBinding"}
    assert "Secret" not in kinds
    for obj in objs:
        assert obj["metadata"]["labels"]["shepherd.io/environment"] == env
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] in (model_ns, KFP_NAMESPACE), obj["metadata"]

    namespace = find(objs, "Namespace")
    assert namespace["metadata"]["name"] == model_ns
    for mode_label in ("enforce", "audit", "warn"):
        assert namespace["metadata"]["labels"][f"pod-security.kubernetes.io/{mode_label}"] == "restricted"

    assert find(objs, "ServiceAccount")["metadata"] == {
        "name": runner,
        "namespace": KFP_NAMESPACE,
        "labels": {"app.kubernetes.io/part-of": "shepherd", "shepherd.io/environment": env},
    }
    isvc = find(objs, "InferenceService", "churn")
    assert isvc["metadata"]["namespace"] == model_ns
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == mode
    tracking = find(objs, "ConfigMap", "shepherd-serving")["data"]["MLFLOW_TRACKING_URI"]
    assert tracking.startswith("http://shepherd-mlflow.")


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_runner_rbac_is_least_privilege(env):
    model_ns, runner, _ = ENVIRONMENTS[env]
    objs = objects(env)
    roles = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in objs if o["kind"] == "Role"}
    assert not [o for o in objs if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    deployer = roles[(model_ns, "shepherd-inferenceservice-deployer")]
    assert deployer["rules"] == [
        {
            "apiGroups": ["serving.kserve.io"],
            "resources": ["inferenceservices"],
            "verbs": ["get", "create", "update", "patch"],
        }
    ]
    for role in roles.values():
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
            assert "secrets" not in rule["resources"], rule
    for binding in (o for o in objs if o["kind"] == "RoleBinding"):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": runner, "namespace": KFP_NAMESPACE}]


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_rollout_settings_are_a_valid_policy_and_start_at_its_first_step(env):
    from components.spec import Deployment

    isvc = find(objects(env), "InferenceService", "churn")
    policy = json.loads(isvc["metadata"]["annotations"]["shepherd.io/rollout-policy"])
    # The same validation as a spec file's `deployment:` section (steps rise to 100, known gates, ...).
    Deployment(
        canary_steps=policy["steps"],
        interval_seconds=policy["intervalSeconds"],
        failure_limit=policy["failureLimit"],
        min_requests=policy["minRequests"],
        manual_approval=policy["manualApproval"],
        gates=policy["gates"],
    )
    spec = isvc["spec"]
    canary = spec["predictor"]["canaryTrafficPercent"] if "canary" not in spec else spec["canary"][0]["trafficPercent"]
    assert canary == policy["steps"][0]


def test_prod_is_stricter_than_staging_and_dev():
    def settings(env):
        objs = objects(env)
        isvc = find(objs, "InferenceService", "churn")
        policy = json.loads(isvc["metadata"]["annotations"]["shepherd.io/rollout-policy"])
        return {
            "first_step": policy["steps"][0],
            "interval": policy["intervalSeconds"],
            "failures": policy["failureLimit"],
            "min_requests": policy["minRequests"],
            "max_error_rate": policy["gates"]["error_rate"]["max"],
            "min_replicas": isvc["spec"]["predictor"]["minReplicas"],
            "approval": policy["manualApproval"],
            "quota": any(o["kind"] == "ResourceQuota" for o in objs),
        }

    dev, staging, prod = settings("dev"), settings("staging"), settings("prod")
    assert prod["first_step"] < staging["first_step"] < dev["first_step"]
    assert prod["interval"] > staging["interval"] > dev["interval"]
    assert prod["failures"] <= staging["failures"] <= dev["failures"]
    assert prod["min_requests"] > staging["min_requests"] > dev["min_requests"]
    assert prod["max_error_rate"] < staging["max_error_rate"] < dev["max_error_rate"]
    assert prod["min_replicas"] >= 2 and dev["min_replicas"] == 0  # prod survives a node drain; dev scales to zero
    assert prod["approval"] and not staging["approval"] and not dev["approval"]
    assert prod["quota"] and not staging["quota"] and not dev["quota"]


def test_serving_runtime_runs_the_predictor_of_the_examples():
    """The generated InferenceServices run on this runtime: its command, the same image and hardening."""
    for env in ENVIRONMENTS:
        objs = objects(env)
        runtime = find(objs, "ServingRuntime", "shepherd")["spec"]["containers"][0]
        example = serving_container(find(objs, "InferenceService", "churn")["spec"]["predictor"])
        assert example["runtime"] == "shepherd" and example["modelFormat"]["name"] == "shepherd"
        assert runtime["image"] == example["image"]
        assert runtime["command"] == ["python", "-m", "serving.predictor"]
        assert runtime["securityContext"] == example["securityContext"]
        assert {"--model_name={{.Name}}", "--http_port=8080"} <= set(runtime["args"])
        # KServe runs the storage container for the examples' `models:/` URIs: the same image, hardened alike.
        storage = find(objs, "ClusterStorageContainer", "shepherd-models")["spec"]
        assert example["storageUri"].startswith(storage["supportedUriFormats"][0]["prefix"])
        assert storage["container"]["image"] == example["image"]
        assert storage["container"]["command"] == ["python", "-m", "serving.model_check"]
        assert storage["container"]["securityContext"] == example["securityContext"]


# --------------------------------------------------------------------------------------------------
# Against the real kube-apiserver
# --------------------------------------------------------------------------------------------------
def _apply_for_real(control_plane, objs: list[dict]) -> None:
    run_kubectl(
        "apply",
        "--server-side",
        "--field-manager=shepherd-tests",
        "-f",
        "-",
        kubeconfig=control_plane.kubeconfig,
        stdin=yaml.safe_dump_all(objs),
    )


def _apply_namespaces(control_plane, env: str) -> None:
    """Namespaces are created for real (a dry run cannot put objects into a namespace it only pretends
    to create); KFP's namespace is a prerequisite of the overlays, as on a real cluster."""
    namespaces = [o for o in objects(env) if o["kind"] == "Namespace"]
    namespaces.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": KFP_NAMESPACE}})
    _apply_for_real(control_plane, namespaces)


def _apply_runner_rbac(control_plane, env: str) -> None:
    _apply_namespaces(control_plane, env)
    _apply_for_real(control_plane, [o for o in objects(env) if o["kind"] in ("ServiceAccount", "Role", "RoleBinding")])


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_overlay_passes_server_side_dry_run(control_plane, env):
    _apply_namespaces(control_plane, env)
    result = run_kubectl(
        "apply",
        "--server-side",
        "--dry-run=server",
        "--field-manager=shepherd-tests",
        "-f",
        "-",
        kubeconfig=control_plane.kubeconfig,
        stdin=rendered(env),
    )
    applied = [line for line in result.stdout.splitlines() if line.endswith("serverside-applied (server dry run)")]
    assert len(applied) == len(objects(env)), result.stdout
    assert "inferenceservice.serving.kserve.io/churn" in result.stdout
    assert "servingruntime.serving.kserve.io/shepherd" in result.stdout


@pytest.mark.parametrize(
    ("kind", "name", "breakage", "named_field"),
    [
        # A misspelt field is an error, not silently dropped (strict field validation).
        ("InferenceService", "churn", lambda o: o["spec"]["predictor"].update(minReplica=2), "minReplica"),
        # The CRD's schema: a canary takes at most 100 % of the traffic.
        ("InferenceService", "churn", lambda o: o["spec"]["canary"][0].update(trafficPercent=150), "trafficPercent"),
        # A ServingRuntime must say which containers it runs.
        ("ServingRuntime", "shepherd", lambda o: o["spec"].pop("containers"), "containers"),
        # Built-in RBAC validation: a rule grants at least one verb.
        ("Role", "shepherd-inferenceservice-deployer", lambda o: o["rules"][0].update(verbs=[]), "verbs"),
    ],
    ids=["unknown-field", "traffic-over-100", "runtime-without-containers", "rule-without-verbs"],
)
def test_a_broken_object_is_refused(control_plane, kind, name, breakage, named_field):
    _apply_namespaces(control_plane, "prod")
    objs = objects("prod")
    breakage(find(objs, kind, name))
    manifest = yaml.safe_dump_all(objs)
    result = run_kubectl(
        "apply",
        "--server-side",
        "--dry-run=server",
        "--field-manager=shepherd-tests",
        "-f",
        "-",
        kubeconfig=control_plane.kubeconfig,
        stdin=manifest,
        check=False,
    )
    assert result.returncode != 0, result.stdout
    assert named_field in result.stderr, result.stderr


def _impersonating(control_plane, user: str):
    """An API client that acts as `user` (the admin may impersonate; RBAC judges the impersonated user)."""
    api_client = control_plane.api_client()
    api_client.set_default_header("Impersonate-User", user)
    return api_client


def test_runner_may_deploy_with_the_deploy_steps_code_only_in_its_namespace(control_plane, churn_spec):
    """Apply prod's and dev's RBAC for real, then run serving.backends.KubernetesBackend (the code the
    deploy step runs) as each runner: it deploys and steps a canary in its own namespace, and is
    refused in the other environment's namespace."""
    from kubernetes import client

    from serving.backends import KubernetesBackend, ServingError
    from serving.inference_service import build_inference_service

    for env in ("prod", "dev"):
        _apply_runner_rbac(control_plane, env)

    def spec_in(namespace):
        return churn_spec.model_copy(
            update={"deployment": churn_spec.deployment.model_copy(update={"namespace": namespace})}
        )

    prod_runner = f"system:serviceaccount:{KFP_NAMESPACE}:shepherd-pipeline-runner"
    backend = KubernetesBackend(_impersonating(control_plane, prod_runner))
    created = backend.apply(build_inference_service(spec_in("models"), "1"))  # get (404) + create
    assert created["metadata"]["namespace"] == "models"
    stepped = backend.apply(build_inference_service(spec_in("models"), "2", champion_version="1", canary_percent=5))
    assert stepped["spec"]["canary"][0]["trafficPercent"] == 5  # get + update

    with pytest.raises(ServingError, match="403"):
        backend.apply(build_inference_service(spec_in("models-dev"), "1"))
    with pytest.raises(client.ApiException) as refused:
        client.CustomObjectsApi(_impersonating(control_plane, prod_runner)).delete_namespaced_custom_object(
            "serving.kserve.io", "v1beta1", "models", "inferenceservices", "churn"
        )
    assert refused.value.status == 403
    with pytest.raises(client.ApiException) as refused:
        client.CoreV1Api(_impersonating(control_plane, prod_runner)).list_namespaced_secret("models")
    assert refused.value.status == 403

    dev_runner = f"system:serviceaccount:{KFP_NAMESPACE}:shepherd-pipeline-runner-dev"
    with pytest.raises(ServingError, match="403"):
        KubernetesBackend(_impersonating(control_plane, dev_runner)).apply(
            build_inference_service(spec_in("models"), "3")
        )


@pytest.mark.parametrize(
    ("verb", "group", "resource", "namespace", "allowed"),
    [
        ("create", "serving.kserve.io", "inferenceservices", "models", True),
        ("patch", "serving.kserve.io", "inferenceservices", "models", True),
        ("delete", "serving.kserve.io", "inferenceservices", "models", False),
        ("list", "serving.kserve.io", "inferenceservices", "models", False),
        ("create", "serving.kserve.io", "inferenceservices", "default", False),
        ("update", "serving.kserve.io", "servingruntimes", "models", False),
        ("get", "", "secrets", "models", False),
        ("get", "", "secrets", KFP_NAMESPACE, False),
        # Argo's executor reports step outputs; nothing else in KFP's namespace.
        ("create", "argoproj.io", "workflowtaskresults", KFP_NAMESPACE, True),
        ("create", "", "pods", KFP_NAMESPACE, False),
    ],
)
def test_runner_permissions_as_the_authorizer_reports_them(control_plane, verb, group, resource, namespace, allowed):
    """A SubjectAccessReview asks the apiserver's RBAC authorizer itself (no CRD needs to exist)."""
    from kubernetes import client

    _apply_runner_rbac(control_plane, "prod")
    review = client.AuthorizationV1Api(control_plane.api_client()).create_subject_access_review(
        client.V1SubjectAccessReview(
            spec=client.V1SubjectAccessReviewSpec(
                user=f"system:serviceaccount:{KFP_NAMESPACE}:shepherd-pipeline-runner",
                groups=["system:serviceaccounts", f"system:serviceaccounts:{KFP_NAMESPACE}", "system:authenticated"],
                resource_attributes=client.V1ResourceAttributes(
                    verb=verb, group=group, resource=resource, namespace=namespace
                ),
            )
        )
    )
    assert review.status.allowed is allowed, review.status
