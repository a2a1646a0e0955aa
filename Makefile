# Two commands a newcomer runs: `make demo` and `make test`. Everything else is a step of those.
# On a machine with only Python 3.11, the first run bootstraps uv (pinned) and the pinned environments.
SHELL := /bin/bash
PYTHON ?= python3.11
UV_VERSION := 0.13.9
BOOT := .venv-boot
UV := $(BOOT)/bin/uv
VENV := .venv
SAMVENV := .venv-sam
PY := $(VENV)/bin/python
export UV_COMPILE_BYTECODE := 1
export SAM_CLI_TELEMETRY := 0
export AWS_EC2_METADATA_DISABLED := true
export AWS_DEFAULT_REGION ?= us-east-1

.PHONY: help demo serve test lint typecheck template-check unit integration e2e build bench chaos clean

help:
	@echo "make demo   run the sample events through the local stack"
	@echo "make test   ruff, mypy, cfn-lint, sam validate --lint, sam build, pytest (unit, integration, e2e, build)"
	@echo "make serve  run the local stack in the foreground"
	@echo "make build  sam build (no Docker needed)"
	@echo "make bench  benchmarks (JSON figures in bench/results.json)"

$(UV):
	$(PYTHON) -m venv $(BOOT)
	$(BOOT)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# The app environment: pinned by uv.lock, Genesys SDK included (config sync and its tests need it).
$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --extra genesys --python $(PYTHON)
	@touch $@

# SAM CLI in its own environment: it pins click/watchdog versions that clash with the Genesys SDK.
$(SAMVENV)/.synced: $(UV) tools/sam/requirements.txt
	$(UV) venv --quiet --allow-existing --python $(PYTHON) $(SAMVENV)
	$(UV) pip install --quiet --python $(SAMVENV)/bin/python -r tools/sam/requirements.txt
	@touch $@

demo: $(VENV)/.synced
	$(VENV)/bin/relay local demo

serve: $(VENV)/.synced
	$(VENV)/bin/relay local serve

lint: $(VENV)/.synced
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(VENV)/.synced
	$(VENV)/bin/mypy

template-check: $(VENV)/.synced $(SAMVENV)/.synced
	$(VENV)/bin/cfn-lint template.yaml
	$(SAMVENV)/bin/sam validate --lint

unit: $(VENV)/.synced
	$(PY) -m pytest tests/unit -q

integration: $(VENV)/.synced
	$(PY) -m pytest tests/integration -q

e2e: $(VENV)/.synced
	$(PY) -m pytest tests/e2e -q

# `build` first: tests/build checks the artifacts sam build makes, loaded the way Lambda loads them.
test: lint typecheck template-check build
	$(PY) -m pytest -q -n 2 --dist loadfile

build: $(SAMVENV)/.synced
	PATH="$$(dirname $$(command -v $(PYTHON))):$$PATH" $(SAMVENV)/bin/sam build

bench: $(VENV)/.synced
	$(PY) -m bench.run

chaos: $(VENV)/.synced
	$(PY) bench/chaos.py

clean:
	rm -rf $(VENV) $(SAMVENV) $(BOOT) .aws-sam .pytest_cache .mypy_cache .ruff_cache
