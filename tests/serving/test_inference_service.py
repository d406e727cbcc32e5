"""The InferenceService builder, validated against KServe's own CRD schema (from its Go module)."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import yaml

from components.spec import parse_spec
from serving.inference_service import (
    ANNOTATION_CHAMPION,
    ANNOTATION_POLICY,
    SHEPHERD_ANNOTATIONS,
    build_inference_service,
    kserve_inference_service_setting,
    to_yaml,
)
from serving.inference_service_view import InferenceServiceView, serving_container
from tests.conftest import REPO
from tests.support.crds import validate_inference_service

EXAMPLES = REPO / "manifests" / "examples"


def _spec_in_mode(spec, mode):
    data = yaml.safe_load(spec.to_yaml())
    data["deployment"]["mode"] = mode
    from components.spec import parse_spec

    return parse_spec(yaml.safe_dump(data))


@pytest.mark.parametrize("mode", ["Standard", "Knative"])
def test_first_model_at_full_traffic_is_valid(churn_spec, mode):
    obj = build_inference_service(_spec_in_mode(churn_spec, mode), "1")
    validate_inference_service(obj)
    assert "canary" not in obj["spec"] and "canaryTrafficPercent" not in obj["spec"]["predictor"]
    assert obj["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == mode


def test_standard_canary_uses_spec_canary(churn_spec):
    obj = build_inference_service(_spec_in_mode(churn_spec, "Standard"), "2", champion_version="1", canary_percent=10)
    validate_inference_service(obj)
    assert obj["spec"]["canary"][0]["trafficPercent"] == 10
    assert serving_container(obj["spec"]["predictor"])["args"][0] == "--model_uri=models:/churn/1"
    assert serving_container(obj["spec"]["canary"][0]["predictor"])["args"][0] == "--model_uri=models:/churn/2"
    assert obj["metadata"]["annotations"][ANNOTATION_CHAMPION] == "1"
    assert '"steps": [10, 25, 50, 100]' in obj["metadata"]["annotations"][ANNOTATION_POLICY]


def test_every_shepherd_annotation_is_kept_out_of_the_pods_by_the_documented_kserve_setting(churn_spec):
    """KServe copies what is not on its disallow list into the pod templates (tests/cluster/test_kserve.py shows the
    loop's writes rolling no pod with it): every shepherd.io/ key the builder writes is on the list, and the list a
    platform team is told to apply (helm/shepherd/README.md) is the one the code names."""
    obj = build_inference_service(churn_spec, "2", champion_version="1", canary_percent=10)
    written = {k for k in obj["metadata"]["annotations"] if k.startswith("shepherd.io/")}
    assert written and written <= set(SHEPHERD_ANNOTATIONS)
    assert all(k.startswith("shepherd.io/") for k in SHEPHERD_ANNOTATIONS)
    readme = (REPO / "helm" / "shepherd" / "README.md").read_text()
    (documented,) = re.findall(r'^"serviceAnnotationDisallowedList": .*$', readme, re.M)
    assert json.loads("{" + documented + "}") == kserve_inference_service_setting()


def test_knative_canary_uses_canary_traffic_percent(churn_spec):
    obj = build_inference_service(_spec_in_mode(churn_spec, "Knative"), "2", champion_version="1", canary_percent=25)
    validate_inference_service(obj)
    assert obj["spec"]["predictor"]["canaryTrafficPercent"] == 25
    assert serving_container(obj["spec"]["predictor"])["args"][0] == "--model_uri=models:/churn/2"
    assert "canary" not in obj["spec"]


def test_containers_are_hardened(churn_spec):
    container = serving_container(build_inference_service(churn_spec, "1")["spec"]["predictor"])
    context = container["securityContext"]
    assert context["runAsNonRoot"] and not context["allowPrivilegeEscalation"]
    assert context["readOnlyRootFilesystem"] and context["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["limits"] == {"cpu": "500m", "memory": "1Gi"}


@pytest.mark.parametrize(
    ("break_it", "where"),
    [
        (lambda o: o["spec"]["canary"][0].update(trafficPercent="ten"), "trafficPercent"),
        (lambda o: o["spec"]["predictor"].update(replicas=3), "replicas"),
        (lambda o: o["spec"]["canary"][0].pop("predictor"), "predictor"),
    ],
    ids=["wrong-type", "unknown-field", "missing-required"],
)
def test_schema_really_rejects_broken_objects(churn_spec, break_it, where):
    obj = build_inference_service(churn_spec, "2", champion_version="1", canary_percent=10)
    break_it(obj)
    with pytest.raises(jsonschema.ValidationError) as info:
        validate_inference_service(obj)
    assert where in str(info.value.message) + str(list(info.value.absolute_path))


@pytest.mark.parametrize("mode", ["standard", "knative"])
def test_example_manifests_are_current_and_valid(churn_spec, mode):
    path = EXAMPLES / f"inferenceservice-{mode}-canary.yaml"
    built = build_inference_service(_spec_in_mode(churn_spec, mode.capitalize()), "2", "1", canary_percent=10)
    assert yaml.safe_load(path.read_text()) == built, f"regenerate {path.name}: make examples"
    validate_inference_service(yaml.safe_load(path.read_text()))
    assert to_yaml(built) in path.read_text()


def test_each_standard_predictor_names_its_revision_in_its_logger_url(churn_spec):
    """KServe's agent says nothing about the revision it logs for in Standard mode: each predictor's logger URL
    does, and promotion renames the promoted one the champion."""
    url = "http://shepherd-drift.shepherd.svc:8080/?tenant=a"
    obj = build_inference_service(churn_spec, "2", champion_version="1", canary_percent=10, payload_log_url=url)
    stable, canary = obj["spec"]["predictor"], obj["spec"]["canary"][0]["predictor"]
    assert stable["logger"]["url"] == "http://shepherd-drift.shepherd.svc:8080/?tenant=a&role=champion&version=1"
    assert canary["logger"]["url"] == "http://shepherd-drift.shepherd.svc:8080/?tenant=a&role=canary&version=2"
    promoted = InferenceServiceView(obj).promoted()["spec"]["predictor"]
    assert promoted["logger"]["url"] == "http://shepherd-drift.shepherd.svc:8080/?tenant=a&role=champion&version=2"
    assert (
        promoted["logger"]
        == build_inference_service(churn_spec, "2", payload_log_url=url)["spec"]["predictor"]["logger"]
    )


def test_knative_predictors_keep_the_logger_url_as_given(churn_spec):
    """In Knative mode one predictor serves both revisions and KServe's events say which (`endpoint`)."""
    spec = parse_spec(yaml.safe_dump({**yaml.safe_load(churn_spec.to_yaml()), "deployment": {"mode": "Knative"}}))
    obj = build_inference_service(spec, "2", champion_version="1", canary_percent=10, payload_log_url="http://d/")
    assert obj["spec"]["predictor"]["logger"]["url"] == "http://d/"
