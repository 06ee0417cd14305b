# trainctl — `make help` lists every target.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
TRAINCTL := $(VENV)/bin/trainctl
JOB ?= jobs/digits.yaml
ARGS ?=

.DEFAULT_GOAL := help

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sort | \
	  awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

# One stamp per part: a local job needs only the core; the targets that need more install their extra.
venv: $(VENV)/.installed-core ## Create .venv with what a local job needs (torch CPU wheel first, pinned by constraints.txt)
venv-ray: $(VENV)/.installed-ray ## Add Ray to .venv (ray-up does)
venv-server: $(VENV)/.installed-server ## Add the MLflow server's login support to .venv (mlflow does)
venv-dev: $(VENV)/.installed-dev ## Add the test and lint tools to .venv (test, lint do)
venv-all: $(VENV)/.installed-all ## Everything: what `make test` installs

$(VENV)/.installed-core: pyproject.toml constraints.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -c constraints.txt torch==2.13.0
	$(PY) -m pip install -c constraints.txt -e .
	@touch $@

$(VENV)/.installed-all: $(VENV)/.installed-core pyproject.toml constraints.txt
	$(PY) -m pip install -c constraints.txt -e '.[ray,server,dev]'
	@touch $(VENV)/.installed-ray $(VENV)/.installed-server $(VENV)/.installed-dev $@

$(VENV)/.installed-%: $(VENV)/.installed-core pyproject.toml constraints.txt
	$(PY) -m pip install -c constraints.txt -e '.[$*]'
	@touch $@

validate: venv ## Validate a job spec: make validate JOB=jobs/x.yaml
	$(TRAINCTL) validate $(JOB) $(ARGS)

submit: venv ## Validate, submit and follow a job to its end (any backend; a Ray job after make ray-up): make submit JOB=jobs/x.yaml [ARGS='--detach']
	$(TRAINCTL) submit $(JOB) --wait $(ARGS)

resume: venv ## Resume a run by id: make resume RUN=<run_id> [ARGS='--from best']
	$(TRAINCTL) resume $(RUN) $(ARGS)

# Two pytest-xdist workers: the jobs under test spend much of their time waiting (on a scheduler, a signal, a slowed
# step), so two overlap well even on 2 cores. tests/conftest.py keeps the tests that share a cluster in one worker.
TEST_WORKERS ?= 2
PYTEST_PARALLEL = -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder

test: venv-all ## Run the whole test suite (starts MLflow/SLURM/Ray when it can) [TEST_WORKERS=2]
	$(PY) -m pytest $(PYTEST_PARALLEL) $(ARGS)

test-stock: venv-all ## The stock-Lightning lane: the `stock` tests with the speedups off (TRAINCTL_SPEEDUPS=0)
	TRAINCTL_SPEEDUPS=0 $(PY) -m pytest -m stock $(PYTEST_PARALLEL) $(ARGS)

lint: venv-dev ## ruff check (the code is hand-formatted at 120 columns; `ruff format` is not enforced)
	$(VENV)/bin/ruff check src tests bench

readme-fields: venv ## Regenerate the README's spec field table from the spec's dataclasses
	$(PY) -m trainctl.spec_doc --write README.md

mlflow: venv-server ## Serve the embedded sqlite store on 127.0.0.1:5000 (lean: 1 worker; a cluster: mlflow-server)
	$(PY) -m trainctl.mlflow_server --port $${PORT:-5000}

bench: venv-all ## Run the benchmarks; writes bench/results.json and bench/results.md
	$(PY) -m bench.run_all

clean: ## Remove caches (keeps .venv and runs/)
	rm -rf .pytest_cache .ruff_cache $$(find src tests bench -name __pycache__)

-include cluster/slurm/slurm.mk
-include cluster/ray/ray.mk
-include cluster/mlflow/mlflow.mk

.PHONY: help venv venv-ray venv-server venv-dev venv-all validate submit resume test test-stock lint readme-fields mlflow bench clean
