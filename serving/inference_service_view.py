"""One typed view of an InferenceService object, in either of KServe's canary shapes.

- Standard (RawDeployment) mode: `spec.predictor` is the champion and `spec.canary[0]` the canary, with
  its share in `spec.canary[0].trafficPercent`.
- Knative (Serverless) mode: `spec.predictor` is the newest revision (the canary while
  `spec.predictor.canaryTrafficPercent` is set); the champion is KServe's previous revision, which the
  object does not describe, so Shepherd names its version in the `shepherd.io/champion-version`
  annotation.
- Without a canary, `spec.predictor` is the champion at 100 %.

Everything that reads or changes the served revisions and the split (the local plane, the rollout
loop, the CLI's fault injection, the deploy step) goes through `InferenceServiceView`; the object
itself stays the plain dict the API server or the plane stores. Malformed objects raise ValueError
naming the field.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

from serving.inference_service import ANNOTATION_CHAMPION, revision_log_url

Role = Literal["champion", "canary"]
Mode = Literal["standard", "knative", "single"]
ENV_PREFIX = "SHEPHERD_"  # the predictor settings a revision is compared by (fault injection, ...)


@dataclass(frozen=True)
class ServedModel:
    role: Role
    model_uri: str  # models:/<name>/<version>
    version: str


def serving_container(predictor: dict) -> dict:
    """The container settings of a predictor block: its `model` (on a ServingRuntime, what Shepherd writes),
    or the first of its `containers` (objects written before the runtime shape, or by hand)."""
    if "model" in predictor:
        return predictor["model"]
    if predictor.get("containers"):
        return predictor["containers"][0]
    raise ValueError("spec.predictor: neither a model nor containers")


def model_uri_of(predictor: dict) -> str:
    for arg in serving_container(predictor).get("args", []):
        if arg.startswith("--model_uri="):
            return arg.split("=", 1)[1]
    raise ValueError("spec.predictor.model.args: no --model_uri=... argument")


def version_of(model_uri: str) -> str:
    return model_uri.rsplit("/", 1)[-1].split("@")[-1]


class InferenceServiceView:
    def __init__(self, obj: dict):
        self.obj = obj
        self.spec = obj["spec"]

    @property
    def name(self) -> str:
        return self.obj["metadata"]["name"]

    @property
    def mode(self) -> Mode:
        if self.spec.get("canary"):
            return "standard"
        if "canaryTrafficPercent" in self.spec["predictor"]:
            return "knative"
        return "single"

    @property
    def canary_percent(self) -> int | None:
        """The canary's share of the traffic, None when there is no canary."""
        if self.mode == "standard":
            return int(self.spec["canary"][0]["trafficPercent"])
        if self.mode == "knative":
            return int(self.spec["predictor"]["canaryTrafficPercent"])
        return None

    def predictor(self, role: Role) -> dict | None:
        """The predictor block the object holds for `role` (Knative describes only the newest revision)."""
        mode = self.mode
        if role == "champion":
            return None if mode == "knative" else self.spec["predictor"]
        if mode == "standard":
            return self.spec["canary"][0]["predictor"]
        return self.spec["predictor"] if mode == "knative" else None

    @property
    def champion(self) -> ServedModel:
        if self.mode != "knative":
            uri = model_uri_of(self.spec["predictor"])
            return ServedModel("champion", uri, version_of(uri))
        version = self.obj["metadata"].get("annotations", {}).get(ANNOTATION_CHAMPION)
        if version is None:
            raise ValueError(f"metadata.annotations: a Knative canary needs {ANNOTATION_CHAMPION}")
        name = model_uri_of(self.spec["predictor"]).removeprefix("models:/").split("/")[0].split("@")[0]
        return ServedModel("champion", f"models:/{name}/{version}", version)

    @property
    def canary(self) -> ServedModel | None:
        predictor = self.predictor("canary")
        if predictor is None:
            return None
        uri = model_uri_of(predictor)
        return ServedModel("canary", uri, version_of(uri))

    def served(self) -> list[ServedModel]:
        """The champion, then the canary if there is one; raises ValueError for a malformed object."""
        canary = self.canary
        return [self.champion, *([canary] if canary else [])]

    def container(self, role: Role) -> dict:
        """`role`'s container settings in the object (changes to it change the object); KeyError if the
        object holds no predictor for `role`."""
        predictor = self.predictor(role)
        if predictor is None:
            raise KeyError(f"no {role} predictor in this object")
        return serving_container(predictor)

    def env(self, role: Role) -> dict[str, str]:
        """The SHEPHERD_* environment the object sets on `role`'s predictor container."""
        predictor = self.predictor(role)
        if predictor is None:
            return {}
        env = serving_container(predictor).get("env") or []
        return {e["name"]: str(e.get("value", "")) for e in env if e["name"].startswith(ENV_PREFIX)}

    def standard_service_urls(self) -> dict[Role, str]:
        """Where each predictor answers in KServe's Standard mode, whose status has no URL per revision: its own
        Service (`<isvc>-predictor`, and `<isvc>-<canary name>-predictor` for the canary; port 80) in the object's
        namespace, by the cluster's DNS name."""
        namespace = self.obj["metadata"].get("namespace", "default")
        urls: dict[Role, str] = {"champion": f"http://{self.name}-predictor.{namespace}.svc"}
        if self.mode == "standard":
            canary = self.spec["canary"][0]["predictor"]["name"]
            urls["canary"] = f"http://{self.name}-{canary}-predictor.{namespace}.svc"
        return urls

    @property
    def has_payload_logger(self) -> bool:
        predictors = [self.spec["predictor"], *(c["predictor"] for c in self.spec.get("canary", []))]
        return any((p.get("logger") or {}).get("url") for p in predictors)

    # -- changes: each returns a changed copy ------------------------------------------------------
    def with_canary_percent(self, percent: int) -> dict:
        obj = copy.deepcopy(self.obj)
        if self.mode == "standard":
            obj["spec"]["canary"][0]["trafficPercent"] = percent
        else:
            obj["spec"]["predictor"]["canaryTrafficPercent"] = percent
        return obj

    def promoted(self) -> dict:
        """The object with the canary as the only predictor, at 100 %."""
        obj = copy.deepcopy(self.obj)
        spec = obj["spec"]
        if self.mode == "standard":
            # The promoted version takes the stable predictor's place (KServe's `<isvc>-predictor`, rolled
            # to the new version) and the canary's own Deployment goes.
            # It keeps the champion's scaling (a canary's replicas follow its share).
            scaling = {k: spec["predictor"][k] for k in ("minReplicas", "maxReplicas") if k in spec["predictor"]}
            spec["predictor"] = {**spec.pop("canary")[0]["predictor"], **scaling}
            spec["predictor"].pop("name", None)
            spec["predictor"].get("model", {}).pop("name", None)  # KServe refuses a stable model's container name
        else:
            spec["predictor"].pop("canaryTrafficPercent", None)
        obj["metadata"].get("annotations", {}).pop(ANNOTATION_CHAMPION, None)
        container = serving_container(spec["predictor"])
        container["args"] = ["--role=champion" if a == "--role=canary" else a for a in container.get("args", [])]
        logger = spec["predictor"].get("logger") or {}
        if self.mode == "standard" and logger.get("url"):  # its payload log now names it the champion
            logger["url"] = revision_log_url(logger["url"], "champion")
        return obj
