# Two commands do everything (see README.md):
#   make demo   set up, then run `specfleet demo`: the operator on a local control plane with
#               simulated H100 node pools, a simulated fleet and Prometheus; the examples are
#               applied and the autoscaler moves a batch limit (scripts/demo)
#   make test   set up, then run every check: ruff, mypy (strict), unit and e2e tests
# Setup is idempotent: a Python virtualenv in .venv, the control plane's binaries built from
# Go modules into ~/.cache/specfleet (once), and Prometheus from Debian.

VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: setup setup-python setup-e2e demo demo-down test test-unit lint crds images

setup: setup-python setup-e2e

setup-python: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

setup-e2e:
	scripts/setup-node
	e2e/build
	@command -v prometheus >/dev/null || scripts/install-prometheus
	scripts/setup-vllm

demo: setup
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
