"""The Great Expectations side of validation: the spec's rules as a GE suite, and running it.

Kept apart from `components.validate` (the report) so GE is imported only where validation runs.
"""

import os
from typing import Any, ClassVar

# Set before GE is imported: it reads the setting at import time and would otherwise try to phone home.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import great_expectations as gx
import great_expectations.expectations as gxe
import numpy as np
import pandas as pd
from great_expectations.data_context.types.base import ProgressBarsConfig
from great_expectations.execution_engine import PandasExecutionEngine
from great_expectations.expectations.expectation import ColumnMapExpectation
from great_expectations.expectations.metrics.map_metric_provider import (
    ColumnMapMetricProvider,
    column_condition_partial,
)

from components.spec import ModelSpec


class ColumnValuesNumeric(ColumnMapMetricProvider):
    """Per row: the value is a real number (not a bool, not a string) and, if asked, a whole one."""

    condition_metric_name = "column_values.shepherd_numeric"
    condition_value_keys = ("integral",)

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column: pd.Series, integral: bool, **kwargs: Any) -> pd.Series:
        # GE drops the nulls before calling this, so only present values are judged.
        if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
            ok = pd.Series(True, index=column.index)
        else:  # an object column: judge each value, a "34" string is not a number
            ok = column.map(lambda v: isinstance(v, int | float | np.number) and not isinstance(v, bool))
        if integral:
            # A pandas int column with nulls arrives as float64: accept it when every value is whole.
            ok &= pd.to_numeric(column.where(ok), errors="coerce").mod(1).eq(0)
        return ok


class ExpectColumnValuesToBeNumeric(ColumnMapExpectation):
    """Expect numeric values (whole numbers when `integral`), one rule for the spec's int/float type.

    GE has no such rule: ExpectColumnValuesToBeInTypeList rejects float64 for an int column that has
    nulls, and would need a second, separate integral check that fails again for a string column.
    """

    integral: bool = False

    map_metric: ClassVar[str] = "column_values.shepherd_numeric"
    success_keys: ClassVar[tuple[str, ...]] = ("integral", "mostly")


def build_suite(spec: ModelSpec) -> gx.ExpectationSuite:
    """Translate the spec's feature, target, entity and table rules into a GE expectation suite.

    Each expectation carries `meta.rule` (exists/type/range/nulls/categories/labels/unique/row_count)
    and `meta.text` (the rule in words), which the report uses to explain its result.
    """
    expectations: list[gxe.Expectation] = []

    def add(rule: str, text: str, expectation: gxe.Expectation) -> None:
        expectation.meta = {"rule": rule, "text": text, "order": len(expectations)}
        expectations.append(expectation)

    for feature in spec.features:
        col = feature.name
        add("exists", "column exists", gxe.ExpectColumnToExist(column=col))
        if feature.type == "category":
            add(
                "categories",
                f"values in {feature.categories}",
                gxe.ExpectColumnValuesToBeInSet(column=col, value_set=list(feature.categories or [])),
            )
        else:
            add(
                "type",
                f"{feature.type} values",
                ExpectColumnValuesToBeNumeric(column=col, integral=feature.type == "int"),
            )
            if feature.min is not None or feature.max is not None:
                add(
                    "range",
                    _range_text(feature.min, feature.max),
                    gxe.ExpectColumnValuesToBeBetween(column=col, min_value=feature.min, max_value=feature.max),
                )
        allowed = feature.max_null_fraction
        add(
            "nulls",
            f"at most {allowed:.1%} nulls" if allowed else "no nulls",
            # `mostly` is the fraction that must be non-null; 1.0 means not a single null.
            gxe.ExpectColumnValuesToNotBeNull(column=col, mostly=1.0 - allowed),
        )

    target = spec.target
    add("exists", "column exists", gxe.ExpectColumnToExist(column=target.column))
    add("nulls", "no nulls", gxe.ExpectColumnValuesToNotBeNull(column=target.column))
    if spec.task == "regression":
        add("type", "numeric values", ExpectColumnValuesToBeNumeric(column=target.column))
        if target.min is not None or target.max is not None:
            add(
                "range",
                _range_text(target.min, target.max),
                gxe.ExpectColumnValuesToBeBetween(column=target.column, min_value=target.min, max_value=target.max),
            )
    else:
        allowed = target.classes or [target.positive, target.negative]
        add("labels", f"values in {allowed}", gxe.ExpectColumnValuesToBeInSet(column=target.column, value_set=allowed))

    key = spec.entity.key
    add("exists", "column exists", gxe.ExpectColumnToExist(column=key))
    add("nulls", "no nulls", gxe.ExpectColumnValuesToNotBeNull(column=key))
    add("unique", "values unique", gxe.ExpectColumnValuesToBeUnique(column=key))

    rows = spec.validation
    add(
        "row_count",
        "rows " + _range_text(rows.min_rows, rows.max_rows).removeprefix("values "),
        gxe.ExpectTableRowCountToBeBetween(min_value=rows.min_rows, max_value=rows.max_rows),
    )
    return gx.ExpectationSuite(name=f"shepherd-{spec.name}", expectations=expectations)


def run_suite(df: pd.DataFrame, suite: gx.ExpectationSuite) -> list[Any]:
    """Run `suite` on `df` in a fresh in-memory GE context; returns GE's expectation results."""
    # A fresh in-memory context per call: nothing on disk, no state shared between runs (~20 ms).
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (
        context.data_sources.add_pandas("frame")
        .add_dataframe_asset("frame")
        .add_batch_definition_whole_dataframe("all rows")
    )
    # GE 1.x refuses to run a suite or definition that is not registered with the context.
    suite = context.suites.add(suite)
    definition = context.validation_definitions.add(gx.ValidationDefinition(name="shepherd", data=batch, suite=suite))
    # SUMMARY: counts plus the first 20 offending values; COMPLETE would list every offending row.
    return definition.run(batch_parameters={"dataframe": df}, result_format="SUMMARY").results


def _range_text(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f"values between {low:g} and {high:g}"
    return f"values at least {low:g}" if low is not None else f"values at most {high:g}"
