# Two commands a newcomer runs: `make demo` and `make test`. Everything else is a step of those.
# The first run bootstraps uv (pinned) and the pinned environments from a CPython 3.13 found on its own.
SHELL := /bin/bash
# Python 3.13 everywhere: what the tests run on is what Lambda runs (template.yaml's Runtime).
# PYTHON=/path/to/python3.13 overrides the search (tools/find-python: PATH, then pyenv).
PYTHON ?= $(shell tools/find-python)
# The Lambda architecture to build for and deploy (template.yaml's Architecture parameter).
ARCH ?= arm64
# The bootstrap environment: uv, and the pip that fetches the layers' wheels (layers/wheels.mk), so
# that a Python 3.13 without pip of its own builds too. Both pinned with their hashes in
# tools/boot/requirements.txt (compiled from requirements.in, like the other tools).
BOOT := .venv-boot
UV := $(BOOT)/bin/uv
VENV := .venv
SAMVENV := .venv-sam
CHECKOVVENV := .venv-checkov
PY := $(VENV)/bin/python
# Bytecode is cached as Python does by default, whatever the caller's environment says: with
# PYTHONDONTWRITEBYTECODE set, every test worker rewrote every test file's assertions (12 s of CPU to
# collect instead of 4) and every process the tests start compiled the relay afresh.
unexport PYTHONDONTWRITEBYTECODE
export SAM_CLI_TELEMETRY := 0
export AWS_EC2_METADATA_DISABLED := true
export AWS_DEFAULT_REGION ?= us-east-1

define NO_PYTHON
No CPython 3.13 found (looked for python3.13 on PATH, then in pyenv).
Install one, for example `pyenv install 3.13.0`, or your system's python3.13 package
(Debian/Ubuntu: python3.13 python3.13-venv), or name it: make PYTHON=/path/to/python3.13 ...
endef
export NO_PYTHON
REQUIRE_PYTHON = @test -n "$(PYTHON)" || { echo "$$NO_PYTHON" >&2; exit 1; }

ifeq ($(filter $(ARCH),arm64 x86_64),)
$(error ARCH must be arm64 or x86_64, not '$(ARCH)')
endif

.PHONY: help demo serve test lint typecheck template-check unit integration e2e build build-x86_64 bench chaos clean

help:
	@echo "make demo   run the sample events through the local stack"
	@echo "make test   ruff, mypy, cfn-lint, sam validate --lint, checkov, sam build, pytest (unit, integration, e2e, build)"
	@echo "make serve  run the local stack in the foreground"
	@echo "make build  sam build for ARCH=$(ARCH) (arm64 or x86_64; no Docker needed)"
	@echo "make bench  benchmarks (JSON figures in bench/results.json)"
	@echo "make chaos  the chaos run and the ordering proof at full size (one JSON line each)"

$(UV): tools/boot/requirements.txt
	$(REQUIRE_PYTHON)
	$(PYTHON) -m venv $(BOOT)
	$(BOOT)/bin/pip install --quiet --disable-pip-version-check --require-hashes -r tools/boot/requirements.txt
	@touch $@

# The app environment: pinned by uv.lock, Genesys SDK included (config sync and its tests need it).
# All its bytecode compiled at once, on every core: the SDK alone is 6,700 modules, which every
# config-sync process imports (16 s compiled at import, 4 s precompiled), several of them at once as
# the tests start. The tools' environments below compile what they import, when they first do.
$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	$(REQUIRE_PYTHON)
	$(UV) sync --frozen --compile-bytecode --extra genesys --python $(PYTHON)
	@touch $@

# SAM CLI in its own environment: it pins click/watchdog versions that clash with the Genesys SDK.
# --clear: a new interpreter or requirements file starts the environment afresh.
$(SAMVENV)/.synced: $(UV) tools/sam/requirements.txt
	$(REQUIRE_PYTHON)
	$(UV) venv --quiet --clear --python $(PYTHON) $(SAMVENV)
	$(UV) pip install --quiet --python $(SAMVENV)/bin/python --require-hashes -r tools/sam/requirements.txt
	@touch $@

# checkov (the CloudFormation/SAM security scanner) in its own environment too: it pins boto3 and more.
$(CHECKOVVENV)/.synced: $(UV) tools/checkov/requirements.txt
	$(REQUIRE_PYTHON)
	$(UV) venv --quiet --clear --python $(PYTHON) $(CHECKOVVENV)
	$(UV) pip install --quiet --python $(CHECKOVVENV)/bin/python --require-hashes -r tools/checkov/requirements.txt
	@touch $@

