"""The payload checks' whole-column fast path decides exactly as the value-by-value rules do."""

from __future__ import annotations

import math

import numpy as np
import pytest

from components.train import MISSING_CATEGORY
from serving.payload import PayloadError, PayloadParser, to_model_inputs


@pytest.fixture(scope="module")
def parser(churn_spec):
    return PayloadParser(churn_spec)


def a_row(churn_spec) -> dict:
    return {f.name: (f.categories[0] if f.categories else f.min or 0.0) for f in churn_spec.features}


@pytest.mark.parametrize(
    ("feature", "values", "error"),
    [
        ("tenure", [1, 2.5, 0], None),
        ("total_charges", [None, 10.0], None),  # nullable: None is a missing value
        ("total_charges", [1e308, 1e308], None),  # finite values whose sum overflows: still accepted
        ("tenure", [1, None], "instances[1].tenure: null/NaN not allowed"),
        ("tenure", [1, math.nan], "instances[1].tenure: null/NaN not allowed"),
        ("tenure", [math.inf, 1], "instances[0].tenure: expected a finite number"),
        ("tenure", [1, True], "instances[1].tenure: expected a number, got bool"),
        ("tenure", ["3"], "instances[0].tenure: expected a number, got str"),
        ("contract", ["Month-to-month", "Weekly"], "instances[1].contract: unknown category 'Weekly'"),
        ("contract", ["Month-to-month", 3], "instances[1].contract: expected a string category"),
    ],
)
def test_column_checks_name_the_row_and_the_rule(parser, churn_spec, feature, values, error):
    rows = [{**a_row(churn_spec), feature: value} for value in values]
    if error is None:
        assert parser.from_v1({"instances": rows})[feature] == values
    else:
        with pytest.raises(PayloadError, match=error.replace("[", r"\[").replace("]", r"\]")):
            parser.from_v1({"instances": rows})


def test_rows_become_columns_in_feature_order(parser, churn_spec):
    rows = [{**a_row(churn_spec), "tenure": t, "customer_id": f"c{t}"} for t in (5, 7, 9)]
    columns = parser.from_v1({"instances": rows})
    assert list(columns) == churn_spec.feature_names
    assert columns["tenure"] == [5, 7, 9]


def test_model_inputs_turn_missing_values_into_nan_and_the_missing_category(churn_spec):
    columns = {f.name: [f.categories[0] if f.categories else 1] * 2 for f in churn_spec.features}
    columns["total_charges"] = [None, 12.5]
    columns["contract"] = [None, "Two year"]
    feeds = to_model_inputs(churn_spec, columns)
    assert feeds["total_charges"].dtype == np.float32 and feeds["total_charges"].shape == (2, 1)
    assert math.isnan(feeds["total_charges"][0, 0]) and feeds["total_charges"][1, 0] == 12.5
    assert feeds["contract"][:, 0].tolist() == [MISSING_CATEGORY, "Two year"]
