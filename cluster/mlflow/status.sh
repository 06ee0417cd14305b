#!/usr/bin/env bash
# Is the production MLflow server of this DIR up? Prints its URL; exit 1 if not.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=common.sh
source "$HERE/common.sh"
[[ -s "$STATE_FILE" ]] || { echo "mlflow-server: not started in $DIR"; exit 1; }
# shellcheck disable=SC1090
source "$STATE_FILE"
URL_LOCAL="http://127.0.0.1:${URL##*:}"
if pid_alive "$MLFLOW_PID" && answers "$URL_LOCAL"; then
  echo "mlflow-server: up at $URL (pid $(cat "$MLFLOW_PID"), $WORKERS workers, PostgreSQL 127.0.0.1:$PGPORT)"
  exit 0
fi
echo "mlflow-server: down (data $DIR)"
exit 1
