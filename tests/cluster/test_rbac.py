"""The chart's RBAC, applied for real to a real kube-apiserver: SubjectAccessReviews prove what each
component's ServiceAccount may and may not do, and a token of the controller's ServiceAccount drives
Shepherd's own Kubernetes backend (allowed in the model namespace, refused everywhere else)."""

from __future__ import annotations

import pytest
import yaml

from tests.cluster.test_helm_chart import by_kind, create_namespaces, documents, kubectl, render

SERVING = "serving.kserve.io"


@pytest.fixture(scope="module")
def installed(control_plane):
    """The full scenario's ServiceAccounts, Roles and RoleBindings applied (not a dry run), in fresh
    release, model and unrelated namespaces."""
    release_ns, model_ns, other_ns = create_namespaces(control_plane, "shepherd", "models", "other")
    docs = documents(render("full", release_ns, model_ns))
    rbac = [d for d in docs if d["kind"] in {"ServiceAccount", "Role", "RoleBinding"}]
    result = kubectl(
        control_plane, "apply", "--server-side", "--field-manager=helm", "-f", "-", stdin=yaml.safe_dump_all(rbac)
    )
    assert result.returncode == 0, result.stderr
    accounts = {
        d["metadata"]["labels"]["app.kubernetes.io/component"]: d["metadata"]["name"]
        for d in docs
        if d["kind"] == "ServiceAccount"
    }
    assert set(accounts) == {"controller", "drift", "webhook", "mlflow"}
    return {"release": release_ns, "models": model_ns, "other": other_ns, "accounts": accounts}


def allowed(control_plane, installed, component, verb, resource, namespace="", group="", name="") -> bool:
    """Ask the API server (SubjectAccessReview) whether the component's ServiceAccount may do this, with
    the groups a real ServiceAccount token carries."""
    from kubernetes import client

    account = installed["accounts"][component]
    release = installed["release"]
    review = client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(
            user=f"system:serviceaccount:{release}:{account}",
            groups=["system:serviceaccounts", f"system:serviceaccounts:{release}", "system:authenticated"],
            resource_attributes=client.V1ResourceAttributes(
                verb=verb, resource=resource, group=group, namespace=namespace or None, name=name or None
            ),
        )
    )
    answer = client.AuthorizationV1Api(control_plane.api_client()).create_subject_access_review(review)
    return bool(answer.status.allowed)


def _check(control_plane, installed, component, cases, expected: bool):
    wrong = []
    for verb, resource, group, where in cases:
        namespace = installed[where] if where else ""
        if allowed(control_plane, installed, component, verb, resource, namespace, group) is not expected:
            wrong.append(f"{verb} {group or 'core'}/{resource} in {namespace or 'all namespaces'}")
    assert not wrong, f"{component} should {'' if expected else 'NOT '}be allowed: {wrong}"


# What no Shepherd component may ever do.
NEVER = [
    ("get", "secrets", "", "models"),
    ("list", "secrets", "", "models"),
    ("get", "secrets", "", "release"),  # not even its own token Secret: the kubelet mounts it
    ("list", "secrets", "", "release"),
    ("list", "secrets", "", ""),
    ("watch", "secrets", "", ""),
    ("delete", "namespaces", "", ""),
    ("create", "namespaces", "", ""),
    ("patch", "inferenceservices", SERVING, "other"),
    ("update", "inferenceservices", SERVING, "other"),
    ("get", "inferenceservices", SERVING, "other"),
    ("list", "inferenceservices", SERVING, ""),  # nothing cluster-wide
    ("delete", "inferenceservices", SERVING, "models"),
    ("create", "inferenceservices", SERVING, "models"),
    ("create", "events", "", "other"),
    ("create", "pods", "", "models"),
    ("create", "rolebindings", "rbac.authorization.k8s.io", "models"),
    ("escalate", "roles", "rbac.authorization.k8s.io", "models"),
    ("impersonate", "serviceaccounts", "", "models"),
    ("create", "serviceaccounts/token", "", "release"),
]


def test_controller_may_step_and_roll_back_canaries_in_the_model_namespace(control_plane, installed):
    cases = [(verb, "inferenceservices", SERVING, "models") for verb in ("get", "list", "watch", "update", "patch")]
    cases += [(verb, "events", group, "models") for verb in ("create", "patch") for group in ("", "events.k8s.io")]
    _check(control_plane, installed, "controller", cases, expected=True)


