#!/usr/bin/env bash
# Stop exactly what up.sh started for this DIR: the MLflow server's process group (its pid file) and PostgreSQL
# (its postmaster.pid, through pg_ctl). The data stays.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=common.sh
source "$HERE/common.sh"

if pid_alive "$MLFLOW_PID"; then
  pid="$(cat "$MLFLOW_PID")"
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && kill -KILL -- "-$pid" 2>/dev/null
  echo "mlflow-server: stopped the MLflow server (pid $pid)"
fi
rm -f "$MLFLOW_PID"
if [[ -s "$PGDATA/postmaster.pid" ]]; then
  BIN="$(pg_bin)"
  as_pg "$BIN/pg_ctl" -D "$PGDATA" -m fast -w -t 60 stop >/dev/null && echo "mlflow-server: stopped PostgreSQL"
fi
exit 0
