"""helm/shepherd against real tools: `helm lint --strict`, every ci/ scenario rendered and accepted by a
real kube-apiserver (server-side apply, dry run, strict field validation, with KServe's and
prometheus-operator's CRDs), broken values refused by the schema and broken objects by the server,
hardened pods, the monitoring objects wired to the webhook, and checkov on the rendered manifests."""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid

import pytest
import yaml

from tests.conftest import REPO
from tests.support import tools

CHART = REPO / "helm" / "shepherd"
SCENARIOS = sorted(p.name.removesuffix("-values.yaml") for p in (CHART / "ci").glob("*-values.yaml"))
RELEASE = "shepherd"
COMPONENTS = {"controller", "drift", "webhook"}
MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule", "AlertmanagerConfig"}


def helm(*args: str, kubeconfig=None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {"KUBECONFIG": str(kubeconfig)} if kubeconfig else {"KUBECONFIG": os.devnull}
    return tools.run("helm", *args, env=env, timeout=timeout)


def render(scenario: str, namespace: str = "shepherd", model_namespace: str = "models", *extra: str) -> str:
    """`helm template` of one ci/ scenario; raises with helm's message if it fails."""
    result = helm(
        "template",
        RELEASE,
        str(CHART),
        "--namespace",
        namespace,
        "--values",
        str(CHART / "ci" / f"{scenario}-values.yaml"),
        "--set",
        f"modelNamespace={model_namespace}",
        *extra,
    )
    if result.returncode != 0:
        raise AssertionError(f"helm template {scenario} failed:\n{result.stderr}")
    return result.stdout


def documents(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def kubectl(control_plane, *args: str, stdin: str | None = None):
    return tools.run("kubectl", *args, stdin=stdin, env={"KUBECONFIG": str(control_plane.kubeconfig)}, timeout=120)


def create_namespaces(control_plane, *prefixes: str) -> list[str]:
    from kubernetes import client

    core = client.CoreV1Api(control_plane.api_client())
    names = [f"{prefix}-{uuid.uuid4().hex[:8]}" for prefix in prefixes]
    for name in names:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    return names


def server_dry_run(control_plane, manifest: str):
    """Server-side apply, dry run: the server validates built-in and CRD schemas strictly."""
    return kubectl(
        control_plane,
        "apply",
        "--server-side",
        "--dry-run=server",
        "--field-manager=shepherd-chart-test",
        "--validate=strict",
        "-f",
        "-",
        stdin=manifest,
    )


# ---- helm itself --------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_lint_strict_is_clean(scenario):
    result = helm("lint", "--strict", str(CHART), "--values", str(CHART / "ci" / f"{scenario}-values.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert not re.search(r"\[(WARNING|ERROR)\]", result.stdout), result.stdout


def test_the_ci_scenarios_are_the_promised_ones():
    assert {"default", "minimal", "full"} <= set(SCENARIOS)


@pytest.mark.parametrize(
    ("setting", "field"),
    [
        ("controller.intervalSeconds=soon", "/controller/intervalSeconds"),
        ("controller.replicas=2", "/controller/replicas"),
        ("image.tag=latest", "/image/tag"),
        ("modelNamespace=Models_Prod", "/modelNamespace"),
        ("monitoring.interval=5 seconds", "/monitoring/interval"),
        ("mlflow.enabled=yes", "/mlflow/enabled"),
        ("controller.resources.limits.cpu=lots", "/controller/resources/limits/cpu"),
        ("controler.replicas=1", "controler"),  # a typo is refused, not silently ignored
    ],
)
def test_schema_refuses_wrong_values(setting, field):
    result = helm("template", RELEASE, str(CHART), "--set-string" if "=yes" in setting else "--set", setting)
    assert result.returncode != 0, f"{setting} was accepted"
    assert "schema" in result.stderr and field in result.stderr, result.stderr


def test_required_values_are_named_when_missing():
    result = helm("template", RELEASE, str(CHART), "--set", "mlflow.externalUrl=")
    assert result.returncode != 0
    assert "mlflow.externalUrl is required" in result.stderr


# ---- the real kube-apiserver accepts every scenario and refuses broken objects -------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario_is_accepted_by_the_apiserver(control_plane, scenario):
    release_ns, model_ns = create_namespaces(control_plane, "shepherd", "models")
    manifest = render(scenario, release_ns, model_ns)
    docs = documents(manifest)
    result = server_dry_run(control_plane, manifest)
    assert result.returncode == 0, result.stderr
    applied = [line for line in result.stdout.splitlines() if "serverside-applied (server dry run)" in line]
    assert len(applied) == len(docs), result.stdout

    kinds = {d["kind"] for d in docs}
    assert not {k for k in kinds if k.startswith("Cluster")}, "nothing cluster-wide"
    if scenario == "minimal":
        assert not kinds & (MONITORING_KINDS | {"NetworkPolicy", "ConfigMap"}), kinds
    else:
        assert kinds >= MONITORING_KINDS | {"NetworkPolicy", "ConfigMap"}, kinds
    deployments = {d["metadata"]["labels"]["app.kubernetes.io/component"] for d in docs if d["kind"] == "Deployment"}
    assert deployments == (COMPONENTS | {"mlflow"} if scenario == "full" else COMPONENTS)
    assert {d["metadata"]["namespace"] for d in docs if d["kind"] not in {"Role", "RoleBinding"}} == {release_ns}
    assert {d["metadata"]["namespace"] for d in docs if d["kind"] in {"Role", "RoleBinding"}} == {model_ns}


def test_apiserver_refuses_an_invalid_label_the_schema_cannot_see(control_plane):
    release_ns, model_ns = create_namespaces(control_plane, "shepherd", "models")
    manifest = render("default", release_ns, model_ns, "--set-json", 'commonLabels={"team/ml/platform":"x"}')
    result = server_dry_run(control_plane, manifest)
    assert result.returncode != 0
    assert "metadata.labels" in result.stderr and "team/ml/platform" in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("kind", "break_it", "message"),
    [
        # A field Kubernetes does not know (strict field validation), in a built-in kind.
        ("Deployment", lambda d: d["spec"]["template"]["spec"]["containers"][0].update(resourcez={}), "resourcez"),
        # A value the built-in schema refuses.
        ("Service", lambda d: d["spec"]["ports"][0].update(port=70000), "spec.ports[0].port"),
        # prometheus-operator's CRD schema: an enum and an unknown field.
        (
            "PodMonitor",
            lambda d: d["spec"]["podMetricsEndpoints"][0]["relabelings"][0].update(action="explode"),
            "explode",
        ),
        ("AlertmanagerConfig", lambda d: d["spec"]["route"].update(groupByy=["model"]), "groupByy"),
    ],
)
def test_apiserver_refuses_a_broken_object(control_plane, kind, break_it, message):
    release_ns, model_ns = create_namespaces(control_plane, "shepherd", "models")
    docs = documents(render("default", release_ns, model_ns))
    assert server_dry_run(control_plane, yaml.safe_dump_all(docs)).returncode == 0  # intact, it is accepted
    target = next(d for d in docs if d["kind"] == kind)
    break_it(target)
    result = server_dry_run(control_plane, yaml.safe_dump_all(docs))
    assert result.returncode != 0, f"the broken {kind} was accepted"
    assert message in result.stderr, result.stderr


def test_notes_tell_what_to_do_next_and_never_print_the_token(control_plane):
    release_ns, model_ns = create_namespaces(control_plane, "shepherd", "models")
    token = f"tok-{uuid.uuid4().hex}"
    result = helm(
        "install",
        RELEASE,
        str(CHART),
        "--dry-run=client",
        "--namespace",
        release_ns,
        "--set",
        f"modelNamespace={model_ns},webhook.token.value={token}",
        kubeconfig=control_plane.kubeconfig,
    )
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    assert token not in notes
    assert f"url: http://{RELEASE}-drift.{release_ns}.svc:8080/" in notes  # the payload logger target
    assert f"deployment/{RELEASE}-controller" in notes
    assert "alertmanagerConfigMatcherStrategy" in notes and "grafana_dashboard=1" in notes


# ---- what the rendered objects promise ----------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_pod_is_hardened_and_runs_the_one_image(scenario):
    image = yaml.safe_load((CHART / "values.yaml").read_text())["image"]  # == PLATFORM_IMAGE (tests/unit)
    values = yaml.safe_load((CHART / "ci" / f"{scenario}-values.yaml").read_text()) or {}
    digest = values.get("image", {}).get("digest")
    expected_image = f"{image['repository']}:{image['tag']}" + (f"@{digest}" if digest else "")
    docs = documents(render(scenario))
    for name, deployment in by_kind(docs, "Deployment").items():
        component = deployment["metadata"]["labels"]["app.kubernetes.io/component"]
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["image"] == expected_image, name
        assert container["imagePullPolicy"] == "IfNotPresent"
        assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, name
        assert sc["capabilities"] == {"drop": ["ALL"]} and sc["runAsNonRoot"] is True, name
        assert {"requests", "limits"} <= container["resources"].keys(), name
        health = "/health" if component == "mlflow" else "/healthz"
        assert container["livenessProbe"]["httpGet"]["path"] == health
        assert container["readinessProbe"]["httpGet"]["path"] == health
        tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
        assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == tmp["name"])
        # Only the components that call the Kubernetes API get a token.
        assert pod["automountServiceAccountToken"] is (component in {"controller", "webhook"}), name
        env = {e["name"]: e for e in container.get("env", [])}
        if component != "mlflow":
            assert env["MLFLOW_TRACKING_URI"]["value"].startswith("http")


def test_components_run_the_commands_the_code_defines():
    docs = documents(render("full", "shepherd", "models"))
    pods = {
        d["metadata"]["labels"]["app.kubernetes.io/component"]: d["spec"]["template"]["spec"]
        for d in docs
        if d["kind"] == "Deployment"
    }
    command = {c: " ".join(p["containers"][0]["command"]) for c, p in pods.items()}
    assert command["controller"].startswith("shepherd rollout controller --backend=kubernetes --namespace=models")
    assert "--metrics=prometheus --prometheus-url=http://" in command["controller"]
    assert "--port=8080" in command["controller"]
    assert command["drift"].startswith("python -m monitoring.drift --host=0.0.0.0 --port=8080")
    assert command["webhook"].startswith("python -m monitoring.webhook --host=0.0.0.0 --port=8080")
    assert command["mlflow"].startswith("mlflow server --host=0.0.0.0 --port=5000")
    mlflow_uri = "http://shepherd-mlflow.shepherd.svc:5000"
    for component in ("controller", "drift", "webhook"):
        env = {e["name"]: e for e in pods[component]["containers"][0]["env"]}
        assert env["MLFLOW_TRACKING_URI"]["value"] == mlflow_uri
    webhook_env = {e["name"]: e for e in pods["webhook"]["containers"][0]["env"]}
    assert webhook_env["SHEPHERD_NAMESPACE"]["value"] == "models"
    assert webhook_env["SHEPHERD_KFP_HOST"]["value"] == "http://ml-pipeline.kubeflow.svc:8888"
    assert webhook_env["SHEPHERD_FEATURE_REPO"]["value"] == "postgresql://feast@feast-db.data.svc:5432/feast"
    # The token is a mounted file from the user's Secret, never a plain value in the pod spec.
    assert "SHEPHERD_WEBHOOK_TOKEN" not in webhook_env
    assert "--token-file=/etc/shepherd/webhook/token" in command["webhook"]
    token_volume = next(v for v in pods["webhook"]["volumes"] if v["name"] == "webhook-token")
    assert token_volume["secret"]["secretName"] == "shepherd-alert-token"
    assert token_volume["secret"]["items"] == [{"key": "bearer", "path": "token"}]
    mlflow_env = {e["name"]: e for e in pods["mlflow"]["containers"][0]["env"]}
    assert mlflow_env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"] == {
        "name": "shepherd-mlflow-db",
        "key": "uri",
    }


def test_webhook_token_secret_is_created_only_without_an_existing_one():
    default = documents(render("default"))
    (secret,) = by_kind(default, "Secret").values()
    assert len(secret["data"]["token"]) > 40  # generated, random
    chosen = documents(render("default", "shepherd", "models", "--set", "webhook.token.value=s3cret"))
    assert by_kind(chosen, "Secret")["shepherd-webhook-token"]["data"]["token"] == "czNjcmV0"  # base64
    assert not by_kind(documents(render("full")), "Secret")


def test_with_a_shared_feature_store_the_drift_service_takes_feedback_behind_a_token():
    """webhook.featureRepo (PostgreSQL) holds the outcome ledger too: the drift service is given it, its
    feedback token (the chart's generated Secret, or an existing one), and the peers that may post labels."""
    full = documents(render("full", "shepherd", "models"))
    drift = by_kind(full, "Deployment")["shepherd-drift"]["spec"]["template"]["spec"]
    (container,) = drift["containers"]
    assert "--feedback-token-file=/etc/shepherd/feedback/token" in container["command"]
    assert "--quality-window=2000" in container["command"]
    assert "--unlabelled-retention-days=14" in container["command"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["SHEPHERD_FEATURE_REPO"] == "postgresql://feast@feast-db.data.svc:5432/feast"
    (volume,) = [v for v in drift["volumes"] if v["name"] == "feedback-token"]
    assert volume["secret"]["secretName"] == "shepherd-feedback-token"
    assert volume["secret"]["items"] == [{"key": "bearer", "path": "token"}]
    policy = by_kind(full, "NetworkPolicy")["shepherd-drift"]["spec"]["ingress"][0]["from"]
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "labelling"}}} in policy

    generated = documents(render("default", "shepherd", "models", "--set", "webhook.featureRepo=postgresql://u@db/f"))
    assert len(by_kind(generated, "Secret")["shepherd-drift-feedback-token"]["data"]["token"]) > 40
    plain = by_kind(documents(render("default")), "Deployment")["shepherd-drift"]["spec"]["template"]["spec"]
    assert not any("feedback" in arg for arg in plain["containers"][0]["command"])  # no store: no feedback


