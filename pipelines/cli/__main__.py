"""`python -m pipelines.cli ...` is `shepherd ...`: the same app, commands and exit codes."""

from pipelines.cli import main

main()
