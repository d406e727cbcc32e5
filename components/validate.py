"""Data validation: the spec's rules become a Great Expectations suite, run on a pandas frame.

The outcome is a `ValidationReport` with one plain sentence per broken rule, written next to the run
as `validation.md` (for people) and `validation.json` (for tools). A column that is missing or has the
wrong type is reported once: its other rules would only fail again, or raise, for the same reason.
"""

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Opt out of GE usage analytics wherever this runs (pipeline containers too), before GE is imported.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import numpy as np
import pandas as pd
from kfp import dsl

from components.adapter import step
from components.errors import DataValidationError, records_failure
from components.spec import ModelSpec

# Rules whose failure explains every other failure on the same column.
ROOT_RULES = ("exists", "type")
SKIP_REASONS = {"exists": "the column is missing", "type": "the column has the wrong type"}
FAILURES_IN_MESSAGE = 3
PARTIAL_LIST_SIZE = 20  # how many offending values GE's SUMMARY result format lists


@dataclass
class ValidationReport:
    """Outcome of validating one frame against one spec."""

    passed: bool
    failures: list[str]
    rows: int
    results: list[dict] = field(default_factory=list)


def validate_frame(df: pd.DataFrame, spec: ModelSpec) -> ValidationReport:
    """Run the spec's suite on `df`; never raises for bad data, the report says what is wrong."""
    # Imported here, not at module level: GE costs ~1.6 s to import, and every process that only
    # builds or compiles the DAG (the CLI, `shepherd compile`) imports this module.
    from components.gx_suite import build_suite, run_suite

    suite = build_suite(spec)
    try:
        raw = run_suite(df, suite)
    except Exception as exc:
        # GE itself failed (not one expectation): still give the caller a report, not a traceback.
        message = f"great expectations could not run the suite: {type(exc).__name__}: {exc}"
        return ValidationReport(passed=False, failures=[message], rows=len(df))

    # GE returns results in its own order; put them back in the suite's (spec) order.
    results = sorted((_summarize(r) for r in raw), key=lambda r: r["order"])
    for r in results:
        if r["rule"] == "type" and not r["success"] and not r["exception"] and r["column"] in df.columns:
            _count_text_that_is_not_a_number(r, df[r["column"]])
    # Columns whose root rule failed: report only that rule, mark the rest as not judged.
    broken: dict[str, str] = {}
    for rule in ROOT_RULES:
        for r in results:
            if r["rule"] == rule and not r["success"] and r["column"] not in broken:
                broken[r["column"]] = rule
    failures = []
    for r in results:
        if r["success"]:
            continue
        if r["column"] in broken and broken[r["column"]] != r["rule"]:
            r["skipped"] = SKIP_REASONS[broken[r["column"]]]
            continue
        failures.append(_explain(r))
    return ValidationReport(passed=not failures, failures=failures, rows=len(df), results=results)