def test_controller_may_do_nothing_else(control_plane, installed):
    _check(control_plane, installed, "controller", NEVER, expected=False)


def test_webhook_may_roll_back_in_the_model_namespace_only(control_plane, installed):
    cases = [(verb, "inferenceservices", SERVING, "models") for verb in ("get", "update", "patch")]
    cases += [("create", "events", "", "models"), ("create", "events", "events.k8s.io", "models")]
    _check(control_plane, installed, "webhook", cases, expected=True)
    _check(control_plane, installed, "webhook", [*NEVER, ("list", "inferenceservices", SERVING, "models")], False)


@pytest.mark.parametrize("component", ["drift", "mlflow"])
def test_drift_and_mlflow_may_do_nothing(control_plane, installed, component):
    nothing = [
        *NEVER,
        ("get", "inferenceservices", SERVING, "models"),
        ("list", "inferenceservices", SERVING, "models"),
        ("create", "events", "", "models"),
        ("create", "events", "", "release"),
        ("list", "pods", "", "release"),
        ("get", "configmaps", "", "release"),
    ]
    _check(control_plane, installed, component, nothing, expected=False)


@pytest.mark.parametrize("scenario", ["default", "minimal", "full"])
def test_no_scenario_grants_anything_cluster_wide_or_on_secrets(scenario):
    docs = documents(render(scenario, "shepherd", "models"))
    assert not [d for d in docs if d["kind"] in {"ClusterRole", "ClusterRoleBinding"}]
    for role in by_kind(docs, "Role").values():
        assert role["metadata"]["namespace"] == "models"
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
            assert not {"secrets", "pods", "pods/exec", "serviceaccounts"} & set(rule["resources"]), rule
    for binding in by_kind(docs, "RoleBinding").values():
        assert binding["roleRef"]["kind"] == "Role"
        assert [s["namespace"] for s in binding["subjects"]] == ["shepherd"]


def _client_as(control_plane, installed, component):
    """An API client authenticated with a real token of the component's ServiceAccount (TokenRequest)."""
    from kubernetes import client

    admin = client.CoreV1Api(control_plane.api_client())
    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600))
    token = admin.create_namespaced_service_account_token(
        installed["accounts"][component], installed["release"], request
    ).status.token
    configuration = client.Configuration()
    configuration.host = control_plane.url
    configuration.ssl_ca_cert = str(control_plane.workdir / "pki" / "ca.crt")
    configuration.api_key = {"authorization": f"Bearer {token}"}
    return client.ApiClient(configuration)


def test_the_controllers_token_drives_the_real_backend_in_its_namespace_only(control_plane, installed, churn_spec):
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from components.spec import parse_spec
    from serving.backends import KubernetesBackend, ServingError
    from serving.inference_service import build_inference_service

    def spec_in(namespace):
        data = yaml.safe_load(churn_spec.to_yaml())
        data["deployment"]["namespace"] = namespace
        return parse_spec(yaml.safe_dump(data))

    # The objects exist (created by the deploy step, which has its own RBAC); the controller steps them.
    admin = KubernetesBackend(control_plane.api_client())
    for where in ("models", "other"):
        admin.apply(build_inference_service(spec_in(installed[where]), "1"))

    as_controller = KubernetesBackend(_client_as(control_plane, installed, "controller"))
    models = installed["models"]
    current = as_controller.get(models, "churn")
    assert current["metadata"]["name"] == "churn"  # the controller may read objects in its namespace
    stepped = build_inference_service(spec_in(models), "2", champion_version="1", canary_percent=10)
    stepped["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
    written = as_controller.apply(stepped)
    assert written["spec"]["canary"][0]["trafficPercent"] == 10
    as_controller.record_event(written, "CanaryStepped", "10 %")

    with pytest.raises(ServingError, match="403"):
        as_controller.get(installed["other"], "churn")
    core = client.CoreV1Api(as_controller.api.api_client)
    for call in (
        lambda: core.list_namespaced_secret(models),
        lambda: core.list_secret_for_all_namespaces(),
        lambda: core.delete_namespace(installed["other"]),
    ):
        with pytest.raises(ApiException) as refused:
            call()
        assert refused.value.status == 403
