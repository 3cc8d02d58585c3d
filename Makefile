# Two commands do everything (see README.md):
#   make demo   set up, then run `specfleet demo`: a local control plane with simulated H100
#               node pools and one real node; the chart installed, its operator pod there;
#               the Prometheus Operator's Prometheus; the examples served by real pods; the
#               autoscaler moves a batch limit (scripts/demo)
#   make test   set up, then run every check: ruff, mypy (strict), unit and e2e tests
# Setup is idempotent: a Python virtualenv in .venv, Debian's packages for the real node, the
# cluster's, the node's, Prometheus's and the Prometheus Operator's binaries built from Go
# modules into ~/.cache/specfleet (once, about 25 minutes), and for the tests only the real
# vLLM (CPU build).

VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: setup setup-python setup-cluster setup-e2e demo demo-down test test-unit lint crds images

setup: setup-python setup-e2e

setup-python: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

setup-cluster:
	@echo "==> Debian packages for the real node (first use: about a minute)"
	scripts/setup-node
	@echo "==> the cluster's, the real node's, Prometheus's and the Prometheus Operator's binaries from Go modules (first use: about 25 minutes)"
	e2e/build

setup-e2e: setup-cluster
	@echo "==> the real vLLM, CPU build, for the tests (first use: about 5 minutes)"
	scripts/setup-vllm

demo: setup-python setup-cluster
	$(BIN)/specfleet demo

demo-down:
	$(BIN)/specfleet demo --down

lint: setup-python
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test-unit: lint
	$(BIN)/pytest -m 'not e2e'

test: setup lint
	$(BIN)/pytest

crds: setup-python
	$(BIN)/specfleet crds --write crds --chart charts/specfleet

# The container images, built here with buildah from a local Debian base (no registry, no
# Docker engine) into OCI archives under ~/.cache/specfleet/images (scripts/images).
images:
	scripts/images
