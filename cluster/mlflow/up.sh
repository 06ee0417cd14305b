#!/usr/bin/env bash
# The production MLflow tracking server: PostgreSQL (its own data directory, a database for MLflow) and an MLflow
# server with several workers on it, artifacts served from a directory.
#
#   cluster/mlflow/up.sh      (make mlflow-server [PORT=5000] [HOST=127.0.0.1] [WORKERS=4] [AUTH=1] [DIR=...])
#
# Idempotent: a server already up with this DIR is left as it is. initdb runs once; the database and its role are
# created once. Knobs (environment): PORT, HOST (0.0.0.0 for cluster nodes), WORKERS, PGPORT (5433), AUTH=1
# (MLflow's basic-auth app; the first admin password is MLFLOW_AUTH_ADMIN_PASSWORD, else one generated into
# run/admin-password), PY (the python with trainctl[server]), PG_BIN. `down.sh` stops exactly what this started.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=common.sh
source "$HERE/common.sh"

PORT="${PORT:-5000}"
HOST="${HOST:-127.0.0.1}"
WORKERS="${WORKERS:-4}"
PGPORT="${PGPORT:-5433}"
AUTH="${AUTH:-0}"
PY="${PY:-python3}"
URL="http://127.0.0.1:$PORT"
[[ "$WORKERS" =~ ^[1-9][0-9]*$ ]] || die "WORKERS must be a whole number above 0, got '$WORKERS'" "WORKERS=4"
[[ "$PORT" =~ ^[0-9]+$ && "$PGPORT" =~ ^[0-9]+$ ]] || die "PORT and PGPORT must be port numbers" "PORT=5000 PGPORT=5433"

if pid_alive "$MLFLOW_PID" && answers "$URL"; then
  echo "mlflow-server: already up at $URL (pid $(cat "$MLFLOW_PID"), data $DIR)"
  exit 0
fi
"$PY" -c "import mlflow, psycopg2" 2>/dev/null || die "$PY cannot import mlflow and psycopg2" \
  "make venv-server (installs trainctl[server]: mlflow[auth], psycopg2-binary), or set PY to that python"
if ! pid_alive "$MLFLOW_PID" && ("$PY" - "$PORT" <<'PYEOF'
import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(0)
sys.exit(1)
PYEOF
); then
  die "port $PORT is taken by another process" "stop it, or choose another: make mlflow-server PORT=5001"
fi

BIN="$(pg_bin)"
mkdir -p "$DIR" "$RUN" "$LOGS" "$DIR/artifacts"
chmod 700 "$RUN"
if [[ $EUID -eq 0 ]]; then  # PostgreSQL runs as $PG_USER_OS: it owns its data, socket and log
  id "$PG_USER_OS" >/dev/null 2>&1 || die "user '$PG_USER_OS' is missing: PostgreSQL cannot run as root" \
    "install Debian's postgresql package (it creates the user), or set TRAINCTL_PG_OS_USER to an unprivileged user"
  mkdir -p "$PGDATA" "$SOCK"
  chown "$PG_USER_OS" "$PGDATA" "$SOCK"
  chmod 700 "$SOCK"
  touch "$LOGS/postgres.log" && chown "$PG_USER_OS" "$LOGS/postgres.log"
  as_pg test -w "$PGDATA" || die "$PG_USER_OS cannot write $PGDATA (a parent directory shuts it out)" \
    "choose a DIR that $PG_USER_OS can reach, e.g. DIR=/var/lib/trainctl/mlflow-server"
else
  mkdir -p "$PGDATA" "$SOCK"
fi
chmod 700 "$PGDATA"

# One password for the database role, kept in a pgpass file (never on a command line).
if [[ ! -s "$RUN/db-password" ]]; then
  (umask 077 && "$PY" -c "import secrets; print(secrets.token_urlsafe(24))" >"$RUN/db-password")
fi
DBPW="$(cat "$RUN/db-password")"
(umask 077 && echo "127.0.0.1:$PGPORT:*:mlflow:$DBPW" >"$RUN/pgpass")

if [[ ! -s "$PGDATA/PG_VERSION" ]]; then
  echo "mlflow-server: initdb $PGDATA"
  as_pg "$BIN/initdb" -D "$PGDATA" -U postgres --auth-local=trust --auth-host=scram-sha-256 -E UTF8 \
    --no-instructions >"$LOGS/initdb.log" 2>&1 || die "initdb failed: $(tail -5 "$LOGS/initdb.log")" \
    "see $LOGS/initdb.log"
fi

