"""Deploy: the InferenceService the promoted model gets, rendered and (given a backend) applied.

The first model is served at 100 %; a promoted challenger becomes a canary at the rollout policy's
first step next to the current champion. The rendered object is always saved as the step's artifact;
with a `serving_target` it is applied: `kubernetes` (the cluster the step runs in) or the URL of the
local serving plane.
"""

from kfp import dsl

from components.adapter import step
from components.spec import ModelSpec


def payload_log_url_for(serving_target: str, drift_url: str = "") -> str | None:
    """Where the predictors' payload logger posts: the local plane's drift service, or on a cluster the
    drift service the Helm chart installs (`drift_url`); None: no payload logs, no drift gates."""
    if serving_target.startswith(("http://", "https://")):
        return serving_target.rstrip("/") + "/drift/"
    return drift_url or None


def render(
    spec: ModelSpec, version: str, alias: str, champion_version: str | None, payload_log_url: str | None = None
) -> dict:
    """The InferenceService for a newly registered `version` with alias `alias`."""
    from components import registry
    from serving.inference_service import build_inference_service

    if alias == registry.CHAMPION:
        return build_inference_service(spec, version, payload_log_url=payload_log_url)
    return build_inference_service(
        spec,
        version,
        champion_version=champion_version,
        canary_percent=spec.deployment.canary_steps[0],
        payload_log_url=payload_log_url,
    )


def canary_in_flight(current: dict | None, new_version: str) -> tuple[str, int] | None:
    """(version, percent) of a canary still rolling out on `current` that deploying `new_version`
    would replace, or None."""
    from serving.inference_service import ANNOTATION_VERSION
    from serving.inference_service_view import InferenceServiceView

    if current is None:
        return None
    percent = InferenceServiceView(current).canary_percent
    version = current["metadata"].get("annotations", {}).get(ANNOTATION_VERSION)
    if percent is None or version is None or str(version) == str(new_version):
        return None
    return str(version), percent


def apply_deployment(backend, obj: dict, tracking_uri: str) -> dict:
    """Apply `obj`; when it replaces a canary whose rollout had not finished (two runs of one model at
    once, or a retraining during a rollout), say so where people look: a Warning event on the object
    (`shepherd history`) and the `shepherd.rollout` tag on the replaced version. The newest challenger
    wins, as in Flagger: its rollout starts again from the first step."""
    from components import registry
    from serving.backends import retry_on_conflict
    from serving.inference_service import ANNOTATION_VERSION
    from serving.rollout.loop import TAG_ROLLOUT

    meta = obj["metadata"]
    new_version = meta["annotations"][ANNOTATION_VERSION]

    def replace_what_was_read() -> tuple[dict, tuple[str, int] | None]:
        # Written over the version read here, so the canary reported as superseded is the one replaced.
        current = backend.get(meta["namespace"], meta["name"])
        version = current["metadata"].get("resourceVersion") if current else None
        written = backend.apply({**obj, "metadata": {**meta, "resourceVersion": version}})
        return written, canary_in_flight(current, new_version)

    applied, replaced = retry_on_conflict(replace_what_was_read)
    if replaced is not None:
        old_version, percent = replaced
        message = f"v{old_version} (canary at {percent} %) superseded by v{new_version} before its rollout finished"
        backend.record_event(applied, reason="CanarySuperseded", message=message, warning=True)
        try:
            client = registry.connect(tracking_uri)
            client.set_model_version_tag(meta["name"], old_version, TAG_ROLLOUT, f"superseded: {message}")
        except Exception as exc:  # the deployment stands; the event above already tells the story
            from components.progress import say

            say(f"deploy: could not tag v{old_version} as superseded: {exc}")
    return applied


@step
def deploy_op(
    spec_yaml: str,
    tracking_uri: str,
    version: str,
    alias: str,
    serving_target: str,
    drift_url: str,
    inference_service: dsl.Output[dsl.Artifact],
):
    """Render the InferenceService for the promoted version, save it, and apply it if a plane is given."""
    from components import registry
    from components.deploy import apply_deployment, payload_log_url_for, render
    from components.progress import say
    from components.spec import parse_spec
    from serving.inference_service import to_yaml

    spec = parse_spec(spec_yaml)
    champion = registry.champion_version(registry.connect(tracking_uri), spec.name)
    obj = render(
        spec, version, alias, champion.version if champion else None, payload_log_url_for(serving_target, drift_url)
    )
    with open(inference_service.path, "w") as handle:
        handle.write(to_yaml(obj))
    inference_service.metadata.update({"name": spec.name, "version": version, "alias": alias})
    traffic = "100 %" if alias == registry.CHAMPION else f"canary {spec.deployment.canary_steps[0]} %"
    say(f"deploy: InferenceService {spec.deployment.namespace}/{spec.name} for version {version} ({traffic})")
    if serving_target:
        from serving.backends import backend_for

        applied = apply_deployment(backend_for(serving_target), obj, tracking_uri)
        predictor = applied.get("status", {}).get("components", {}).get("predictor", {})
        split = ", ".join(f"{t['revisionName']} {t['percent']} %" for t in predictor.get("traffic", []))
        say(f"deploy: applied to {serving_target}" + (f" ({split})" if split else " (KServe reports status next)"))
