# Shared by up.sh, down.sh and status.sh: where the production tracking server keeps its state.
#
# DIR (TRAINCTL_MLFLOW_DIR): everything lives under it, and it is what to back up:
#   pgdata/      PostgreSQL's data directory (runs, params, metrics, tags, the registry, the auth users)
#   artifacts/   the runs' artifacts (checkpoints, logs, spec.yaml): shared storage on a site
#   run/         pid files, the password files (mode 700)
#   pgsock/      PostgreSQL's unix socket
#   logs/        postgres.log, mlflow.log
# As root the data must be readable by the `postgres` user (PostgreSQL refuses to run as root), so root's
# default is /var/lib/trainctl/mlflow-server; anyone else's is ~/.local/state/trainctl/mlflow-server.

die() {  # die MESSAGE [HINT]
  echo "mlflow-server: error: $1" >&2
  [[ -n "${2:-}" ]] && echo "    HINT: $2" >&2
  exit 1
}

if [[ $EUID -eq 0 ]]; then
  DEFAULT_DIR=/var/lib/trainctl/mlflow-server
else
  DEFAULT_DIR="${XDG_STATE_HOME:-$HOME/.local/state}/trainctl/mlflow-server"
fi
DIR="$(realpath -m "${TRAINCTL_MLFLOW_DIR:-${DIR:-$DEFAULT_DIR}}")"
PGDATA="$DIR/pgdata"
RUN="$DIR/run"
SOCK="$DIR/pgsock"  # PostgreSQL's unix socket (trust): only its OS user and root reach it
LOGS="$DIR/logs"
MLFLOW_PID="$RUN/mlflow.pid"
STATE_FILE="$RUN/server.env"
PG_USER_OS="${TRAINCTL_PG_OS_USER:-postgres}"   # the OS user PostgreSQL runs as when we are root

pg_bin() {  # the newest installed PostgreSQL's bin directory (Debian: /usr/lib/postgresql/<major>/bin)
  if [[ -n "${PG_BIN:-}" ]]; then echo "$PG_BIN"; return; fi
  local found
  found="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
  [[ -n "$found" && -x "$found/postgres" ]] || found="$(dirname "$(command -v postgres 2>/dev/null || echo /nonexistent/x)")"
  [[ -x "$found/postgres" ]] || die "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/postgres)" \
    "apt-get install postgresql (Debian), or set PG_BIN to the directory holding postgres, initdb and pg_ctl"
  echo "$found"
}

as_pg() {  # run a command as the PostgreSQL OS user: ourselves, or `postgres` when we are root
  if [[ $EUID -ne 0 ]]; then "$@"; return; fi
  if command -v runuser >/dev/null; then runuser -u "$PG_USER_OS" -- "$@"; return; fi
  su -s /bin/sh "$PG_USER_OS" -c "$(printf '%q ' "$@")"
}

pid_alive() {  # pid_alive PIDFILE: the pid in it runs
  [[ -s "$1" ]] && kill -0 "$(head -1 "$1")" 2>/dev/null
}

answers() {  # answers URL: MLflow's /health says OK
  curl -fsS -m 2 "$1/health" >/dev/null 2>&1 ||
    "${PY:-python3}" -c "import sys,urllib.request; urllib.request.urlopen(sys.argv[1]+'/health', timeout=2)" "$1" 2>/dev/null
}
