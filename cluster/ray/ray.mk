# Local multi-node Ray cluster for trainctl (cluster/ray/). Included by the top-level Makefile,
# which defines VENV (.venv), PY and the `venv-ray` target.
#   make ray-up [WORKERS=1]   head + WORKERS worker nodes on this host, Jobs API on 127.0.0.1:8265
#   make ray-status           node count; exit 0 when up with 1+WORKERS nodes
#   make ray-down             stop exactly that cluster and remove its run dir
# Run dir, ports and per-node sizes: TRAINCTL_RAY_* environment variables, see cluster/ray/README.md.

RAY_MK_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
WORKERS ?= 1

ray-up: venv-ray ## Start a local Ray cluster: head + WORKERS worker nodes (WORKERS ?= 1), Jobs API http://127.0.0.1:8265
	RAY=$(abspath $(VENV))/bin/ray $(RAY_MK_DIR)/up.sh $(WORKERS)

ray-down: ## Stop the local Ray cluster (only its own processes) and remove its run dir
	$(RAY_MK_DIR)/down.sh

ray-status: ## Is the local Ray cluster up? Prints the number of alive nodes
	$(RAY_MK_DIR)/status.sh

ray-smoke: ray-up ## Ray Jobs API + 2-worker TorchTrainer across 2 nodes, with timings (needs WORKERS>=1)
	$(abspath $(VENV))/bin/python $(RAY_MK_DIR)/smoke.py

.PHONY: ray-up ray-down ray-status ray-smoke
