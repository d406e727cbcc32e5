"""Builds the KServe InferenceService a registered model version is served by.

Both KServe deployment modes are supported: Knative (`spec.predictor.canaryTrafficPercent`, KServe
keeps the previous revision for the rest of the traffic) and Standard (`spec.canary[]`, KServe >= 0.20,
the champion stays in `spec.predictor`, each canary is a named predictor: KServe runs it as its own
Deployment and Service, `<isvc>-v<version>-predictor`). Every predictor is a `model` on the `shepherd`
ServingRuntime (manifests/base/models): KServe 0.20 accepts a Standard canary only next to such a stable
predictor. The rollout policy is written onto the object as an annotation so the rollout loop reads it
from the cluster and stays stateless.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import yaml

from components.platform import PLATFORM_IMAGE
from components.spec import ModelSpec
from monitoring.payload_log import REVISION_ROLE_PARAMETER, REVISION_VERSION_PARAMETER

ANNOTATION_POLICY = "shepherd.io/rollout-policy"
ANNOTATION_VERSION = "shepherd.io/model-version"
ANNOTATION_CHAMPION = "shepherd.io/champion-version"
ANNOTATION_STATE = "shepherd.io/rollout-state"  # the rollout loop's state machine (serving/rollout/machine.py)
ANNOTATION_BASELINE = "shepherd.io/rollout-baseline"  # the loop's counter baseline (serving/rollout/scrape.py)
# Shepherd's bookkeeping on an InferenceService, none of it a setting of the pods. KServe copies an
# InferenceService's annotations into its predictors' pod templates unless its `inferenceservice-config` lists the
# keys (exact keys: no prefixes) in `inferenceService.serviceAnnotationDisallowedList`; without that list every write
# of the loop's state would roll the champion's and the canary's pods (found on the real controller).
SHEPHERD_ANNOTATIONS = (
    ANNOTATION_VERSION,
    ANNOTATION_CHAMPION,
    ANNOTATION_POLICY,
    ANNOTATION_STATE,
    ANNOTATION_BASELINE,
)
DEPLOYMENT_MODE = "serving.kserve.io/deploymentMode"


def kserve_inference_service_setting() -> dict:
    """What Shepherd needs merged into the `inferenceService` key of KServe's `inferenceservice-config` ConfigMap
    (helm/shepherd/README.md shows it as a platform team applies it)."""
    return {"serviceAnnotationDisallowedList": list(SHEPHERD_ANNOTATIONS)}


# Hardened by default: nothing a model server needs requires more.
SERVING_RUNTIME = "shepherd"  # manifests/base/models/servingruntime.yaml
CONTAINER_NAME = "kserve-container"  # the runtime's container a model's settings are merged into
SECURITY_CONTEXT = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def rollout_policy(spec: ModelSpec) -> dict:
    """The declarative rollout policy, as stored on the object (read back by serving.rollout)."""
    d = spec.deployment
    return {
        "steps": d.canary_steps,
        "intervalSeconds": d.interval_seconds,
        "failureLimit": d.failure_limit,
        "minRequests": d.min_requests,
        "latencyFloorSeconds": d.latency_floor_ms / 1000,
        "manualApproval": d.manual_approval,
        "gates": {name: gate.model_dump(exclude_none=True) for name, gate in d.gates},
        **({"quality": _quality_policy(spec)} if d.quality_gate is not None else {}),
    }


def _quality_policy(spec: ModelSpec) -> dict:
    gate = spec.deployment.quality_gate
    regression = gate.max_regression if gate.max_regression is not None else spec.evaluation.max_regression
    return {"minLabels": gate.min_labels, "maxRegression": dict(regression)}


def _predictor(
    spec: ModelSpec,
    version: str,
    image: str,
    payload_log_url: str | None = None,
    role: str = "champion",
    name: str | None = None,
) -> dict:
    """A predictor block (`name`: a Standard canary's): the model on the `shepherd` ServingRuntime (which gives
    the command, the port, the serving ConfigMap and the writable /tmp), with what is this model's own: the
    image, the version to load, the role, the resources, and the hardening again (the object stays hardened
    whatever the runtime says). KServe's Standard-mode canaries require this shape (a stable predictor with a
    `model`, named canaries)."""
    resources = {"cpu": spec.deployment.cpu, "memory": spec.deployment.memory}
    model = {
        "modelFormat": {"name": SERVING_RUNTIME},
        "runtime": SERVING_RUNTIME,
        # What KServe's storage-initializer step checks before the predictor starts (serving.model_check); KServe
        # would take a model without one for a multi-model server.
        "storageUri": f"models:/{spec.name}/{version}",
        "image": image,
        # The role labels the predictor's metrics, which the canary alerts select on; promotion rewrites it.
        "args": [f"--model_uri=models:/{spec.name}/{version}", f"--role={role}"],
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        "securityContext": copy.deepcopy(SECURITY_CONTEXT),
    }
    if name is None:
        predictor: dict = {"minReplicas": 1, "model": model}
    else:
        # KServe 0.20's CRD requires a canary's model to name its container, and its webhook refuses that name on
        # the stable predictor (promotion drops it). A canary has no minReplicas of its own: KServe sizes it by its
        # share, ceil(stable replicas x percent / 100) (it keeps one pod even at 0 %).
        predictor = {"name": name, "model": {"name": CONTAINER_NAME, **model}}
    if payload_log_url:
        if spec.deployment.mode == "Standard":
            payload_log_url = revision_log_url(payload_log_url, role, version)
        predictor["logger"] = {"mode": "all", "url": payload_log_url}
    return predictor


def canary_name(version: str) -> str:
    """The canary predictor's name: KServe names its Deployment and Service `<isvc>-<name>-predictor`."""
    return f"v{version}"


