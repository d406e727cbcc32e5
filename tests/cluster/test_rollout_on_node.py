"""A model's whole way to production on the real node, through what users run:

- `shepherd run`'s DAG (tests use `run_local`, the same call) with `serving_target=kubernetes`: its deploy step
  creates the InferenceService on this cluster (the champion); a challenger, trained, judged, registered and
  applied by the functions the DAG's steps call, joins it as the canary at 10 %; KServe runs both as the Shepherd
  image's predictor pods;
- the rollout controller is the chart's pod (tests.cluster.conftest.chart_release), reading its gates from a real
  Prometheus that scrapes the predictor pods as the chart's PodMonitor says (cluster_prometheus), while a client
  sends requests to each revision's Service in the canary's share (KServe 0.20 does not split traffic itself);
- the controller pod is killed mid-rollout: its Deployment's new pod resumes from the annotations, and the canary
  is promoted (KServe rolls the stable Deployment to the new version);
- `shepherd rollout fault` makes the next canary fail every request, and the controller pod rolls it back;
- `shepherd history` shows both rollouts from the cluster's events and the registry.

The model is named `telco` (the churn table again) so the registry's `churn` of the other cluster tests is left
alone.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time

import httpx
import pytest
import yaml

from components import registry
from components.deploy import apply_deployment
from components.spec import parse_spec
from pipelines.direct import train_and_register
from pipelines.local import run_local
from pipelines.settings import Settings
from serving.backends import KubernetesBackend
from serving.inference_service import build_inference_service
from serving.inference_service_view import InferenceServiceView, serving_container
from serving.traffic import instances
from tests.cluster.conftest import CHART_MODEL_NAMESPACE, RELEASE_NAMESPACE, pods_report
from tests.conftest import REPO
from tests.support.node import wait_rolled_out
from tests.support.waiting import wait_for

MODEL = "telco"
NAMESPACE = CHART_MODEL_NAMESPACE
CONTROLLER = "app.kubernetes.io/component=controller"


def _spec(churn_spec, interval_seconds: int = 6, **params):
    data = yaml.safe_load(churn_spec.to_yaml())
    data["name"] = MODEL
    data["training"]["params"].update(params)
    data["deployment"].update(
        namespace=NAMESPACE,
        canary_steps=[10, 50, 100],
        interval_seconds=interval_seconds,
        cpu="200m",  # the node has 2 CPUs, shared with the chart's pods and the rolling updates' surge pods
        failure_limit=1,
        min_requests=10,
        # Latency ratios of two pods on a shared 2-core machine are noise (the gate is proven in tests/e2e);
        # this story runs no payload logger, so no drift gates (KServe's agent posting to the drift service is
        # proven in test_kserve; the drift gates against a real Prometheus in tests/e2e).
        gates={"error_rate": {"max": 0.05}, "latency_p99_ratio": {"max": 5.0}},
    )
    return parse_spec(yaml.safe_dump(data))


class Traffic:
    """A client sending the table's rows to the champion's and the canary's Services, each in its share of the
    InferenceService's split (what a gateway would do with KServe's objects)."""

    def __init__(self, core, backend, rows: list):
        self.core, self.backend, self.rows = core, backend, rows
        self.stop = threading.Event()
        self.answers: dict[str, int] = {}
        self.thread = threading.Thread(target=self._send, daemon=True)

    def _address(self, deployment: str) -> str | None:
        try:
            return self.core.read_namespaced_service(deployment, NAMESPACE).spec.cluster_ip
        except Exception:
            return None

    def _send(self) -> None:
        rng = random.Random(7)
        with httpx.Client(timeout=10) as http:
            while not self.stop.is_set():
                obj = self.backend.get(NAMESPACE, MODEL)
                view = InferenceServiceView(obj)
                percent = view.canary_percent or 0
                canary = f"{MODEL}-v{view.canary.version}-predictor" if percent else None
                champion, canary_ip = self._address(f"{MODEL}-predictor"), canary and self._address(canary)
                for _ in range(20):  # 20 requests per read of the split, about 10 per second
                    target = canary_ip if canary_ip and rng.random() * 100 < percent else champion
                    body = {"instances": rng.sample(self.rows, 4)}
                    try:
                        answer = http.post(f"http://{target}/v1/models/{MODEL}:predict", json=body)
                        key = f"{'canary' if target == canary_ip else 'champion'} {answer.status_code}"
                    except httpx.HTTPError as exc:
                        key = type(exc).__name__
                    self.answers[key] = self.answers.get(key, 0) + 1
                    if self.stop.wait(0.1):
                        return

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def _controller_pod(core):
    pods = core.list_namespaced_pod(RELEASE_NAMESPACE, label_selector=CONTROLLER).items
    live = [p for p in pods if p.metadata.deletion_timestamp is None]
    return live[0] if len(live) == 1 else None


@pytest.fixture(scope="module")
def story(chart_release, kserve, node, model_server, cluster_prometheus, churn_spec, churn_frame, tmp_path_factory):
    """Runs the whole story once; yields what the tests read."""
    from kubernetes import client

    core, _ = chart_release
    the_node, image = node
    api = the_node.plane.api_client()
    backend, apps = KubernetesBackend(api), client.AppsV1Api(api)
    uri = model_server[0]
    home = tmp_path_factory.mktemp("rollout-on-node")
    settings = Settings.from_env(home=home, tracking_uri=uri)
    told: dict = {}

    def report() -> str:
        obj = backend.get(NAMESPACE, MODEL) or {}
        events = "\n".join(f"{e['reason']}: {e['message']}" for e in backend.events(NAMESPACE, MODEL))
        return "\n".join(
            [
                pods_report(core, RELEASE_NAMESPACE),
                pods_report(core, NAMESPACE),
                f"spec: {obj.get('spec')}",
                f"status: {obj.get('status')}",
                events,
            ]
        )

    with pytest.MonkeyPatch.context() as environment:  # what the DAG's step processes inherit
        environment.setenv("KUBECONFIG", str(the_node.plane.kubeconfig))
        environment.setenv("SHEPHERD_IMAGE", image)
        assert run_local(_spec(churn_spec), settings, serving_target="kubernetes").registered == ("1", "champion")
    wait_rolled_out(apps, f"{MODEL}-predictor", NAMESPACE)
    # The challenger through the functions the DAG's train, evaluate, register and deploy steps call (the DAG's
    # deploy step to this cluster is proven by the run above; a DAG run costs about 95 s here).
    second = _spec(churn_spec, C=0.5)
    registered = train_and_register(second, churn_frame, uri, home, "v2")
    assert (registered.version, registered.alias) == ("2", "challenger")
    # What the deploy step renders (components.deploy.render), with the node's image as SHEPHERD_IMAGE names it there.
    canary = build_inference_service(second, "2", champion_version="1", canary_percent=10, image=image)
    apply_deployment(backend, canary, uri)
    told["deployed"] = backend.get(NAMESPACE, MODEL)
    wait_rolled_out(apps, f"{MODEL}-v2-predictor", NAMESPACE)

    rows = instances(_spec(churn_spec), churn_frame.sample(200, random_state=4))
    with Traffic(core, backend, rows) as traffic:
        # The controller pod steps the canary; once it is past the first step, kill the pod.
        wait_for(
            lambda: (InferenceServiceView(backend.get(NAMESPACE, MODEL)).canary_percent or 0) >= 50,
            180,
            "a step",
            every=1,
            report=report,
        )
        killed = _controller_pod(core)
        told["killed_at"] = time.time()
        core.delete_namespaced_pod(killed.metadata.name, RELEASE_NAMESPACE, grace_period_seconds=0)
        replacement = wait_for(
            lambda: (p := _controller_pod(core)) is not None and p.metadata.uid != killed.metadata.uid and p,
            60,
            "a new controller pod",
            every=1,
            report=report,
        )
        wait_for(
            lambda: InferenceServiceView(backend.get(NAMESPACE, MODEL)).canary_percent is None,
            180,
            "the promotion",
            every=1,
            report=report,
        )
        told["promoted_at"] = time.time()
        told["scraped"] = cluster_prometheus[0].query('up{job="shepherd/shepherd-predictor"} == 1')
        wait_rolled_out(apps, f"{MODEL}-predictor", NAMESPACE)
        told["stable_after_promotion"] = serving_container(backend.get(NAMESPACE, MODEL)["spec"]["predictor"])
        told["controller_pods"] = (killed.metadata.uid, replacement.metadata.uid)

        # The next challenger, and a rollback drill through the CLI. The fault is injected as the canary is created
        # (KServe rolls a changed canary's pods, and a healthy first pod serving meanwhile could be promoted), and
        # 30 s intervals leave no time to promote the canary before the faulted pod serves.
        third = _spec(churn_spec, interval_seconds=30, C=2.0)
        version = train_and_register(third, churn_frame, uri, home, "v3").version
        registry.connect(uri).set_registered_model_alias(MODEL, "challenger", version)
        backend.apply(build_inference_service(third, version, champion_version="2", canary_percent=10, image=image))
        fault = _cli(the_node, uri, "rollout", "fault", MODEL, "--error-rate", "1.0", "--namespace", NAMESPACE)
        assert fault.returncode == 0, fault.stderr + fault.stdout
        faulted = time.monotonic()
        wait_for(
            lambda: InferenceServiceView(backend.get(NAMESPACE, MODEL)).canary_percent == 0,
            180,
            "the rollback",
            every=1,
            report=report,
        )
        told["rollback_seconds"] = time.monotonic() - faulted
        told["answers"] = dict(traffic.answers)
    told["history"] = _cli(the_node, uri, "history", MODEL, "--namespace", NAMESPACE)
    told["events"] = backend.events(NAMESPACE, MODEL)
    told["third"] = version
    print(f"\ncluster rollout: answers {told['answers']}; rollback {told['rollback_seconds']:.1f} s after the fault")
    yield told


def _cli(the_node, tracking_uri: str, *args: str) -> subprocess.CompletedProcess:
    """`shepherd ...` against the node's cluster, as a user with its kubeconfig runs it."""
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args, "--backend", "kubernetes"],
        cwd=REPO,
        env={
            **os.environ,
            "KUBECONFIG": str(the_node.plane.kubeconfig),
            "MLFLOW_TRACKING_URI": tracking_uri,
            "COLUMNS": "200",
        },
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_dag_deployed_the_champion_and_the_challenger_joined_it_as_a_canary(story):
    view = InferenceServiceView(story["deployed"])
    assert (view.mode, view.canary_percent, view.canary.version) == ("standard", 10, "2")
    assert serving_container(story["deployed"]["spec"]["predictor"])["args"][0] == f"--model_uri=models:/{MODEL}/1"


