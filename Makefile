# Slipway developer entry points. Everything installs into .venv; Kubernetes binaries are built
# once from source and cached under ${XDG_CACHE_HOME:-~/.cache}/slipway (see README).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install binaries tools test unit crd demo demo-down cluster cluster-status cluster-down bench clean

$(STAMP): pyproject.toml
	@echo "[setup] creating $(VENV) and installing slipway with test extras"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --upgrade pip
	@$(PY) -m pip install --quiet --progress-bar off -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

## etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl: built once, cached.
binaries: $(STAMP)
	@$(PY) -m slipway_dev.binaries

## The real third-party tools the tests run: Lua 5.4 and Prometheus (apt-get, as root), kstatus
## and helm (built from the Go module proxy, cached), MLServer (PyPI, a cached virtualenv).
tools: $(STAMP)
	@$(PY) -m slipway_dev.tools

## The whole test suite: import contracts, type check, unit tests and cluster tests.
test: $(STAMP)
	@echo "[test] import contracts"
	@$(VENV)/bin/lint-imports --no-cache
	@echo "[test] type check (mypy)"
	@$(PY) -m mypy
	@echo "[test] control-plane binaries for the cluster tests"
	@$(PY) -m slipway_dev.binaries
	@echo "[test] third-party tools: Lua 5.4, promtool and Prometheus, kstatus, helm, MLServer"
	@$(PY) -m slipway_dev.tools
	@echo "[test] pytest (unit and cluster tests)"
	@$(PY) -m pytest

## The main job: local cluster, operator and the reference model, shown until Ready.
demo: $(STAMP)
	@$(PY) -m slipway_dev.demo

demo-down cluster-down: $(STAMP)
	@$(VENV)/bin/slipway dev-cluster down

cluster: $(STAMP)
	@$(VENV)/bin/slipway dev-cluster up

cluster-status: $(STAMP)
	@$(VENV)/bin/slipway dev-cluster status

## Unit tests only: no cluster, seconds.
unit: $(STAMP)
	@$(PY) -m slipway_dev.tools
	@$(PY) -m pytest -m "not cluster"

crd: $(STAMP)
	@$(VENV)/bin/slipway crd -o crds/modeldeployments.slipway.dev.yaml
	@cp crds/modeldeployments.slipway.dev.yaml charts/slipway/crds/

clean:
	rm -rf $(VENV) .pytest_cache