def revision_log_url(url: str, role: str, version: str | None = None) -> str:
    """A Standard-mode predictor's payload-log URL: `url` naming the revision whose agent posts there
    (`?role=...&version=...`; `version` None keeps the one `url` names). In Standard mode KServe's agent says
    nothing about the revision it logs for: `endpoint` is empty (no pod carries the label it is read from), there
    is no version, and `source` is empty (KServe's pod mutator sees a pod before it has a name). Each Standard
    predictor is its own Deployment with its own logger, so its URL can say it (found on the real node)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query[REVISION_ROLE_PARAMETER] = role
    if version is not None:
        query[REVISION_VERSION_PARAMETER] = str(version)
    return urlunsplit(parts._replace(query=urlencode(query)))


def build_inference_service(
    spec: ModelSpec,
    version: str,
    champion_version: str | None = None,
    canary_percent: int | None = None,
    image: str = PLATFORM_IMAGE,
    payload_log_url: str | None = None,
) -> dict:
    """The InferenceService for `version`: at 100 % when `canary_percent` is None, else as a canary
    taking `canary_percent` of traffic next to `champion_version`. With `payload_log_url`, every
    predictor posts its requests and responses there as CloudEvents. Returns the serialised object."""
    if canary_percent is not None and champion_version is None:
        raise ValueError("a canary needs the champion version it splits traffic with")
    mode = spec.deployment.mode
    annotations = {
        DEPLOYMENT_MODE: mode,
        ANNOTATION_VERSION: str(version),
        ANNOTATION_POLICY: json.dumps(rollout_policy(spec)),
    }
    if canary_percent is None:
        isvc_spec = {"predictor": _predictor(spec, version, image, payload_log_url)}
    elif mode == "Knative":
        predictor = _predictor(spec, version, image, payload_log_url, role="canary")
        predictor["canaryTrafficPercent"] = canary_percent
        isvc_spec = {"predictor": predictor}
        annotations[ANNOTATION_CHAMPION] = str(champion_version)
    else:
        canary = _predictor(spec, version, image, payload_log_url, role="canary", name=canary_name(version))
        isvc_spec = {
            "predictor": _predictor(spec, champion_version, image, payload_log_url),
            "canary": [{"trafficPercent": canary_percent, "predictor": canary}],
        }
        annotations[ANNOTATION_CHAMPION] = str(champion_version)
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": spec.name,
            "namespace": spec.deployment.namespace,
            "annotations": annotations,
            "labels": {"app.kubernetes.io/managed-by": "shepherd", "shepherd.io/model": spec.name},
        },
        "spec": isvc_spec,
    }


def to_yaml(obj: dict) -> str:
    return yaml.safe_dump(obj, sort_keys=False)


def write_examples(directory: Path) -> list[Path]:
    """The bundled churn model's canary InferenceService in both KServe modes (manifests/examples/)."""
    from components.spec import load_spec

    base = load_spec(Path(__file__).resolve().parent.parent / "specs" / "churn.yaml")
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for mode in ("Standard", "Knative"):
        spec = base.model_copy(update={"deployment": base.deployment.model_copy(update={"mode": mode})})
        path = directory / f"inferenceservice-{mode.lower()}-canary.yaml"
        header = (
            f"# Generated by `make examples` from specs/churn.yaml: version 2 as a 10 % canary next to\n"
            f"# champion version 1, KServe {mode} mode. Do not edit; tests compare it with the builder.\n"
        )
        path.write_text(header + to_yaml(build_inference_service(spec, "2", "1", canary_percent=10)))
        written.append(path)
    return written


if __name__ == "__main__":
    import sys

    for written_path in write_examples(Path(sys.argv[1] if len(sys.argv) > 1 else "manifests/examples")):
        print(f"wrote {written_path}")