# PostgreSQL: TCP on 127.0.0.1 only (password), its socket in run/pg (trust: only its OS user can reach it).
if ! as_pg "$BIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then
  as_pg "$BIN/pg_ctl" -D "$PGDATA" -l "$LOGS/postgres.log" -w -t 60 \
    -o "-p $PGPORT -k $SOCK -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null ||
    die "PostgreSQL did not start: $(tail -5 "$LOGS/postgres.log")" \
      "see $LOGS/postgres.log; is port $PGPORT taken? (PGPORT=5434)"
fi
psql_pg() { as_pg "$BIN/psql" -h "$SOCK" -p "$PGPORT" -U postgres -d postgres -tAq -v ON_ERROR_STOP=1 "$@"; }
if [[ "$(psql_pg -c "SELECT 1 FROM pg_roles WHERE rolname='mlflow'")" != 1 ]]; then
  psql_pg -c "CREATE ROLE mlflow LOGIN PASSWORD '$DBPW'"
else
  psql_pg -c "ALTER ROLE mlflow PASSWORD '$DBPW'"
fi
for db in mlflow mlflow_auth; do
  if [[ "$(psql_pg -c "SELECT 1 FROM pg_database WHERE datname='$db'")" != 1 ]]; then
    psql_pg -c "CREATE DATABASE $db OWNER mlflow"
  fi
done

BACKEND="postgresql+psycopg2://mlflow@127.0.0.1:$PGPORT/mlflow"
ARGS=(-m mlflow server --host "$HOST" --port "$PORT" --workers "$WORKERS" --backend-store-uri "$BACKEND"
  --artifacts-destination "$DIR/artifacts" --serve-artifacts)
[[ "$HOST" == 127.0.0.1 || "$HOST" == localhost ]] || ARGS+=(--allowed-hosts '*')
export PGPASSFILE="$RUN/pgpass" MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
unset MLFLOW_TRACKING_URI
if [[ "$AUTH" == 1 ]]; then
  if [[ -z "${MLFLOW_AUTH_ADMIN_PASSWORD:-}" ]]; then
    [[ -s "$RUN/admin-password" ]] ||
      (umask 077 && "$PY" -c "import secrets; print(secrets.token_urlsafe(18))" >"$RUN/admin-password")
    MLFLOW_AUTH_ADMIN_PASSWORD="$(cat "$RUN/admin-password")"
  fi
  export MLFLOW_AUTH_ADMIN_PASSWORD
  export MLFLOW_FLASK_SERVER_SECRET_KEY="${MLFLOW_FLASK_SERVER_SECRET_KEY:-$DBPW}"  # the same for every worker
  cat >"$RUN/basic_auth.ini" <<INI
[mlflow]
default_permission = READ
database_uri = postgresql+psycopg2://mlflow@127.0.0.1:$PGPORT/mlflow_auth
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
  export MLFLOW_AUTH_CONFIG_PATH="$RUN/basic_auth.ini"
  ARGS+=(--app-name basic-auth)
fi

# In a session of its own: down.sh stops exactly this process group.
setsid "$PY" "${ARGS[@]}" >>"$LOGS/mlflow.log" 2>&1 </dev/null &
echo $! >"$MLFLOW_PID"
cat >"$STATE_FILE" <<STATE
URL=http://$HOST:$PORT
PGPORT=$PGPORT
WORKERS=$WORKERS
AUTH=$AUTH
STARTED_AT=$(date -Is)
STATE
deadline=$((SECONDS + ${TRAINCTL_MLFLOW_START_S:-180}))
until answers "$URL"; do
  if ! pid_alive "$MLFLOW_PID"; then
    rm -f "$MLFLOW_PID"
    die "the MLflow server exited at start: $(tail -15 "$LOGS/mlflow.log")" "see $LOGS/mlflow.log"
  fi
  if ((SECONDS > deadline)); then
    die "the MLflow server did not answer $URL/health in ${TRAINCTL_MLFLOW_START_S:-180} s" \
      "see $LOGS/mlflow.log; stop it with make mlflow-server-down"
  fi
  sleep 0.5
done
echo "mlflow-server: up at http://$HOST:$PORT (pid $(cat "$MLFLOW_PID"), $WORKERS workers, PostgreSQL on" \
  "127.0.0.1:$PGPORT, data $DIR)"
echo "  export MLFLOW_TRACKING_URI=http://$HOST:$PORT"
[[ "$AUTH" != 1 ]] || echo "  login: admin (password in $RUN/admin-password unless MLFLOW_AUTH_ADMIN_PASSWORD was set)"
