"""Builds the KServe InferenceService a registered model version is served by.

Both KServe deployment modes are supported: Knative (`spec.predictor.canaryTrafficPercent`, KServe
keeps the previous revision for the rest of the traffic) and Standard (`spec.canary[]`, KServe >= 0.20,
the champion stays in `spec.predictor`). The rollout policy is written onto the object as an
annotation so the rollout loop reads it from the cluster and stays stateless.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from components.platform import PLATFORM_IMAGE
from components.spec import ModelSpec

ANNOTATION_POLICY = "shepherd.io/rollout-policy"
ANNOTATION_VERSION = "shepherd.io/model-version"
ANNOTATION_CHAMPION = "shepherd.io/champion-version"
DEPLOYMENT_MODE = "serving.kserve.io/deploymentMode"

# Hardened by default: nothing a model server needs requires more.
SERVING_CONFIGMAP = "shepherd-serving"
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


def _predictor(spec: ModelSpec, version: str, image: str, payload_log_url: str | None = None, role: str = "champion"):
    from kserve import V1beta1PredictorSpec
    from kubernetes.client import (
        V1ConfigMapEnvSource,
        V1Container,
        V1EmptyDirVolumeSource,
        V1EnvFromSource,
        V1ResourceRequirements,
        V1Volume,
        V1VolumeMount,
    )

    resources = {"cpu": spec.deployment.cpu, "memory": spec.deployment.memory}
    container = V1Container(
        name="kserve-container",
        image=image,
        command=["python", "-m", "serving.predictor"],
        # The role labels the predictor's metrics, which the canary alerts select on; promotion rewrites it.
        args=[f"--model_name={spec.name}", f"--model_uri=models:/{spec.name}/{version}", f"--role={role}"],
        resources=V1ResourceRequirements(requests=resources, limits=resources),
        security_context=SECURITY_CONTEXT,
        # MLFLOW_TRACKING_URI (and the like) from the model namespace's ConfigMap (manifests/base/models).
        env_from=[V1EnvFromSource(config_map_ref=V1ConfigMapEnvSource(name=SERVING_CONFIGMAP, optional=True))],
        # The root filesystem is read-only: MLflow downloads the model into /tmp.
        volume_mounts=[V1VolumeMount(name="tmp", mount_path="/tmp")],
    )
    predictor = V1beta1PredictorSpec(
        containers=[container],
        min_replicas=1,
        volumes=[V1Volume(name="tmp", empty_dir=V1EmptyDirVolumeSource(size_limit="1Gi"))],
    )
    if payload_log_url:
        from kserve import V1beta1LoggerSpec

        predictor.logger = V1beta1LoggerSpec(mode="all", url=payload_log_url)
    return predictor


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
    from kserve import (
        V1beta1CanarySpec,
        V1beta1InferenceService,
        V1beta1InferenceServiceSpec,
        constants,
    )
    from kubernetes.client import ApiClient, V1ObjectMeta

    if canary_percent is not None and champion_version is None:
        raise ValueError("a canary needs the champion version it splits traffic with")
    mode = spec.deployment.mode
    annotations = {
        DEPLOYMENT_MODE: mode,
        ANNOTATION_VERSION: str(version),
        ANNOTATION_POLICY: json.dumps(rollout_policy(spec)),
    }
    if canary_percent is None:
        isvc_spec = V1beta1InferenceServiceSpec(predictor=_predictor(spec, version, image, payload_log_url))
    elif mode == "Knative":
        predictor = _predictor(spec, version, image, payload_log_url, role="canary")
        predictor.canary_traffic_percent = canary_percent
        isvc_spec = V1beta1InferenceServiceSpec(predictor=predictor)
        annotations[ANNOTATION_CHAMPION] = str(champion_version)
    else:
        isvc_spec = V1beta1InferenceServiceSpec(
            predictor=_predictor(spec, champion_version, image, payload_log_url),
            canary=[
                V1beta1CanarySpec(
                    traffic_percent=canary_percent,
                    predictor=_predictor(spec, version, image, payload_log_url, role="canary"),
                )
            ],
        )
        annotations[ANNOTATION_CHAMPION] = str(champion_version)
    isvc = V1beta1InferenceService(
        api_version=f"{constants.KSERVE_GROUP}/v1beta1",
        kind=constants.KSERVE_KIND_INFERENCESERVICE,
        metadata=V1ObjectMeta(
            name=spec.name,
            namespace=spec.deployment.namespace,
            annotations=annotations,
            labels={"app.kubernetes.io/managed-by": "shepherd", "shepherd.io/model": spec.name},
        ),
        spec=isvc_spec,
    )
    return ApiClient().sanitize_for_serialization(isvc)


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
