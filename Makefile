# Shepherd — run `make help` for the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PY := .venv/bin/python
SHEPHERD := .venv/bin/shepherd
PORT ?= 8080
DEMO_LABELS ?= $${SHEPHERD_HOME:-.shepherd}/demo-labels.csv
export GX_ANALYTICS_ENABLED := false
# Quiet the libraries' import-time chatter in command output; tests still see every warning they assert.
export PYTHONWARNINGS := ignore::DeprecationWarning,ignore::FutureWarning,ignore::UserWarning

.PHONY: help venv demo run test background-builds test-fast e2e-tools cluster-up cluster-down compile examples lint format bench infra-check manifests monitoring-assets chart image image-docker tools clean

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

venv: ## Create .venv (the stack is installed once per machine, then reused)
	@./scripts/venv.sh

demo: venv ## Set up, train, serve, and tell the whole story: promote, roll back, drift + labels -> retrain -> promote
	@echo "==> 1/12 starting the local serving plane on port $(PORT) (KServe model servers, router, drift service)"
	@$(SHEPHERD) up --port $(PORT)
	@echo "==> 2/12 training pipeline: the first model becomes @champion and serves 100 %"
	@$(SHEPHERD) run --spec specs/churn.yaml
	@echo "==> 3/12 a challenger with other parameters: promoted, it becomes a canary at 10 % next to the champion"
	@$(SHEPHERD) run --spec specs/churn.yaml --param C=0.5
	@$(SHEPHERD) traffic --requests 200
	@echo "==> 4/12 the rollout loop steps the healthy canary up while its gates pass, then promotes it"
	@$(SHEPHERD) rollout watch churn --traffic 25 --timeout 300
	@echo "==> 5/12 a third challenger, and a rollback drill: its canary fails every request"
	@$(SHEPHERD) run --spec specs/churn.yaml --param C=2.0
	@$(SHEPHERD) rollout fault churn --error-rate 1.0 || echo "(no new canary: this challenger was trained by an earlier demo; make clean for the whole story)"
	@$(SHEPHERD) rollout watch churn --traffic 25 --timeout 300
	@echo "==> 6/12 a shifted population reaches the champion: new month-to-month customers no model learned from"
	@$(SHEPHERD) traffic --requests 120 --batch 5 --held-out --where "contract == 'Month-to-month' and tenure < 12" --labels-out $(DEMO_LABELS)
	@sleep 7  # the drift service computes every 5 s
	@$(SHEPHERD) drift status churn
	@$(SHEPHERD) drift check churn --no-retrain
	@echo "==> 7/12 a while later their real outcomes (the table's own churn column) come back as feedback"
	@$(SHEPHERD) feedback churn $(DEMO_LABELS)
	@sleep 7  # live quality is computed with drift, every 5 s
	@$(SHEPHERD) quality status churn
	@echo "==> 8/12 the champion breaks its spec's bounds on live labels: one retraining run, on the source and the fresh labelled rows, judged on the most recent rows"
	@$(SHEPHERD) quality check churn --wait || true
	@echo "==> 9/12 the retrained model as a canary: the segment keeps coming, its labels too"
	@$(SHEPHERD) traffic --requests 120 --batch 5 --held-out --where "contract == 'Month-to-month' and tenure < 12" --labels-out $(DEMO_LABELS)
	@sleep 2 && $(SHEPHERD) feedback churn $(DEMO_LABELS) && sleep 7
	@$(SHEPHERD) quality status churn
	@echo "==> 10/12 the rollout loop judges the canary (error rate, latency, drift) and promotes it"
	@$(SHEPHERD) rollout watch churn --traffic 25 --timeout 300 || true
	@echo "==> 11/12 which version served when, and why"
	@$(SHEPHERD) history churn
	@echo "==> 12/12 what is served now"
	@$(SHEPHERD) status
	@echo "The plane keeps serving on http://127.0.0.1:$(PORT) (try: $(SHEPHERD) --help); stop it with: $(SHEPHERD) down"

run: demo ## Same as demo

test: background-builds venv e2e-tools ## Set up and run the whole test suite (as CI does), in two lanes at once
	@./scripts/test-lanes.sh

CACHE = $${SHEPHERD_CACHE:-$$HOME/.cache/shepherd}

