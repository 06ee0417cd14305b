# shellcheck shell=bash disable=SC2034
# Shared settings for up.sh / down.sh / status.sh. Sourced, not executed.
#
# Every knob is an environment variable (defaults fit a 2-core, 24 GiB box):
#   RAY                              ray CLI (default: <repo>/.venv/bin/ray, then `ray` on PATH)
#   TRAINCTL_RAY_RUN_DIR             run dir: per-node temp dirs, logs, state   (/tmp/trainctl-ray)
#   TRAINCTL_RAY_PORT                GCS port of the head                         (6379)
#   TRAINCTL_RAY_DASHBOARD_PORT      dashboard + Jobs API, bound to 127.0.0.1    (8265)
#   TRAINCTL_RAY_CLIENT_PORT         Ray Client server (ray://) on the head      (10001)
#   TRAINCTL_RAY_AGENT_PORT          dashboard-agent HTTP port of node i = this + i   (52365)
#   TRAINCTL_RAY_HEAD_CPUS           logical CPUs of the head node               (1)
#   TRAINCTL_RAY_WORKER_CPUS         logical CPUs of each worker node            (1)
#   TRAINCTL_RAY_NODE_MEMORY         logical `memory` resource per node, bytes   (6 GiB)
#   TRAINCTL_RAY_OBJECT_STORE_MEMORY object store (/dev/shm) per node, bytes     (1 GiB)
#   TRAINCTL_RAY_TIMEOUT             seconds to wait for nodes + Jobs API        (120)
#   TRAINCTL_RAY_AUTH                disabled | token                            (disabled)
#       Ray 2.60 token auth. Set explicitly either way: with RAY_AUTH_MODE unset, `ray start` turns
#       token auth ON whenever ~/.ray/auth_token exists (a plain `ray.init()` that starts a local
#       cluster creates that file), and clients that connect by explicit address then fail with
#       "InvalidAuthToken". token: a fresh token in <run dir>/auth_token; clients need
#       RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=<run dir>/auth_token (both in <run dir>/env).

TRAINCTL_RAY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TRAINCTL_REPO_ROOT="$(cd "$TRAINCTL_RAY_DIR/../.." && pwd)"

RUN_DIR="${TRAINCTL_RAY_RUN_DIR:-/tmp/trainctl-ray}"
RUN_DIR="${RUN_DIR%/}"
GCS_PORT="${TRAINCTL_RAY_PORT:-6379}"
DASH_PORT="${TRAINCTL_RAY_DASHBOARD_PORT:-8265}"
CLIENT_PORT="${TRAINCTL_RAY_CLIENT_PORT:-10001}"
AGENT_PORT_BASE="${TRAINCTL_RAY_AGENT_PORT:-52365}"
HEAD_CPUS="${TRAINCTL_RAY_HEAD_CPUS:-1}"
WORKER_CPUS="${TRAINCTL_RAY_WORKER_CPUS:-1}"
NODE_MEMORY="${TRAINCTL_RAY_NODE_MEMORY:-$((6 * 1024 * 1024 * 1024))}"
OBJECT_STORE_MEMORY="${TRAINCTL_RAY_OBJECT_STORE_MEMORY:-$((1024 * 1024 * 1024))}"
READY_TIMEOUT="${TRAINCTL_RAY_TIMEOUT:-120}"

GCS_ADDRESS="127.0.0.1:${GCS_PORT}"
DASH_URL="http://127.0.0.1:${DASH_PORT}"
STATE_FILE="$RUN_DIR/cluster.env"
TOKEN_FILE="$RUN_DIR/auth_token"
LOCK_FILE="$RUN_DIR/.lock"

# Ray refuses nothing here, but its AF_UNIX sockets live at
#   <temp-dir>/session_<date>_<time>_<usec>_<pid>/sockets/plasma_store
# and sun_path holds 107 bytes: keep the run dir short.
MAX_RUN_DIR_LEN=34