def test_monitoring_objects_are_wired_to_the_webhook_and_the_generated_files():
    docs = documents(render("full", "shepherd", "models"))
    (rule,) = by_kind(docs, "PrometheusRule").values()
    assert rule["spec"] == yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text())

    (route_config,) = by_kind(docs, "AlertmanagerConfig").values()
    route = route_config["spec"]["route"]
    assert route["matchers"] == [{"name": "shepherd_action", "matchType": "=~", "value": "rollback|retrain"}]
    assert route["groupBy"] == ["alertname", "model"]
    (receiver,) = route_config["spec"]["receivers"]
    assert receiver["name"] == route["receiver"]
    (hook,) = receiver["webhookConfigs"]
    assert hook["url"] == "http://shepherd-webhook.shepherd.svc:8080/alerts"
    assert hook["httpConfig"]["authorization"]["credentials"] == {"name": "shepherd-alert-token", "key": "bearer"}
    # The URL names the webhook's real Service and port.
    service = by_kind(docs, "Service")["shepherd-webhook"]
    assert service["spec"]["ports"][0]["port"] == 8080

    (monitor,) = by_kind(docs, "ServiceMonitor").values()
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    expression = monitor["spec"]["selector"]["matchExpressions"][0]
    assert set(expression["values"]) == COMPONENTS
    assert {e["port"] for e in monitor["spec"]["endpoints"]} == {"http"}
    (pods,) = by_kind(docs, "PodMonitor").values()
    assert pods["spec"]["namespaceSelector"] == {"matchNames": ["models"]}
    assert pods["spec"]["selector"]["matchExpressions"] == [
        {"key": "serving.kserve.io/inferenceservice", "operator": "Exists"}
    ]

    dashboards = sorted((CHART / "files" / "dashboards").glob("*.json"))
    assert dashboards, "files/dashboards/*.json is empty"
    configmaps = by_kind(docs, "ConfigMap")
    assert len(configmaps) == len(dashboards)
    for path in dashboards:
        (configmap,) = (c for c in configmaps.values() if path.name in c["data"])
        assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert configmap["metadata"]["annotations"]["grafana_folder"] == "ML Platform"
        assert json.loads(configmap["data"][path.name]) == json.loads(path.read_text())


