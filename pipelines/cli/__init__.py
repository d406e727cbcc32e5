"""`shepherd`: run, compile and submit the training pipeline; inspect and reproduce model versions; run
the local serving plane; watch and steer canary rollouts and drift.

Every user error ends with a message that says what to do and a non-zero exit code (see
`components.errors` and the README's table of exit codes), never a traceback.

One module per command group; each imports `app` from `pipelines.cli.common` (which imports none of
them) and registers its commands on it, so importing this package builds the whole CLI:
`pipelines.cli:app` is the console entry point and `python -m pipelines.cli` runs the same app.
"""

from __future__ import annotations

# isort: off
# Imported for their commands, in the order `shepherd --help` lists them.
from pipelines.cli import runs, plane, history, rollout, drift, feedback, schedule  # noqa: F401

# isort: on
from pipelines.cli.common import app

__all__ = ["app", "main"]


def main() -> None:  # pragma: no cover - console entry
    """Run the CLI as `shepherd`, however it was started (`shepherd`, `python -m pipelines.cli`)."""
    app(prog_name="shepherd")