def test_the_controller_pod_promotes_the_healthy_canary_after_being_killed(story, model_server):
    killed, replacement = story["controller_pods"]
    assert killed != replacement
    assert story["stable_after_promotion"]["args"][:2] == [f"--model_uri=models:/{MODEL}/2", "--role=champion"]
    champion = registry.connect(model_server[0]).get_model_version_by_alias(MODEL, "champion")
    assert str(champion.version) == "2"
    # The new pod went on from where the killed one stood: it promoted, after the kill.
    promoted = [e for e in story["events"] if "Promot" in e["reason"] and e["message"].startswith("v2")]
    assert promoted and promoted[0]["time"] >= story["killed_at"] - 1, story["events"]


def test_prometheus_scraped_every_predictor_pod_as_the_podmonitor_says(story):
    """The gates read what Prometheus scraped from the pods: the predictor pods are its targets, named by the
    PodMonitor's relabelings (the address on the predictor's port, `model` from the InferenceService's label)."""
    scraped = {(s["metric"]["model"], s["metric"]["instance"].split(":")[1]) for s in story["scraped"]}
    assert scraped and all(model == MODEL and port == "8080" for model, port in scraped), story["scraped"]


def test_the_controller_pod_rolls_back_a_failing_canary(story, model_server):
    rolled_back = [e for e in story["events"] if "Rollback" in e["reason"]]
    assert rolled_back and rolled_back[-1]["message"].startswith(f"v{story['third']}"), story["events"]
    assert "error rate" in rolled_back[-1]["message"]
    assert str(registry.connect(model_server[0]).get_model_version_by_alias(MODEL, "champion").version) == "2"
    assert story["answers"].get("canary 500", 0) > 0  # the fault really reached the clients


def test_shepherd_history_tells_both_rollouts_from_the_cluster(story):
    history = story["history"]
    assert history.returncode == 0, history.stderr + history.stdout
    text = history.stdout
    for expected in ("promot", "rollback", "v2", f"v{story['third']}"):
        assert expected in text.lower(), text
