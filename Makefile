# Shepherd — run `make help` for the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PY := .venv/bin/python
export GX_ANALYTICS_ENABLED := false
# Quiet the libraries' import-time chatter in command output; tests still see every warning they assert.
export PYTHONWARNINGS := ignore::DeprecationWarning,ignore::FutureWarning,ignore::UserWarning

.PHONY: help venv demo run test test-fast compile examples lint format bench clean

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

venv: ## Create .venv (the stack is installed once per machine, then reused)
	@./scripts/venv.sh

demo: venv ## Set up and run the training pipeline locally on the bundled churn spec
	@$(PY) -m pipelines.cli run --spec specs/churn.yaml
	@$(PY) -m pipelines.cli models churn

run: demo ## Same as demo

test: venv ## Set up and run the whole test suite (as CI does)
	@$(PY) -m pytest

test-fast: venv ## Unit tests only (seconds)
	@$(PY) -m pytest tests/unit

compile: venv ## Compile the DAG to pipelines/training_pipeline.yaml (the golden file)
	@$(PY) -m pipelines.cli compile --output pipelines/training_pipeline.yaml

examples: venv ## Regenerate manifests/examples/ (InferenceServices in both KServe modes)
	@$(PY) -m serving.inference_service manifests/examples

lint: venv ## ruff
	@$(PY) -m ruff check .
	@$(PY) -m ruff format --check components pipelines serving monitoring tests

format: venv ## Apply ruff's fixes and formatting
	@$(PY) -m ruff check --fix .
	@$(PY) -m ruff format components pipelines serving monitoring tests

bench: venv ## Measure cold and warm pipeline runs; writes docs/benchmarks.md
	@$(PY) -m benchmarks.pipeline_runs --output docs/benchmarks.md

clean: ## Remove local state (.shepherd); keeps .venv
	rm -rf .shepherd