def test_predictor_scrape_is_what_the_rules_expect():
    from monitoring.rules import PREDICTOR_JOB_REGEX, SCRAPE_INTERVAL

    docs = documents(render("default", "shepherd", "models"))
    (monitor,) = by_kind(docs, "PodMonitor").values()
    # prometheus-operator names the job `<namespace>/<PodMonitor name>` unless jobLabel overrides it.
    assert "jobLabel" not in monitor["spec"]
    assert re.fullmatch(PREDICTOR_JOB_REGEX, f"{monitor['metadata']['namespace']}/{monitor['metadata']['name']}")
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["honorLabels"] is True and endpoint["interval"] == SCRAPE_INTERVAL
    relabel = {r.get("targetLabel"): r for r in endpoint["relabelings"]}
    assert relabel["__address__"]["replacement"] == "$1:8080"
    assert relabel["model"]["sourceLabels"] == ["__meta_kubernetes_pod_label_serving_kserve_io_inferenceservice"]


def test_alert_route_is_the_one_monitoring_alertmanager_writes():
    """The chart's AlertmanagerConfig and `python -m monitoring.alertmanager` (installs without the
    operator, and the e2e tests) route the same alerts the same way."""
    from monitoring.alertmanager import config

    plain = config("http://webhook/alerts", "/token")
    (route,) = plain["route"]["routes"]
    (receiver,) = [r for r in plain["receivers"] if r["name"] == route["receiver"]]
    (hook,) = receiver["webhook_configs"]
    (inhibit,) = plain["inhibit_rules"]

    (chart,) = by_kind(documents(render("default", "shepherd", "models")), "AlertmanagerConfig").values()
    chart_route = chart["spec"]["route"]
    assert chart_route["receiver"] == route["receiver"]
    assert chart_route["groupBy"] == route["group_by"]
    timing = ("group_wait", "groupWait"), ("group_interval", "groupInterval"), ("repeat_interval", "repeatInterval")
    assert {snake: chart_route[camel] for snake, camel in timing} == {snake: route[snake] for snake, _ in timing}
    (matcher,) = chart_route["matchers"]
    assert route["matchers"] == [f'{matcher["name"]}{matcher["matchType"]}"{matcher["value"]}"']
    (chart_hook,) = chart["spec"]["receivers"][0]["webhookConfigs"]
    assert chart_hook["sendResolved"] is hook["send_resolved"]
    assert chart_hook["httpConfig"]["authorization"]["type"] == hook["http_config"]["authorization"]["type"]
    (chart_inhibit,) = chart["spec"]["inhibitRules"]
    assert [f'{m["name"]}="{m["value"]}"' for m in chart_inhibit["sourceMatch"]] == inhibit["source_matchers"]
    assert [f'{m["name"]}="{m["value"]}"' for m in chart_inhibit["targetMatch"]] == inhibit["target_matchers"]
    assert chart_inhibit["equal"] == inhibit["equal"]


