# Slipway developer entry points. Everything installs into .venv; Kubernetes binaries are built
# once from source and cached under ${XDG_CACHE_HOME:-~/.cache}/slipway (see README).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test unit crd check-crd lint demo cluster cluster-down clean

$(STAMP): pyproject.toml
	@echo "[setup] creating $(VENV) and installing slipway with test extras"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --upgrade pip
	@$(PY) -m pip install --quiet --progress-bar off -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

## The whole test suite: import contracts, unit tests and cluster tests.
test: $(STAMP)
	@echo "[test] import contracts"
	@$(VENV)/bin/lint-imports --no-cache
	@echo "[test] pytest (unit and cluster tests)"
	@$(PY) -m pytest

## Unit tests only: no cluster, seconds.
unit: $(STAMP)
	@$(PY) -m pytest -m "not cluster"

crd: $(STAMP)
	@$(VENV)/bin/slipway crd -o crds/modeldeployments.slipway.dev.yaml

clean:
	rm -rf $(VENV) .pytest_cache
