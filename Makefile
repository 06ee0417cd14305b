# trainctl — `make help` lists every target.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
TRAINCTL := $(VENV)/bin/trainctl
STAMP := $(VENV)/.installed
JOB ?= jobs/digits.yaml
ARGS ?=

.DEFAULT_GOAL := help

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sort | \
	  awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

venv: $(STAMP) ## Create .venv and install trainctl (torch CPU wheel first, pinned by constraints.txt)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[ray,server,dev]'
	@touch $(STAMP)

validate: venv ## Validate a job spec: make validate JOB=jobs/x.yaml
	$(TRAINCTL) validate $(JOB) $(ARGS)

submit: venv ## Validate, submit and follow a job to its end (any backend): make submit JOB=jobs/x.yaml [ARGS='--detach']
	$(TRAINCTL) submit $(JOB) --wait $(ARGS)

resume: venv ## Resume a run by id: make resume RUN=<run_id> [ARGS='--from best']
	$(TRAINCTL) resume $(RUN) $(ARGS)

test: venv ## Run the whole test suite (starts MLflow/SLURM/Ray when it can)
	$(PY) -m pytest $(ARGS)

lint: venv ## ruff check (the code is hand-formatted at 120 columns; `ruff format` is not enforced)
	$(VENV)/bin/ruff check src tests bench

mlflow: venv ## Serve the tracking store trainctl uses on 127.0.0.1:5000 (lean: 1 worker)
	$(PY) -m trainctl.mlflow_server --port $${PORT:-5000}

bench: venv ## Run the benchmarks; writes bench/results.json and bench/results.md
	$(PY) -m bench.run_all

clean: ## Remove caches (keeps .venv and runs/)
	rm -rf .pytest_cache .ruff_cache $$(find src tests bench -name __pycache__)

-include cluster/slurm/slurm.mk
-include cluster/ray/ray.mk

.PHONY: help venv validate submit resume test lint mlflow bench clean