def test_network_policies_admit_only_the_documented_peers():
    docs = documents(render("full", "shepherd", "models"))
    policies = by_kind(docs, "NetworkPolicy")
    deny = policies["shepherd-default-deny"]
    assert deny["spec"]["policyTypes"] == ["Ingress"] and "ingress" not in deny["spec"]
    assert deny["spec"]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "shepherd",
        "app.kubernetes.io/instance": RELEASE,
    }

    def peers(component):
        (rule,) = policies[f"shepherd-{component}"]["spec"]["ingress"]
        assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
        return [(p.get("namespaceSelector", {}).get("matchLabels"), p.get("podSelector", {})) for p in rule["from"]]

    monitoring = {"kubernetes.io/metadata.name": "monitoring"}
    prometheus = (monitoring, {"matchLabels": {"app.kubernetes.io/name": "prometheus"}})
    alertmanager = (monitoring, {"matchLabels": {"app.kubernetes.io/name": "alertmanager"}})
    models = ({"kubernetes.io/metadata.name": "models"}, {})
    assert peers("controller") == [prometheus]
    assert peers("drift") == [prometheus, models, ({"kubernetes.io/metadata.name": "labelling"}, {})]  # feedback
    assert peers("webhook") == [prometheus, alertmanager]
    assert models in peers("mlflow")