background-builds:
	@# The image and the Go/pip tools build in two background lanes while the venv is made and the tests that
	@# need neither run (tests/conftest.py runs the image and cluster tests last; each waits on its tool's lock).
	@# Their logs: $(CACHE)/image-build.log and $(CACHE)/warm-tools.log. A warm machine finishes both at once.
	@# A lane already running (.ci/run starts them before `make lint`) is not started twice.
	@mkdir -p $(CACHE); (flock -n $(CACHE)/image-lane.lock ./scripts/image.sh >> $(CACHE)/image-build.log 2>&1 &); \
	  (flock -n $(CACHE)/tools-lane.lock ./scripts/warm-tools.sh >> $(CACHE)/warm-tools.log 2>&1 &)

# apt waits for dpkg's lock: the image build in the background may be installing podman at the same time.
APT_WAIT = -o DPkg::Lock::Timeout=1200
E2E_PACKAGES = prometheus prometheus-alertmanager postgresql containerd runc conntrack containernetworking-plugins

e2e-tools: ## Prometheus, Alertmanager, PostgreSQL and the test node's containerd, runc, conntrack, CNI (Debian packages)
	@command -v prometheus >/dev/null && command -v prometheus-alertmanager >/dev/null && \
	  command -v containerd >/dev/null && command -v conntrack >/dev/null && [ -x /usr/lib/cni/bridge ] && \
	  ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || { \
	  echo "installing $(E2E_PACKAGES) (Debian packages)"; \
	  (apt-get install $(APT_WAIT) -y -qq --no-install-recommends $(E2E_PACKAGES) >/dev/null 2>&1 || \
	   { apt-get update -qq && apt-get install $(APT_WAIT) -y -qq --no-install-recommends $(E2E_PACKAGES); }); }

cluster-up: venv e2e-tools ## A real single-node Kubernetes here (kubelet on containerd, controllers, kube-proxy); prints KUBECONFIG
	@./scripts/cluster-tools.sh >/dev/null
	@$(PY) -m tests.support.node up --dir .shepherd/cluster

cluster-down: venv ## Stop what cluster-up started (its pods first)
	@$(PY) -m tests.support.node down --dir .shepherd/cluster

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

bench: venv e2e-tools ## Pipeline runs, serving vs MLServer (wrk), serving per task, time to rollback, feedback ingestion + label join; writes docs/benchmarks.md
	@command -v wrk >/dev/null || { echo "installing wrk (Debian package)"; apt-get install -y -qq wrk; }
	@$(PY) -m benchmarks.pipeline_runs --output docs/benchmarks.md
	@$(PY) -m benchmarks.pipeline_runners --output docs/benchmarks.md
	@$(PY) -m benchmarks.serving --output docs/benchmarks.md
	@$(PY) -m benchmarks.tasks --output docs/benchmarks.md
	@$(PY) -m benchmarks.rollback --output docs/benchmarks.md
	@$(PY) -m benchmarks.feedback --output docs/benchmarks.md
	@$(PY) -m benchmarks.learning_loop --output docs/benchmarks.md

infra-check: venv ## kustomize overlays vs a real apiserver, terraform (tofu fmt, hcl2 contract, checkov), workflows (actionlint)
	@$(PY) -m pytest tests/cluster/test_manifests.py tests/unit/test_terraform.py tests/unit/test_workflows.py

manifests: ## Render an overlay: make manifests ENV=prod | kubectl apply --server-side -f -
	@$$(scripts/go-tools.sh kubectl) kustomize --load-restrictor=LoadRestrictionsNone manifests/overlays/$(or $(ENV),dev)

monitoring-assets: venv ## Regenerate Prometheus rules + Grafana dashboards (and the Helm chart's copies) from specs/
	@$(PY) -m monitoring.rules --output monitoring/rules/shepherd.rules.yaml --helm-output helm/shepherd/files/prometheus-rules.yaml
	@$(PY) -m monitoring.dashboards --output monitoring/dashboards --helm-output helm/shepherd/files/dashboards

chart: venv ## Helm chart + Dockerfile: lint, render, dry-run and RBAC against a real kube-apiserver, checkov, hadolint
	@$(PY) -m pytest tests/cluster/test_helm_chart.py tests/cluster/test_rbac.py tests/unit/test_dockerfile.py

image: ## Build (or reuse) the one Shepherd image here with buildah, no Docker daemon or registry needed
	@./scripts/image.sh

image-docker: ## Build the image with Docker on the published base (python:3.11-slim-bookworm)
	docker build -t $$($(PY) -c 'from components.platform import PLATFORM_IMAGE; print(PLATFORM_IMAGE)') .

tools: ## Fetch the pinned helm, kubectl, hadolint and checkov into ~/.cache/shepherd
	@for t in helm kubectl hadolint checkov; do ./scripts/go-tools.sh $$t; done

clean: ## Remove local state (.shepherd); keeps .venv
	rm -rf .shepherd
