"""Shepherd's one error hierarchy.

Each error knows the HTTP status an API answers with and the exit code the CLI ends with, so a
client's mistake is a 4xx / a clear message everywhere, never a 5xx or a traceback.
"""

from __future__ import annotations


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
    """A pipeline step failed; the message names the step and where its report is."""

    exit_code = 6


class ReproducibilityError(ShepherdError):
    """A reproduced training run did not give the recorded result, or its snapshot is corrupt."""

    exit_code = 7
