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
    from components.deploy import payload_log_url_for, render
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

        applied = backend_for(serving_target).apply(obj)
        predictor = applied.get("status", {}).get("components", {}).get("predictor", {})
        split = ", ".join(f"{t['revisionName']} {t['percent']} %" for t in predictor.get("traffic", []))
        say(f"deploy: applied to {serving_target}" + (f" ({split})" if split else " (KServe reports status next)"))
