"""Compiling the DAG to the YAML a KFP server runs (and the golden file under test)."""

from __future__ import annotations

from pathlib import Path

from kfp import compiler

from pipelines.pipeline import training_pipeline

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "training_pipeline.yaml"


def compile_pipeline(output: Path = DEFAULT_OUTPUT) -> Path:
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(training_pipeline, str(output))
    return output