# ---- every value documented ---------------------------------------------------------------------


def _value_keys(text: str) -> list[tuple[str, bool, bool]]:
    """(dotted key, has its own `# --` comment, documented by a parent's) for every key of values.yaml,
    as helm-docs reads them: a `# --` comment block directly above a key documents it and everything
    under it."""
    keys, stack, comment = [], [], False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            comment = True
            continue
        if stripped.startswith("#"):
            continue
        match = re.match(r"^( *)([A-Za-z0-9_-]+):", line)
        if not match:
            if not stripped:
                comment = False
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        inherited = any(own or parent for _, _, own, parent in stack)
        stack.append((indent, match.group(2), comment, inherited))
        keys.append((".".join(k for _, k, _, _ in stack), comment, inherited))
        comment = False
    return keys


def test_every_value_is_documented_in_values_and_readme():
    values_text = (CHART / "values.yaml").read_text()
    readme = (CHART / "README.md").read_text()
    keys = _value_keys(values_text)
    assert len(keys) > 60
    leaves = [k for k, _, _ in keys if not any(other.startswith(k + ".") for other, _, _ in keys)]
    undocumented = [k for k, own, inherited in keys if k in leaves and not (own or inherited)]
    assert not undocumented, f"values without a `# --` comment: {undocumented}"
    documented = [k for k, own, _ in keys if own]
    missing = [k for k in documented if f"`{k}`" not in readme]
    assert not missing, f"values missing from helm/shepherd/README.md's table: {missing}"
    # And the table lists nothing that values.yaml does not have.
    listed = set(re.findall(r"^\| `([A-Za-z0-9_.-]+)` \|", readme, flags=re.MULTILINE))
    assert listed == set(documented), sorted(listed ^ set(documented))