log() { printf 'ray: %s\n' "$*" >&2; }
die() {
  printf 'ray: ERROR: %s\n' "$1" >&2
  [[ -n "${2:-}" ]] && printf 'ray: HINT: %s\n' "$2" >&2
  exit "${3:-1}"
}

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# resolve_ray: sets RAY (absolute path) and PY (python for the stdlib probes).
resolve_ray() {
  local cand="${RAY:-}"
  if [[ -n "$cand" ]]; then
    if [[ "$cand" != */* ]]; then cand="$(command -v "$cand" || true)"; fi
    [[ -n "$cand" && -x "$cand" ]] ||
      die "RAY=${RAY} is not an executable ray CLI" "make venv-ray  (or unset RAY to use $TRAINCTL_REPO_ROOT/.venv/bin/ray)"
  elif [[ -x "$TRAINCTL_REPO_ROOT/.venv/bin/ray" ]]; then
    cand="$TRAINCTL_REPO_ROOT/.venv/bin/ray"
  else
    cand="$(command -v ray || true)"
    [[ -n "$cand" ]] ||
      die "no ray CLI: neither $TRAINCTL_REPO_ROOT/.venv/bin/ray nor \`ray\` on PATH (need ray[default,train]==2.60.0)" \
        "make venv-ray   (installs .[ray], i.e. ray[default,train]==2.60.0, into .venv)"
  fi
  RAY_BIN_DIR="$(cd "$(dirname "$cand")" && pwd)"
  RAY="$RAY_BIN_DIR/$(basename "$cand")" # absolute: ray start runs from the run dir
  if [[ -x "$RAY_BIN_DIR/python" ]]; then PY="$RAY_BIN_DIR/python"; else PY="$(command -v python3)"; fi
}

# state_get KEY: a value recorded by up.sh in cluster.env ("" when absent)
state_get() {
  if [[ -f "$STATE_FILE" ]]; then sed -n "s/^$1=//p" "$STATE_FILE" | tail -n1; fi
}

# auth_env MODE: export Ray's auth settings for this process and everything it starts.
auth_env() {
  unset RAY_AUTH_TOKEN RAY_AUTH_TOKEN_PATH
  case "$1" in
    disabled) export RAY_AUTH_MODE=disabled ;;
    token) export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$TOKEN_FILE" ;;
    *) die "TRAINCTL_RAY_AUTH must be 'disabled' or 'token', got '$1'" ;;
  esac
}

# probe <args...>: stdlib-only checks (see _probe.py); needs PY.
probe() { "${PY:-python3}" "$TRAINCTL_RAY_DIR/_probe.py" "$@"; }

# take_lock: serialise up/down (pytest-xdist, two terminals). fd 9 must NOT leak into
# ray's daemons (they would hold the lock forever): start them with `9>&-`.
take_lock() {
  mkdir -p "$RUN_DIR"
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$LOCK_FILE"
    flock -w "${1:-300}" 9 || die "another up.sh/down.sh holds $LOCK_FILE"
  fi
}

# node_names WORKERS: head worker-1 ... worker-N
node_names() {
  local i
  echo head
  for ((i = 1; i <= $1; i++)); do echo "worker-$i"; done
}

# our_pids: every live process that belongs to the cluster in RUN_DIR, plus all their
# descendants (the job entrypoint runs in its own session under the JobSupervisor actor).
# Scoped by (a) the session ids recorded at start (each node is started under setsid),
# (b) Ray daemons whose command line names RUN_DIR, (c) the Ray Client server of our GCS port.
# Never matches the caller's own ancestors.
our_pids() {
  local sids="" f s
  for f in "$RUN_DIR"/*.sid; do
    [[ -f "$f" ]] || continue
    s="$(cat "$f")"
    [[ "$s" =~ ^[0-9]+$ && "$s" -gt 1 ]] && sids="$sids $s"
  done
  local port=""  # (c) only when up.sh recorded that it owns the port
  if [[ -f "$STATE_FILE" ]]; then
    port="$(sed -n 's/^GCS_PORT=//p' "$STATE_FILE")"
  fi
  local ancestors="" p=$$
  while [[ -n "$p" && "$p" -gt 1 ]]; do
    ancestors="$ancestors $p"
    p="$(ps -o ppid= -p "$p" 2>/dev/null | tr -d ' ')"
  done
  # Values go in through the environment and the patterns are escaped or split, so that this awk's
  # own command line never matches itself. Ray daemons: gcs_server, raylet, and python files under
  # ray/{dashboard,_private,autoscaler}/ (note that this repo's cluster/ray/ must not match).
  ps -eo pid=,ppid=,sid=,stat=,args= |
    OP_SIDS="$sids" OP_RUNDIR="$RUN_DIR/" OP_PORT=":$port" OP_ANC="$ancestors" \
      OP_OWN_SID="$(ps -o sid= -p $$ | tr -d ' ')" awk '
    BEGIN {
      sids = ENVIRON["OP_SIDS"]; rundir = ENVIRON["OP_RUNDIR"]; port = ENVIRON["OP_PORT"]
      anc = ENVIRON["OP_ANC"]; own_sid = ENVIRON["OP_OWN_SID"]
      daemon = "\\/ray\\/core\\/src\\/ray\\/(gcs\\/gcs_server|raylet\\/raylet)|\\/ray\\/(dashboard|_private|autoscaler)\\/[a-z_\\/]+\\.py"
      n = split(sids, s, " "); for (i = 1; i <= n; i++) if (s[i] != own_sid) cand_sid[s[i]] = 1
      n = split(anc, a, " "); for (i = 1; i <= n; i++) skip[a[i]] = 1
    }
    {
      pid = $1; stat = $4
      args = $0; sub(/^ *[0-9]+ +[0-9]+ +[0-9]+ +[^ ]+ +/, "", args)
      if (stat ~ /^Z/) next
      alive[pid] = 1; ppid[pid] = $2; sid[pid] = $3
      rayish = args ~ daemon || args ~ /^(ra[y]::|ra[y]-dashboard-)/
      # a recorded session id only counts while a Ray process still lives in it (pid reuse)
      if (($3 in cand_sid) && rayish) ok_sid[$3] = 1
      if (rundir != "/" && index(args, rundir) && args ~ daemon) root[pid] = 1
      else if (port != ":" && index(args, "ray.util.client." "server") && index(args, port " ")) root[pid] = 1
    }
    END {
      for (p in alive) if (sid[p] in ok_sid) root[p] = 1
      changed = 1
      while (changed) {
        changed = 0
        for (p in alive) if (!(p in root) && (ppid[p] in root)) { root[p] = 1; changed = 1 }
      }
      for (p in root) if ((p in alive) && !(p in skip)) print p
    }'
}

# pid_alive PID: true while PID exists and is not a zombie (PID 1 here may reap late).
pid_alive() {
  local st
  st="$(ps -o stat= -p "$1" 2>/dev/null || true)"
  [[ -n "$st" && "$st" != Z* ]]
}

# stop_cluster [GRACE_S]: the scoped equivalent of `ray stop --force` (GRACE_S=0, the default:
# SIGKILL at once) or of `ray stop --grace-period` (GRACE_S>0: SIGTERM, wait, then SIGKILL).
# Only touches processes found by our_pids. Prints how many processes it stopped.
stop_cluster() {
  local grace="${1:-0}" total=0 round pids p deadline
  for round in 1 2 3; do  # a raylet may spawn a worker between listing and killing
    pids="$(our_pids | tr '\n' ' ')"
    [[ -n "${pids// /}" ]] || break
    total=$((total + $(wc -w <<<"$pids")))
    if [[ "$grace" != 0 && "$round" == 1 ]]; then
      # shellcheck disable=SC2086
      kill -TERM $pids 2>/dev/null || true
      deadline=$(($(date +%s) + grace))
      while (($(date +%s) < deadline)); do
        for p in $pids; do pid_alive "$p" && break; done
        pid_alive "$p" || break
        sleep 0.2
      done
    fi
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    deadline=$(($(date +%s) + 10))
    for p in $pids; do
      while pid_alive "$p" && (($(date +%s) < deadline)); do sleep 0.1; done
    done
  done
  STOPPED_COUNT=$total
}
