"""The training pipeline's run arguments: one typed object for everything that starts a run on a KFP
server (`shepherd submit`, the alert webhook's retraining runs), checked against the compiled package
the run is for.

It lives in `components/`, not `pipelines/`: the webhook in `monitoring/` starts runs too, and
dependencies point `pipelines -> components` with `monitoring` importing only the shared contracts in
`components/`. So this module reads the parameter names from the compiled YAML (the package KFP
gets), never from `pipelines.pipeline`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from components import feature_location
from components.errors import PipelineRunError

# The Feast repo inside the platform image, where a cluster run's steps find it.
IMAGE_FEATURE_REPO = "/opt/shepherd/feature_repo"


@dataclass(frozen=True)
class PipelineArguments:
    """Everything a run of the training pipeline takes; the field names are its parameter names.

    `serving_target`: "" renders the InferenceService only, "kubernetes" applies it to the run's
    cluster, a URL to a local serving plane. `drift_url`: where the predictors' payload logger posts.
    """

    spec_yaml: str
    tracking_uri: str
    feature_repo: str
    serving_target: str = ""
    drift_url: str = ""

    def __post_init__(self) -> None:
        for name in ("spec_yaml", "tracking_uri", "feature_repo"):
            if not getattr(self, name):
                raise PipelineRunError(f"pipeline argument {name}: required, a non-empty string")
        feature_location.check(self.feature_repo)

    def for_package(self, package: Path) -> dict[str, str]:
        """The `arguments` KFP gets for a run of `package`: every parameter, checked against the
        package's own (a required one missing or an unknown one is an error here, not a rejected run)."""
        parameters = pipeline_parameters(package)
        arguments = asdict(self)
        missing = sorted(name for name, required in parameters.items() if required and name not in arguments)
        unknown = sorted(set(arguments) - set(parameters))
        if missing or unknown:
            raise PipelineRunError(
                f"the pipeline package {package} does not match these run arguments: "
                f"missing required {missing}, unknown {unknown}; the package takes {sorted(parameters)}",
                hint="recompile the package with this version of Shepherd (`shepherd compile`)",
            )
        return arguments


def pipeline_parameters(package: Path) -> dict[str, bool]:
    """The compiled pipeline's parameters, each with whether it is required (has no default)."""
    # A second YAML document appears when kfp-kubernetes settings are used; the pipeline spec is the first.
    spec = next(iter(yaml.safe_load_all(Path(package).read_text())))
    declared = spec["root"].get("inputDefinitions", {}).get("parameters", {})
    return {name: not (p.get("isOptional") or "defaultValue" in p) for name, p in declared.items()}