# ---- checkov ------------------------------------------------------------------------------------

# Failures a scenario is allowed by design: minimal turns NetworkPolicies off (networkPolicy.enabled=false).
ALLOWED_FAILURES = {"minimal": {"CKV2_K8S_6"}}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_checkov_finds_nothing_unwaived(tmp_path, scenario):
    manifest = tmp_path / f"{scenario}.yaml"
    manifest.write_text(render(scenario))
    result = tools.run(
        "checkov",
        "--file",
        str(manifest),
        "--framework",
        "kubernetes",
        "--output",
        "json",
        "--skip-download",
        env={"BC_SKIP_MAPPING": "TRUE", "LOG_LEVEL": "WARNING"},
        timeout=300,
        cwd=tmp_path,
    )
    report = json.loads(result.stdout)
    report = report[0] if isinstance(report, list) else report
    assert report["summary"]["parsing_errors"] == 0
    assert report["summary"]["passed"] > 50  # it really checked the objects
    failed = sorted({(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]})
    unexpected = [f for f in failed if f[0] not in ALLOWED_FAILURES.get(scenario, set())]
    assert not unexpected, f"checkov failures: {unexpected}"
    # Every waiver names its reason in the chart (checkov.io/skipN annotations).
    for skipped in report["results"]["skipped_checks"]:
        assert len(skipped["check_result"].get("suppress_comment", "")) > 20, skipped
