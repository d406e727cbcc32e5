"""The payload checks' whole-column fast path decides exactly as the value-by-value rules do, and
every value a JSON reader can produce is either accepted or refused with a message naming it."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kserve.protocol.infer_type import InferInput

from components.model_input import MISSING_CATEGORY, onnx_feeds
from serving.payload import FLOAT32_MAX, PayloadError, PayloadParser


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
        ("total_charges", [FLOAT32_MAX, -FLOAT32_MAX], None),  # float32's extremes
        ("total_charges", [1, 1e39], "instances[1].total_charges: 1e+39 is beyond the float32 range ±3.4e38"),
        ("total_charges", [-3.5e38], "instances[0].total_charges: -3.5e+38 is beyond the float32 range"),
        ("tenure", [1e308, 1e308], "instances[0].tenure: 1e+308 is beyond the float32 range"),  # the sum overflows
        ("tenure", [10**400], "instances[0].tenure: (an integer of about 401 digits) is beyond the float32 range"),
        ("contract", [["Two year"]], "instances[0].contract: expected a string category, got list ['Two year']"),
        ("contract", ["One year", {"a": 1}], "instances[1].contract: expected a string category, got dict"),
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
        with pytest.raises(PayloadError, match="^" + re.escape(error)):
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
    feeds = onnx_feeds(churn_spec, columns)
    assert feeds["total_charges"].dtype == np.float32 and feeds["total_charges"].shape == (2, 1)
    assert math.isnan(feeds["total_charges"][0, 0]) and feeds["total_charges"][1, 0] == 12.5
    assert feeds["contract"][:, 0].tolist() == [MISSING_CATEGORY, "Two year"]


def test_every_column_the_fast_path_accepts_converts_to_finite_float32(parser, churn_spec):
    @settings(max_examples=300, derandomize=True, database=None, deadline=None)
    @given(st.lists(st.one_of(st.integers(-(2**200), 2**200), st.floats()), min_size=1, max_size=5))
    def check(values):
        rows = [{**a_row(churn_spec), "monthly_charges": v} for v in values]
        finite_in_range = all(not (isinstance(v, float) and math.isnan(v)) and abs(v) <= FLOAT32_MAX for v in values)
        if finite_in_range:
            columns = parser.from_v1({"instances": rows})
            assert np.isfinite(onnx_feeds(churn_spec, columns)["monthly_charges"]).all()
        else:
            with pytest.raises(PayloadError, match=r"^instances\[\d\]\.monthly_charges: "):
                parser.from_v1({"instances": rows})

    check()


def v2_inputs(churn_spec, **override) -> list[InferInput]:
    """One-row V2 tensors built as KServe builds them, with some fields replaced."""
    row = a_row(churn_spec)
    inputs = []
    for f in churn_spec.features:
        fields = {"shape": [1], "datatype": "BYTES" if f.categories else "FP32", "data": [row[f.name]]}
        fields.update(override.get(f.name, {}))
        inputs.append(InferInput(f.name, fields["shape"], fields["datatype"], fields["data"]))
    return inputs


@pytest.mark.parametrize(
    ("override", "error"),
    [
        ({"contract": {"shape": [2, 1], "data": [["One year"], ["Two year"]]}}, "inputs[contract].shape: 2 rows"),
        ({"contract": {"shape": [1], "data": [["One year"]]}}, "inputs[contract].data: nested lists"),
        ({"contract": {"shape": [1, 1], "data": [["One year", "x"]]}}, "inputs[contract].data: nested lists"),
        ({"contract": {"shape": [1, 1], "data": [[["One year"]]]}}, "inputs[contract].data[0]: expected a string"),
        ({"contract": {"data": "One year"}}, "inputs[contract].data: expected a list of values, got str"),
        ({"tenure": {"shape": [True]}}, "inputs[tenure].shape: expected [n] or [n, 1], got [True]"),
        ({"tenure": {"shape": 1}}, "inputs[tenure].shape: expected [n] or [n, 1], got 1"),
        ({"tenure": {"shape": ["1"]}}, "inputs[tenure].shape: expected [n] or [n, 1], got ['1']"),
        ({"tenure": {"datatype": "BOOL"}}, "inputs[tenure].datatype: expected a numeric datatype"),
        ({"tenure": {"data": [1e39]}}, "inputs[tenure].data[0]: 1e+39 is beyond the float32 range"),
    ],
)
def test_v2_tensor_fields_are_checked_even_when_kserve_did_not(parser, churn_spec, override, error):
    with pytest.raises(PayloadError, match="^" + re.escape(error)):
        parser.from_v2(v2_inputs(churn_spec, **override))


def test_v2_one_element_rows_are_flattened_for_shape_n_1(parser, churn_spec):
    override = {"contract": {"shape": [1, 1], "data": [["Two year"]]}, "tenure": {"shape": [1, 1], "data": [[7]]}}
    columns = parser.from_v2(v2_inputs(churn_spec, **override))
    assert columns["contract"] == ["Two year"] and columns["tenure"] == [7]


def test_v2_binary_tensors_arrive_as_python_values(parser, churn_spec):
    override = {
        "tenure": {"data": np.array([12.5], dtype=np.float32)},
        "contract": {"data": np.array([b"Two year"], dtype=object)},
        "partner": {"data": np.array([[1]], dtype=np.int64), "shape": [1, 1]},
    }
    columns = parser.from_v2(v2_inputs(churn_spec, **override))
    assert columns["tenure"] == [12.5] and type(columns["tenure"][0]) is float
    assert columns["contract"] == ["Two year"] and columns["partner"] == [1]
    with pytest.raises(PayloadError, match=r"^inputs\[contract\]\.data\[0\]: BYTES element is not UTF-8"):
        parser.from_v2(v2_inputs(churn_spec, contract={"data": np.array([b"\xff"], dtype=object)}))


@pytest.mark.parametrize(("request_id", "error"), [("\ud800", "id: expected Unicode text"), (7, "id: expected")])
def test_v2_request_ids_must_be_text_the_answer_can_echo(parser, churn_spec, request_id, error):
    with pytest.raises(PayloadError, match="^" + error):
        parser.from_v2(v2_inputs(churn_spec), request_id)
