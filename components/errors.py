"""Shepherd's one error hierarchy.

Each error knows the HTTP status an API answers with and the exit code the CLI ends with, so a
client's mistake is a 4xx / a clear message everywhere, never a 5xx or a traceback. The README's
table of exit codes lists every class (a unit test holds the two together).

A pipeline step runs in a process of its own; `FailureRecord` is how its error's class and exit code
reach the runner (and the CLI's exit code) when that process dies.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

# Set by the local runner for the steps' processes: where a step's Shepherd error is recorded.
FAILURE_RECORD_ENV = "SHEPHERD_FAILURE_RECORD"


class ShepherdError(Exception):
    """Base class: a problem Shepherd can explain to the person who caused it."""

    http_status = 500
    exit_code = 1
    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        if hint is not None:
            self.hint = hint


class SpecError(ShepherdError):
    """The model spec file is missing, malformed, or breaks a rule."""

    http_status = 400
    exit_code = 2


class DataSourceError(ShepherdError):
    """The dataset a spec names cannot be read."""

    http_status = 400
    exit_code = 3


class DataValidationError(ShepherdError):
    """The data broke the spec's expectations; the validation report says which and where."""

    http_status = 422
    exit_code = 4

    def __init__(self, message: str, *, failures: list[str], report_path: str | None = None):
        super().__init__(message)
        self.failures = failures
        self.report_path = report_path


class RegistryError(ShepherdError):
    """The MLflow registry does not hold what was asked for (unknown version, missing tag)."""

    http_status = 404
    exit_code = 5


class PipelineRunError(ShepherdError):
    """A pipeline step failed; the message names the step and where its report is.

    When the step failed with one of Shepherd's errors (`cause`), the run ends with that error's exit
    code: an unreadable source is 3 and data that breaks the rules is 4 whether or not a pipeline ran.
    """

    exit_code = 6

    def __init__(self, message: str, *, hint: str | None = None, cause: FailureRecord | None = None):
        super().__init__(message, hint=hint)
        self.cause = cause
        if cause is not None:
            self.exit_code = cause.exit_code


class ReproducibilityError(ShepherdError):
    """A reproduced training run did not give the recorded result, or its snapshot is corrupt."""

    exit_code = 7


@dataclass(frozen=True)
class FailureRecord:
    """A Shepherd error as a step's process leaves it for the runner: its class, exit code, message and hint."""

    error: str
    exit_code: int
    message: str
    hint: str | None = None

    @classmethod
    def of(cls, exc: ShepherdError) -> FailureRecord:
        return cls(type(exc).__name__, exc.exit_code, str(exc), exc.hint)

    def write(self, path: Path | str) -> None:
        Path(path).write_text(json.dumps(asdict(self)))

    @classmethod
    def read(cls, path: Path | str) -> FailureRecord | None:
        """The record at `path`, or None if no step wrote one (it failed some other way)."""
        path = Path(path)
        if not path.is_file():
            return None
        return cls(**json.loads(path.read_text()))


def records_failure(func):
    """Decorate the logic a pipeline step calls: a ShepherdError escaping `func` is also written as a
    FailureRecord to the file named by $SHEPHERD_FAILURE_RECORD (when a runner set it), then re-raised.

    Outside a run nothing is set and nothing is written; the error itself is unchanged either way.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except ShepherdError as exc:
            target = os.environ.get(FAILURE_RECORD_ENV)
            if target:
                FailureRecord.of(exc).write(target)
            raise

    return wrapper
