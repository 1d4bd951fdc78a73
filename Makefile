# PCC - the Digital Car Passport data platform.
# `make demo` and `make test` are the two set-up commands: each installs what it needs.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PCC := $(VENV)/bin/pcc
UV := $(VENV)/bin/uv
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
DEMO_ARGS ?=
SCALE ?= 0.1

.DEFAULT_GOAL := help


.PHONY: help install browser airflow demo test unit integration lint typecheck bench up down clean prism chaos

help: ## Show this help
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --disable-pip-version-check uv==0.13.8
	$(UV) pip install --quiet --python $(PY) -e '.[all,dev]'
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install the platform with every extra (idempotent)

demo: install ## Run the main job end to end on local defaults (DEMO_ARGS="--vehicles 200")
	$(PCC) demo $(DEMO_ARGS)

browser: install ## Install Debian's chromium for the passport page test (idempotent)
	$(PY) -m infra.browser

AIRFLOW_VENV := .venv-airflow

$(AIRFLOW_VENV)/.installed: infra/airflow/requirements.txt $(STAMP)
	@test -x $(AIRFLOW_VENV)/bin/python || $(UV) venv --quiet --python $(PYTHON) $(AIRFLOW_VENV)
	$(UV) pip install --quiet --python $(AIRFLOW_VENV)/bin/python -r infra/airflow/requirements.txt
	@touch $@

airflow: $(AIRFLOW_VENV)/.installed ## A separate virtualenv with Apache Airflow, to check that the batch DAG parses

test: install lint browser airflow prism ## Run the whole test suite (starts its own broker, chain node and Spark)
	$(PY) -m pytest $(PYTEST_ARGS)

unit: install ## Run only the unit tests (no services)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

integration: install browser ## Run only the integration tests (real Kafka, chain, Spark)
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

PRISM := infra/prism/.cache/bin/prism

$(PRISM):
	GOBIN=$(CURDIR)/infra/prism/.cache/bin go install github.com/apache/beam/sdks/v2/go/cmd/prism@v2.77.0

prism: $(PRISM) ## Build Beam's Prism runner (Go, from the module proxy) into infra/prism/.cache/bin on first use

chaos: install prism ## Fault and runner tests only: a node of a 3-broker Kafka cluster killed mid-produce, the speed job on FnApiRunner and Prism, the chain node stopped during produce, the serving process killed mid-settlement
	$(PY) -m pytest tests/integration/test_kafka_cluster.py tests/integration/test_speed_runners.py tests/integration/test_chain_outage.py tests/integration/test_settlement_faults.py $(PYTEST_ARGS)

lint: install ## ruff and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: install ## Run every benchmark (small; SCALE=1 for the 10M-event sizes), write bench/results/latest.json and .md
	$(PY) -m bench --scale $(SCALE)

up: install ## Run the demo and leave its broker, chain node and serving API running (DEMO_ARGS=...)
	$(PCC) demo --keep-running $(DEMO_ARGS)

down: install ## Stop what `make up` started (and a broker/chain node started by pcc kafka/chain up)
	-$(PCC) demo down
	-$(PCC) kafka down
	-$(PCC) chain down

clean: ## Remove the virtualenv and local state (jars, chain, data)
	rm -rf $(VENV) $(AIRFLOW_VENV) .pcc
