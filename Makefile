# Shepherd — run `make help` for the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PY := .venv/bin/python
SHEPHERD := .venv/bin/shepherd
PORT ?= 8080
export GX_ANALYTICS_ENABLED := false
# Quiet the libraries' import-time chatter in command output; tests still see every warning they assert.
export PYTHONWARNINGS := ignore::DeprecationWarning,ignore::FutureWarning,ignore::UserWarning

.PHONY: help venv demo run test test-fast e2e-tools compile examples lint format bench clean

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

venv: ## Create .venv (the stack is installed once per machine, then reused)
	@./scripts/venv.sh

demo: venv ## Set up, train the churn model, serve it, and ship a challenger as a 10 % canary
	@echo "==> 1/5 starting the local serving plane on port $(PORT) (KServe model servers + router)"
	@$(SHEPHERD) up --port $(PORT)
	@echo "==> 2/5 training pipeline: the first model becomes @champion and serves 100 %"
	@$(SHEPHERD) run --spec specs/churn.yaml
	@echo "==> 3/5 a challenger with other parameters: promoted, it becomes a canary next to the champion"
	@$(SHEPHERD) run --spec specs/churn.yaml --param C=0.5
	@echo "==> 4/5 real customers through the router: the split follows the InferenceService"
	@$(SHEPHERD) traffic --requests 300
	@echo "==> 5/5 what is served"
	@$(SHEPHERD) status
	@echo "The plane keeps serving on http://127.0.0.1:$(PORT) (try: $(SHEPHERD) --help); stop it with: $(SHEPHERD) down"

run: demo ## Same as demo

test: venv e2e-tools ## Set up and run the whole test suite (as CI does)
	@$(PY) -m pytest

e2e-tools: ## Prometheus and Alertmanager (Debian packages) for the end-to-end tests
	@command -v prometheus >/dev/null && command -v prometheus-alertmanager >/dev/null || { \
	  echo "installing prometheus and prometheus-alertmanager (Debian packages)"; \
	  (apt-get install -y -qq --no-install-recommends prometheus prometheus-alertmanager >/dev/null 2>&1 || \
	   { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus prometheus-alertmanager; }); }

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

bench: venv ## Pipeline cold/warm runs and serving throughput vs MLServer (needs wrk); writes docs/benchmarks.md
	@command -v wrk >/dev/null || { echo "installing wrk (Debian package)"; apt-get install -y -qq wrk; }
	@$(PY) -m benchmarks.pipeline_runs --output docs/benchmarks.md
	@$(PY) -m benchmarks.serving --output docs/benchmarks.md

clean: ## Remove local state (.shepherd); keeps .venv
	rm -rf .shepherd
