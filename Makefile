# Two commands do everything (see README.md):
#   make demo   set up, then bring up the local control plane with simulated H100 node pools
#               and apply specfleet's CRDs and examples to it
#   make test   set up, then run every check: ruff, mypy (strict), unit and e2e tests
# Setup is idempotent: a Python virtualenv in .venv, the control plane's binaries built from
# Go modules into ~/.cache/specfleet (once), and Prometheus from Debian.

VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# The demo's cluster has its own name, so the tests (which replace their own cluster) leave
# it alone.
DEMO := SPECFLEET_E2E_CLUSTER=specfleet-demo PYTHON=$(BIN)/python
CLUSTER := $(DEMO) $(BIN)/python e2e/harness.py

.PHONY: setup setup-python setup-e2e demo demo-down test test-unit lint crds

setup: setup-python setup-e2e

setup-python: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

setup-e2e:
	e2e/build
	@command -v prometheus >/dev/null || scripts/install-prometheus
	scripts/setup-vllm

demo: setup
	$(DEMO) e2e/cluster up
	$(BIN)/specfleet crds | $(CLUSTER) kubectl apply --server-side -f -
	$(CLUSTER) kubectl wait --for condition=Established --timeout 60s \
		crd/inferencemodels.specfleet.dev crd/routingpolicies.specfleet.dev
	$(CLUSTER) kubectl apply -f examples/
	$(CLUSTER) kubectl get nodes -L nvidia.com/gpu.product
	$(BIN)/specfleet plan examples/*.yaml
	$(CLUSTER) kubectl get specfleet
	@echo
	@echo "The control plane keeps running. Look around with:"
	@echo "  export KUBECONFIG=$$($(CLUSTER) kubeconfig)"
	@echo "  kubectl get im,rp; kubectl describe im llama-70b"
	@echo "Stop it with: make demo-down"

demo-down:
	$(DEMO) e2e/cluster down

lint: setup-python
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test-unit: lint
	$(BIN)/pytest -m 'not e2e'

test: setup lint
	$(BIN)/pytest

crds: setup-python
	$(BIN)/specfleet crds --write crds
