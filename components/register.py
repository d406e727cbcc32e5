"""Register: an MLflow model version with lineage tags, a model card, and the right alias.

Every evaluated model is registered, promoted or not, so the registry answers "what was tried and
why was it rejected" and an unchanged rerun finds the rejected version's fingerprint too. Only a
promoted model gets an alias: `champion` if it is the first, otherwise `challenger` (under canary).
"""

import json
from dataclasses import dataclass
from typing import NamedTuple

from kfp import dsl

from components import registry
from components.adapter import step
from components.evaluate import Verdict
from components.features import feature_service_name, feature_view_name
from components.spec import ModelSpec


@dataclass
class Registered:
    version: str
    alias: str  # "champion", "challenger" or "" (rejected)
    model_sha256: str
    card: str


def model_card(spec: ModelSpec, version: str, alias: str, verdict: Verdict, tags: dict[str, str]) -> str:
    """A markdown page a reviewer can read: what the model is, how it scored, where it came from."""
    rows = "\n".join(
        f"| {name} | {value:.4f} | {verdict.champion[name]:.4f} |"
        if verdict.champion
        else f"| {name} | {value:.4f} | – |"
        for name, value in sorted(verdict.challenger.items())
    )
    features = ", ".join(f"`{f.name}` ({f.type})" for f in spec.features)
    lineage = "\n".join(
        f"- **{key.removeprefix('shepherd.')}**: `{value}`"
        for key, value in sorted(tags.items())
        if key not in (registry.TAG_REASONS,)
    )
    reasons = "\n".join(f"- {r}" for r in verdict.reasons)
    return f"""# Model card: {spec.name} version {version}

{spec.description}

- **Verdict**: {"promoted" if verdict.promote else "rejected"}{f" (alias `{alias}`)" if alias else ""}
- **Algorithm**: {spec.training.estimator_name} with {json.dumps(spec.training.params)}
- **Task**: {spec.task}
- **Target**: `{spec.target.column}` ({_target_text(spec)})
- **Features**: {features}

## Holdout metrics

| metric | this version | champion{f" v{verdict.champion_version}" if verdict.champion_version else ""} |
|---|---|---|
{rows}

## Evaluation gates

{reasons}

## Lineage

{lineage}
"""


def _target_text(spec: ModelSpec) -> str:
    target = spec.target
    if spec.task == "binary":
        return f"positive: `{target.positive}`, negative: `{target.negative}`"
    if spec.task == "multiclass":
        return "classes: " + ", ".join(f"`{c}`" for c in target.classes)
    bounds = [
        f"min {target.min:g}" if target.min is not None else "",
        f"max {target.max:g}" if target.max is not None else "",
    ]
    return "a number" + (f", {', '.join(b for b in bounds if b)}" if any(bounds) else "")


def register_version(spec: ModelSpec, tracking_uri: str, run_id: str, model_uri: str, verdict: Verdict) -> Registered:
    """Create the version, tag it with its lineage and verdict, attach the card, set its alias."""
    import mlflow

    client = registry.connect(tracking_uri)
    run_tags = client.get_run(run_id).data.tags
    tags = {key: value for key, value in run_tags.items() if key.startswith("shepherd.")}
    tags.pop(registry.TAG_MODEL_URI, None)
    tags.update(
        {
            registry.TAG_FEATURE_VIEWS: feature_view_name(spec),
            registry.TAG_FEATURE_SERVICE: feature_service_name(spec),
            registry.TAG_VERDICT: "promote" if verdict.promote else "reject",
            registry.TAG_REASONS: registry.format_reasons(verdict.reasons),
            registry.TAG_MODEL_SHA256: registry.model_artifact_sha256(model_uri),
        }
    )
    had_champion = registry.champion_version(client, spec.name) is not None
    version = mlflow.register_model(model_uri, spec.name, tags=tags).version
    client.update_model_version(spec.name, version, description=verdict.summary)
    alias = ""
    if verdict.promote:
        alias = registry.CHALLENGER if had_champion else registry.CHAMPION
        client.set_registered_model_alias(spec.name, alias, version)
    card = model_card(spec, str(version), alias, verdict, tags)
    client.log_text(run_id, card, "model_card.md")
    return Registered(str(version), alias, tags[registry.TAG_MODEL_SHA256], card)


@step
def register_op(
    spec_yaml: str,
    tracking_uri: str,
    run_id: str,
    model_uri: str,
    verdict: dsl.Input[dsl.Artifact],
    model_card: dsl.Output[dsl.Markdown],
) -> NamedTuple("Outputs", [("version", str), ("alias", str)]):
    """Register the trained model in MLflow with lineage tags and its model card."""
    from collections import namedtuple

    from components.evaluate import Verdict
    from components.progress import say
    from components.register import register_version
    from components.spec import parse_spec

    spec = parse_spec(spec_yaml)
    with open(verdict.path) as handle:
        judged = Verdict.from_json(handle.read())
    result = register_version(spec, tracking_uri, run_id, model_uri, judged)
    with open(model_card.path, "w") as handle:
        handle.write(result.card)
    say(
        f"register: {spec.name} version {result.version}"
        + (f" -> @{result.alias}" if result.alias else " (rejected: no alias)")
        + f", model sha256 {result.model_sha256[:12]}"
    )
    return namedtuple("Outputs", ["version", "alias"])(result.version, result.alias)
