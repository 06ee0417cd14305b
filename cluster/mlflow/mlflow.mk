# The production MLflow tracking server (cluster/mlflow/): PostgreSQL + MLflow with several workers.
# Included by the top-level Makefile, which defines VENV, PY and the `venv-server` target.
#   make mlflow-server [PORT=5000] [HOST=0.0.0.0] [MLFLOW_WORKERS=4] [AUTH=1] [DIR=...]
#   make mlflow-server-status / make mlflow-server-down

MLFLOW_MK_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
MLFLOW_WORKERS ?= 4

mlflow-server: venv-server ## PostgreSQL + MLflow server (MLFLOW_WORKERS ?= 4): make mlflow-server [HOST=0.0.0.0 PORT=5000 AUTH=1 DIR=…]
	PY=$(abspath $(PY)) WORKERS=$(MLFLOW_WORKERS) $(MLFLOW_MK_DIR)/up.sh

mlflow-server-down: ## Stop the PostgreSQL + MLflow server (exactly its pids; the data stays)
	$(MLFLOW_MK_DIR)/down.sh

mlflow-server-status: ## Is the PostgreSQL + MLflow server up? (exit 1 if not)
	@$(MLFLOW_MK_DIR)/status.sh

.PHONY: mlflow-server mlflow-server-down mlflow-server-status
