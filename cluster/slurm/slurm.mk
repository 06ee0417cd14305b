# Local SLURM cluster targets; included by the top-level Makefile.
SLURM_MK_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
NODES ?= 3

cluster-up: ## Start a local SLURM cluster (root; installs packages if missing): make cluster-up [NODES=3]
	$(SLURM_MK_DIR)/up.sh $(NODES)

cluster-down: ## Stop the local SLURM cluster (cancels its jobs)
	$(SLURM_MK_DIR)/down.sh

cluster-status: ## Is the local SLURM cluster up? (exit 1 if not)
	@$(SLURM_MK_DIR)/status.sh

.PHONY: cluster-up cluster-down cluster-status