def write_report(report: ValidationReport, directory: Path) -> Path:
    """Write `validation.md` and `validation.json` into `directory`; return the markdown path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "validation.json").write_text(json.dumps(asdict(report), indent=2, default=str))

    verdict = "PASSED" if report.passed else f"FAILED ({len(report.failures)} rule(s) broken)"
    lines = [
        "# Data validation",
        "",
        f"**Verdict: {verdict}**",
        "",
        f"Rows: {report.rows}",
        "",
    ]
    if report.failures:
        lines += ["## Failures", "", *(f"- {_md(f)}" for f in report.failures), ""]
    lines += ["## Rules", "", "| Column | Rule | Result | Observed |", "|---|---|---|---|"]
    for r in report.results:
        outcome = "pass" if r["success"] else ("not checked" if r.get("skipped") else "**FAIL**")
        lines.append(f"| {_md(r['column'] or '(table)')} | {_md(r['text'])} | {outcome} | {_md(_observed_text(r))} |")
    path = directory / "validation.md"
    path.write_text("\n".join(lines) + "\n")
    return path


@records_failure
def raise_if_failed(report: ValidationReport, report_path: Path | str | None = None) -> None:
    """Raise DataValidationError naming the first broken rules when the report did not pass."""
    if report.passed:
        return
    shown = "; ".join(report.failures[:FAILURES_IN_MESSAGE])
    more = len(report.failures) - FAILURES_IN_MESSAGE
    if more > 0:
        shown += f"; and {more} more"
    raise DataValidationError(
        f"data validation failed: {len(report.failures)} rule(s) broken: {shown}",
        failures=list(report.failures),
        report_path=None if report_path is None else str(report_path),
    )


# --- internals ---------------------------------------------------------------------------------------


def _summarize(result: Any) -> dict:
    """One GE result as a small JSON-able dict (GE's own dicts carry numpy values and tracebacks)."""
    config = result.expectation_config
    observed = {
        k: _plain(v)
        for k, v in (result.result or {}).items()
        if k in ("observed_value", "element_count", "unexpected_count", "unexpected_percent", "missing_count")
    }
    if "partial_unexpected_list" in (result.result or {}):
        observed["examples"] = _examples(result.result["partial_unexpected_list"])
    return {
        "expectation": config.type,
        "column": config.kwargs.get("column"),
        "rule": config.meta["rule"],
        "text": config.meta["text"],
        "order": config.meta["order"],
        "kwargs": {k: _plain(v) for k, v in config.kwargs.items() if k not in ("column", "batch_id")},
        "success": bool(result.success),
        "observed": observed,
        "exception": _exception_message(result.exception_info),
    }


def _count_text_that_is_not_a_number(r: dict, column: pd.Series) -> None:
    """Add to a failed type rule the rows whose text does not read as a number, with examples.

    One bad value makes pandas read a whole CSV column as text, so GE's count ("7043 of 7043 rows are
    strings", e.g. '1', '34') hides the few values that are actually wrong; these are what to fix.
    """
    present = column.dropna()
    text = present[present.map(lambda v: isinstance(v, str))]
    if text.empty:
        return
    unreadable = text[pd.to_numeric(text, errors="coerce").isna()]
    r["observed"]["not_numbers"] = len(unreadable)
    r["observed"]["not_number_examples"] = _examples(unreadable.tolist())


def _exception_message(info: Any) -> str | None:
    # GE records either one {raised_exception, exception_message, ...} or one such dict per metric.
    if not isinstance(info, dict):
        return None
    entries = [info] if "raised_exception" in info else [v for v in info.values() if isinstance(v, dict)]
    messages = [e.get("exception_message") for e in entries if e.get("raised_exception")]
    return "; ".join(dict.fromkeys(str(m) for m in messages)) or None


def _explain(r: dict) -> str:
    """The failed rule as one sentence naming the column, the rule and what was seen."""
    col, rule, seen, kw = r["column"], r["rule"], r["observed"], r["kwargs"]
    if rule == "exists":
        return f"column {col!r} is missing"
    if r["exception"]:
        return f"{col or 'table'}: rule '{r['text']}' could not be checked: {r['exception']}"
    bad, total = seen.get("unexpected_count"), seen.get("element_count")
    shown = seen.get("examples", [])
    examples = ", ".join(repr(v) for v in shown)
    if rule == "type":
        head = f"{col}: expected {r['text']}"
        if seen.get("not_numbers"):  # name the text that is not a number, not every string in the column
            unreadable = ", ".join(repr(v) for v in seen["not_number_examples"])
            return f"{head}, found strings: {seen['not_numbers']} of {total} rows are not numbers (e.g. {unreadable})"
        if seen.get("not_numbers") == 0 and all(isinstance(v, str) for v in shown):
            return f"{head}, found numbers stored as strings in {bad} of {total} rows (e.g. {examples})"
        kinds = " and ".join(sorted({_kind(v) for v in shown}))
        return f"{head}, found {kinds} in {bad} of {total} rows (e.g. {examples})"
    if rule == "range":
        return f"{col}: expected {r['text']}; {bad} of {total} rows outside (e.g. {examples})"
    if rule in ("categories", "labels"):
        what = "categories" if rule == "categories" else "labels"
        expected = kw.get("value_set")
        # The examples come from the first 20 offending rows: the list is complete only up to 20.
        if bad is not None and bad > PARTIAL_LIST_SIZE:
            return f"{col}: unknown {what} in {bad} rows (e.g. {shown}); expected one of {expected}"
        rows = "1 row" if bad == 1 else f"{bad} rows"
        return f"{col}: unknown {what} {shown} in {rows}; expected one of {expected}"
    if rule == "nulls":
        share = (seen.get("unexpected_percent") or 0.0) / 100
        allowed = 1.0 - kw.get("mostly", 1.0)
        if allowed <= 0:
            return f"{col}: {bad} null(s) ({share:.2%}), none allowed"
        return f"{col}: {share:.1%} nulls, at most {allowed:.1%} allowed"
    if rule == "unique":
        return f"{col}: {bad} rows share their value with another row (e.g. {examples})"
    if rule == "row_count":
        return f"table: {seen.get('observed_value')} rows, expected {r['text'].removeprefix('rows ')}"
    return f"{col or 'table'}: rule '{r['text']}' failed ({seen})"


def _observed_text(r: dict) -> str:
    seen = r["observed"]
    if r.get("skipped"):
        return r["skipped"]
    if r["exception"]:
        return f"error: {r['exception']}"
    if "observed_value" in seen:
        return str(seen["observed_value"])
    if "unexpected_count" in seen:
        pct = seen.get("unexpected_percent") or 0.0
        return f"{seen['unexpected_count']} of {seen.get('element_count')} rows ({pct:.2f}%)"
    return ""


def _kind(value: Any) -> str:
    if isinstance(value, str):
        return "strings"
    if isinstance(value, bool):
        return "booleans"
    if isinstance(value, int | float):
        return "non-integral numbers"
    return f"{type(value).__name__} values"


def _examples(values: list, limit: int = 5) -> list:
    distinct = dict.fromkeys(
        v if v is None or isinstance(v, str | int | float) else str(v) for v in map(_plain, values)
    )
    return list(distinct)[:limit]


def _plain(value: Any) -> Any:
    # numpy scalars are not JSON-able; lists (value sets) stay lists, anything odd becomes its str.
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


@step
def validate_op(spec_yaml: str, training_set: dsl.Input[dsl.Dataset], report: dsl.Output[dsl.Markdown]):
    """Check the training set against the spec's rules; on any broken rule write the report and stop."""
    from pathlib import Path

    import pandas as pd

    from components.progress import say
    from components.spec import parse_spec
    from components.validate import raise_if_failed, validate_frame, write_report

    spec = parse_spec(spec_yaml)
    result = validate_frame(pd.read_parquet(training_set.path), spec)
    directory = Path(report.path).parent
    markdown = write_report(result, directory)
    Path(report.path).write_text(markdown.read_text())
    report.metadata.update({"passed": result.passed, "failures": len(result.failures)})
    if result.passed:
        say(f"validate: {result.rows} rows pass all {len(result.results)} rules")
        return
    say(f"validate: {len(result.failures)} rule(s) broken; report: {markdown}")
    for line in result.failures:
        say(f"  - {line}")
    raise_if_failed(result, markdown)