# Silent (@): stdout is the command's own, one JSON line (demo) or the ready line (serve).
demo: $(VENV)/.synced
	@$(VENV)/bin/relay local demo

serve: $(VENV)/.synced
	@$(VENV)/bin/relay local serve

lint: $(VENV)/.synced
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(VENV)/.synced
	$(VENV)/bin/mypy

# Suppressions live in template.yaml, each next to the resource it concerns, with its reason.
template-check: $(VENV)/.synced $(SAMVENV)/.synced $(CHECKOVVENV)/.synced
	$(VENV)/bin/cfn-lint template.yaml
	$(SAMVENV)/bin/sam validate --lint
	tools/checkov/scan $(CHECKOVVENV) template.yaml

unit: $(VENV)/.synced
	$(PY) -m pytest tests/unit -q

integration: $(VENV)/.synced
	$(PY) -m pytest tests/integration -q

e2e: $(VENV)/.synced
	$(PY) -m pytest tests/e2e -q

# The checks and the builds before the tests: tests/build checks the artifacts sam build makes. The
# deployable build (ARCH, arm64 by default) cannot be imported on an x86_64 machine, so an x86_64 twin
# is built too and imported the way Lambda loads it; the arm64 build is checked by wheel tags and ELF
# headers. Checks and builds run two at a time (they share nothing but the environments, each made
# once; mostly CPU-bound, so this gains seconds, not minutes, on two cores). Then the tests: three
# workers on two cores, whole files each, in the order tests/conftest.py gives them (the end-to-end
# files spend much of their time waiting on subprocesses, queues and retry delays, so two workers
# left CPU idle: a fresh clone's make test went from 709 s to 540 s with the other changes of that
# stop). A test marked `alone` measures a rate against the clock, which a third worker's load would
# skew: it runs by itself afterwards.
CHECKS := lint typecheck template-check build build-x86_64
test:
	$(MAKE) --no-print-directory -j2 --output-sync=target $(CHECKS)
	RELAY_BUILD_ARCH=$(ARCH) $(PY) -m pytest -q -n 3 --dist loadfile --no-loadscope-reorder -m "not alone" --durations=15
	$(PY) -m pytest -q -m alone

# The layers' Makefiles read PYTHON, PIP and ARCH from the environment (layers/wheels.mk): wheels for
# that architecture and cp313 fetched by the bootstrap environment's pip, bytecode compiled by PYTHON.
# sam build itself needs a python3.13 with pip on PATH: the bootstrap environment's comes first, so a
# Python 3.13 without pip of its own (python3.13 and python3.13-venv only) builds too. Never from SAM's
# build cache: its key sees neither ARCH nor layers/wheels.mk.
SAM_BUILD = PATH="$(abspath $(BOOT))/bin:$$(dirname $(PYTHON)):$$PATH" PYTHON=$(PYTHON) PIP="$(abspath $(BOOT))/bin/python -m pip" \
	ARCH=$(1) $(SAMVENV)/bin/sam build \
	--no-cached --build-dir $(2) --parameter-overrides Architecture=$(1)

# Deploy what this built with the same architecture: Architecture="$(ARCH)" in samconfig.toml's
# parameter_overrides (arm64 is the template's default, so the default build needs nothing more). Not
# `sam deploy --parameter-overrides Architecture=...`: that replaces the environment's whole list, and a
# first deploy of prod would get Stage=dev and the other defaults.
build: $(SAMVENV)/.synced
	$(REQUIRE_PYTHON)
	$(call SAM_BUILD,$(ARCH),.aws-sam/build)

build-x86_64: $(SAMVENV)/.synced
	$(REQUIRE_PYTHON)
	$(if $(filter x86_64,$(ARCH)),@echo "ARCH=x86_64: .aws-sam/build is the x86_64 build",\
		$(call SAM_BUILD,x86_64,.aws-sam/build-x86_64))

bench: $(VENV)/.synced
	$(PY) -m bench.run

# The chaos run, the intake fuzz at full size, the ordering proof at full size and the ordered path's
# throughput without moto (issue 15): each bench prints one JSON line.
chaos: $(VENV)/.synced
	$(PY) bench/chaos.py
	RELAY_FUZZ_EXAMPLES=5200 $(PY) -m pytest -q tests/integration/test_intake_fuzz.py
	$(PY) -m bench.ordering
	$(PY) -m bench.ordering_dispatcher

clean:
	rm -rf $(VENV) $(SAMVENV) $(CHECKOVVENV) $(BOOT) .aws-sam .pytest_cache .mypy_cache .ruff_cache
