# Included by layers/*/Makefile: how a layer gets its wheels and its bytecode.
#
# - Wheels for Lambda's python3.13 on Amazon Linux 2023 (glibc 2.34) and the functions' architecture
#   (ARCH: arm64 -> aarch64, x86_64): cp313 or abi3 (or pure Python), tagged manylinux_2_34 or older,
#   the newest preferred, never one that needs a newer glibc than AL2023 has. pip expands only
#   manylinux2014 to older tags, so every glibc from 2.34 down is named.
# - PYTHON compiles the bytecode, so it must be 3.13: another version's .pyc files are ignored (CoreLayer)
#   or cannot be imported at all (GenesysSdkLayer ships bytecode only). CHECK_PYTHON stops the build.
# ARCH, PYTHON and PIP come from the top Makefile (`make build ARCH=...`).
PYTHON ?= python3.13
ARCH ?= arm64
PYTHON_VERSION := 3.13
WHEEL_MACHINE := $(or $(if $(filter arm64,$(ARCH)),aarch64),$(if $(filter x86_64,$(ARCH)),x86_64),\
	$(error ARCH must be arm64 or x86_64, not '$(ARCH)'))
PLATFORMS := $(foreach minor,34 33 32 31 30 29 28 27 26 25 24 23 22 21 20 19 18 17,\
	--platform manylinux_2_$(minor)_$(WHEEL_MACHINE)) --platform manylinux2014_$(WHEEL_MACHINE)
# The top Makefile passes its bootstrap environment's pinned pip; PYTHON's own is the fallback.
# --require-hashes: every pin carries uv.lock's hashes, so a file the registry serves in its place is refused.
PIP ?= $(PYTHON) -m pip
PIP_INSTALL := $(PIP) install --quiet --disable-pip-version-check --no-compile --no-deps --require-hashes \
	--only-binary=:all: $(PLATFORMS) --implementation cp --python-version $(PYTHON_VERSION)
CHECK_PYTHON := $(PYTHON) -c 'import sys; v = "%d.%d" % sys.version_info[:2]; \
	sys.exit(v != "$(PYTHON_VERSION)" and f"PYTHON is {v}: layer bytecode must be compiled by $(PYTHON_VERSION)")'
