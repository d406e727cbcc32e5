"""The typed view of an InferenceService, on objects the real builder makes in both of KServe's canary
shapes (Standard: spec.canary[]; Knative: canaryTrafficPercent on the newest predictor) and without a
canary: what is served, the split, the per-revision settings, stepping and promoting."""

from __future__ import annotations

import copy

import pytest

from serving.inference_service import ANNOTATION_CHAMPION, build_inference_service
from serving.inference_service_view import InferenceServiceView, ServedModel, serving_container


def _spec(churn_spec, mode: str):
    return churn_spec.model_copy(update={"deployment": churn_spec.deployment.model_copy(update={"mode": mode})})


@pytest.fixture(params=["Standard", "Knative"])
def canary_obj(request, churn_spec):
    return build_inference_service(_spec(churn_spec, request.param), "2", champion_version="1", canary_percent=10)


def test_a_canary_object_names_both_models_and_the_split(canary_obj):
    view = InferenceServiceView(canary_obj)
    assert view.mode in ("standard", "knative")
    assert view.served() == [
        ServedModel("champion", "models:/churn/1", "1"),
        ServedModel("canary", "models:/churn/2", "2"),
    ]
    assert view.canary_percent == 10


def test_stepping_changes_only_the_split_and_leaves_the_original_alone(canary_obj):
    before = copy.deepcopy(canary_obj)
    stepped = InferenceServiceView(canary_obj).with_canary_percent(50)
    assert canary_obj == before
    assert InferenceServiceView(stepped).canary_percent == 50
    assert InferenceServiceView(stepped).served() == InferenceServiceView(canary_obj).served()


def test_promoting_leaves_the_canary_alone_at_full_traffic(canary_obj):
    promoted = InferenceServiceView(canary_obj).promoted()
    view = InferenceServiceView(promoted)
    assert view.mode == "single" and view.canary_percent is None and view.canary is None
    assert view.champion == ServedModel("champion", "models:/churn/2", "2")
    assert ANNOTATION_CHAMPION not in promoted["metadata"]["annotations"]
    args = serving_container(promoted["spec"]["predictor"])["args"]
    assert "--role=champion" in args and "--role=canary" not in args
    # KServe's stable `churn-predictor` now serves version 2; its webhook refuses a stable model's container name.
    assert "name" not in promoted["spec"]["predictor"] and "name" not in promoted["spec"]["predictor"]["model"]
    assert promoted["spec"]["predictor"].get("minReplicas") == canary_obj["spec"]["predictor"].get("minReplicas")


def test_an_object_with_containers_is_read_too(churn_spec):
    """Objects written before the ServingRuntime shape (or by hand) spell the container out."""
    obj = build_inference_service(_spec(churn_spec, "Standard"), "2", champion_version="1", canary_percent=10)
    for predictor in (obj["spec"]["predictor"], obj["spec"]["canary"][0]["predictor"]):
        model = predictor.pop("model")
        predictor["containers"] = [{"name": "kserve-container", "image": model["image"], "args": model["args"]}]
    view = InferenceServiceView(obj)
    assert [m.version for m in view.served()] == ["1", "2"]
    assert view.container("canary")["args"][-1] == "--role=canary"


def test_a_single_predictor_is_the_champion_at_full_traffic(churn_spec):
    view = InferenceServiceView(build_inference_service(churn_spec, "1"))
    assert view.mode == "single" and view.canary_percent is None
    assert view.served() == [ServedModel("champion", "models:/churn/1", "1")]
    assert view.env("canary") == {}


def test_per_revision_settings_are_read_from_each_predictor(churn_spec):
    obj = build_inference_service(_spec(churn_spec, "Standard"), "2", champion_version="1", canary_percent=10)
    serving_container(obj["spec"]["canary"][0]["predictor"])["env"] = [
        {"name": "SHEPHERD_FAULT_ERROR_RATE", "value": "0.5"},
        {"name": "OTHER", "value": "x"},
    ]
    view = InferenceServiceView(obj)
    assert view.env("canary") == {"SHEPHERD_FAULT_ERROR_RATE": "0.5"}
    assert view.env("champion") == {}
    knative = build_inference_service(_spec(churn_spec, "Knative"), "2", champion_version="1", canary_percent=10)
    assert InferenceServiceView(knative).env("champion") == {}  # the object does not describe it


def test_malformed_objects_are_refused_naming_the_field(churn_spec):
    knative = build_inference_service(_spec(churn_spec, "Knative"), "2", champion_version="1", canary_percent=10)
    del knative["metadata"]["annotations"][ANNOTATION_CHAMPION]
    with pytest.raises(ValueError, match=ANNOTATION_CHAMPION):
        InferenceServiceView(knative).served()
    no_uri = build_inference_service(churn_spec, "1")
    serving_container(no_uri["spec"]["predictor"])["args"] = ["--role=champion"]
    with pytest.raises(ValueError, match="--model_uri"):
        InferenceServiceView(no_uri).served()


def test_in_standard_mode_each_revision_is_reached_through_its_own_service(churn_spec):
    """KServe's Standard status names no URL per revision (its canary has `canaryStatuses` only): the rollout loop's
    direct scrape reads each predictor's Service, as KServe names them; a status that has URLs (Knative, the local
    plane) is read as before."""
    from serving.rollout.loop import revisions

    obj = build_inference_service(_spec(churn_spec, "Standard"), "2", "1", canary_percent=10)
    obj["status"] = {"canaryStatuses": [{"name": "v2", "ready": True, "trafficPercent": 10}]}
    found = {role: (rev.version, rev.url) for role, rev in revisions(obj).items()}
    namespace = churn_spec.deployment.namespace
    assert found == {
        "champion": ("1", f"http://churn-predictor.{namespace}.svc"),
        "canary": ("2", f"http://churn-v2-predictor.{namespace}.svc"),
    }
    obj["status"] = {
        "components": {
            "predictor": {
                "traffic": [
                    {"revisionName": "churn-v1", "percent": 90, "url": "http://127.0.0.1:9001"},
                    {"revisionName": "churn-v2", "percent": 10, "latestRevision": True, "url": "http://127.0.0.1:9002"},
                ]
            }
        }
    }
    assert {role: rev.url for role, rev in revisions(obj).items()} == {
        "champion": "http://127.0.0.1:9001",
        "canary": "http://127.0.0.1:9002",
    }
