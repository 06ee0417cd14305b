#!/usr/bin/env bash
# Start a local multi-node Ray 2.60 cluster on this host: a head node plus WORKERS worker nodes.
#
#   cluster/ray/up.sh [WORKERS]        (default 1; `make ray-up WORKERS=2`)
#
# Each node is a separate raylet with its own --temp-dir under $TRAINCTL_RAY_RUN_DIR (/tmp/trainctl-ray),
# 1 logical CPU (TRAINCTL_RAY_HEAD_CPUS / TRAINCTL_RAY_WORKER_CPUS), a bounded `memory` resource and
# object store, a --node-name (head, worker-1, ...) and the labels trainctl.io/node=<name>,
# trainctl.io/role=head|worker. So a 2-worker Ray Train run (resources_per_worker={"CPU": 1}) must use
# both nodes, and a test can tell nodes apart by node id, node name or label.
#
# The head's GCS listens on port 6379 (all interfaces: Ray resolves 127.0.0.1 to the host's IP, see
# README), the dashboard + Jobs API on 127.0.0.1:8265 only. Idempotent: when the cluster is already
# up with the same number of workers it returns at once; with fewer it adds the missing workers.
# Knobs: see _common.sh. Clients: `source $TRAINCTL_RAY_RUN_DIR/env` (RAY_ADDRESS, RAY_API_SERVER_ADDRESS).
set -euo pipefail

# shellcheck source=_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

usage() { sed -n '2,4p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
case "${1:-}" in -h | --help) usage; exit 0 ;; esac

WORKERS="${1:-1}"
[[ "$WORKERS" =~ ^[0-9]+$ ]] || die "WORKERS must be a non-negative integer, got '$WORKERS'" "cluster/ray/up.sh 1"
T0="$(now)"

resolve_ray
((${#RUN_DIR} <= MAX_RUN_DIR_LEN)) ||
  die "TRAINCTL_RAY_RUN_DIR='$RUN_DIR' is ${#RUN_DIR} chars; Ray's unix sockets under it would exceed 107 bytes" \
    "use a run dir of at most $MAX_RUN_DIR_LEN chars, e.g. /tmp/trainctl-ray"

# Environment the Ray daemons (and so every worker and job entrypoint) inherit.
export RAY_USAGE_STATS_ENABLED=0
# Job entrypoints run `python ...` through a shell with the raylet's PATH: make that the venv's python.
export PATH="$RAY_BIN_DIR:$PATH"
# A client address in the caller's environment must not leak into the daemons.
unset RAY_ADDRESS RAY_API_SERVER_ADDRESS
# Scratch files of the daemons, workers and job entrypoints (the dashboard's multiprocessing leaves a
# /tmp/pymp-* dir behind on every SIGKILL) go under the run dir, which down.sh removes.
export TMPDIR="$RUN_DIR/tmp"

take_lock
mkdir -p "$RUN_DIR/logs" "$TMPDIR"
AUTH="${TRAINCTL_RAY_AUTH:-disabled}"
[[ "$AUTH" == disabled || "$AUTH" == token ]] || die "TRAINCTL_RAY_AUTH must be 'disabled' or 'token', got '$AUTH'"

# --- helpers -------------------------------------------------------------------------------------

write_state() {  # write_state WORKERS
  cat >"$STATE_FILE.tmp" <<EOF
WORKERS=$1
NODES=$((1 + $1))
GCS_PORT=$GCS_PORT
DASHBOARD_PORT=$DASH_PORT
CLIENT_PORT=$CLIENT_PORT
RAY=$RAY
AUTH=$AUTH
STARTED_AT=$(date -Is)
EOF
  mv "$STATE_FILE.tmp" "$STATE_FILE"
  {
    echo "# source me: clients of the local trainctl Ray cluster"
    echo "export RAY_ADDRESS=$GCS_ADDRESS"
    echo "export RAY_API_SERVER_ADDRESS=$DASH_URL"
    if [[ "$AUTH" == token ]]; then
      echo "export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$TOKEN_FILE"
    else
      echo "export RAY_AUTH_MODE=disabled"
    fi
  } >"$RUN_DIR/env"
}

raylet_pid() {  # raylet_pid NODE_NAME
  ps -eo pid=,args= | awk -v d="$RUN_DIR/$1/session_" '$2 ~ /\/raylet$/ && index($0, d) { print $1; exit }'
}

start_node() {  # start_node NAME INDEX
  local name="$1" idx="$2" role=worker cpus="$WORKER_CPUS" out="$RUN_DIR/logs/$1.start.log" rc=0 pid sid
  local -a args=(start --disable-usage-stats --log-style=record --log-color=false)
  if [[ "$name" == head ]]; then
    role=head cpus="$HEAD_CPUS"
    args+=(--head --port="$GCS_PORT" --include-dashboard=true --dashboard-host=127.0.0.1
      --dashboard-port="$DASH_PORT" --ray-client-server-port="$CLIENT_PORT")
  else
    args+=(--address="$GCS_ADDRESS")
  fi
  args+=(--temp-dir="$RUN_DIR/$name" --node-name="$name"
    --labels="trainctl.io/node=$name,trainctl.io/role=$role"
    --num-cpus="$cpus" --num-gpus=0 --memory="$NODE_MEMORY" --object-store-memory="$OBJECT_STORE_MEMORY"
    # every node on one host needs its own agent HTTP port (default 52365: the 2nd node retries 6x, ~3 s)
    --dashboard-agent-listen-port=$((AGENT_PORT_BASE + idx)))
  # setsid: each node's daemons get their own session, which down.sh uses to stop exactly them.
  # 9>&-: the daemons must not inherit the flock fd.  </dev/null >file: nor the caller's pipes.
  local -a pre=()
  command -v setsid >/dev/null 2>&1 && pre=(setsid -w)
  (cd "$RUN_DIR" && exec "${pre[@]}" "$RAY" "${args[@]}") </dev/null >"$out" 2>&1 9>&- || rc=$?
  if ((rc != 0)); then
    tail -n 25 "$out" >&2
    die "\`ray start\` for node $name failed (rc=$rc); full log: $out" \
      "cluster/ray/down.sh, then retry; check free ports ($GCS_PORT, $DASH_PORT, $CLIENT_PORT, $((AGENT_PORT_BASE + idx)))"
  fi
  pid="$(raylet_pid "$name")"
  if [[ -n "$pid" ]]; then
    sid="$(ps -o sid= -p "$pid" | tr -d ' ')"
    [[ "$sid" != "$(ps -o sid= -p $$ | tr -d ' ')" ]] && echo "$sid" >"$RUN_DIR/$name.sid"
  fi
}

running_nodes() {  # names of this run dir's nodes whose raylet process is alive
  ps -eo args= | awk -v d="$RUN_DIR/" '$1 ~ /\/raylet$/ && (i = index($0, d)) {
    rest = substr($0, i + length(d)); sub(/\/.*/, "", rest); print rest }' | sort -u
}

wait_ready() {  # wait_ready NAME... : Jobs API answers and every NAME is an ALIVE node -> ALIVE, NAMES
  local deadline=$(($(date +%s) + READY_TIMEOUT)) line n ok
  ALIVE=0 NAMES=""
  while :; do
    if probe jobs "$DASH_URL" && line="$(probe nodes "$DASH_URL")"; then
      read -r ALIVE NAMES <<<"$line"
      ok=1
      for n in "$@"; do [[ ",$NAMES," == *",$n,"* ]] || ok=0; done
      ((ok)) && return 0
    fi
    (($(date +%s) < deadline)) || break
    sleep 0.5
  done
  die "after ${READY_TIMEOUT}s: alive nodes: ${NAMES:-none}; wanted: $*; Jobs API $(probe jobs "$DASH_URL" && echo up || echo down) at $DASH_URL" \
    "logs: $RUN_DIR/logs/*.start.log and $RUN_DIR/<node>/session_latest/logs/ (raylet.out, dashboard.log); then cluster/ray/down.sh"
}

report() {  # report VERB
  log "$1: $ALIVE nodes alive ($NAMES) in $(elapsed "$T0")s"
  log "GCS $GCS_ADDRESS  dashboard + Jobs API $DASH_URL  auth $AUTH  logs $RUN_DIR"
  log "clients: source $RUN_DIR/env   # RAY_ADDRESS=$GCS_ADDRESS RAY_API_SERVER_ADDRESS=$DASH_URL RAY_AUTH_MODE=$AUTH"
}

start_workers() {  # start_workers NAME... (in parallel: each `ray start` is mostly waiting)
  local -a pids=() names=("$@")
  local i rc=0
  for i in "${!names[@]}"; do
    start_node "${names[$i]}" "${names[$i]#worker-}" &
    pids+=($!)
  done
  for i in "${!pids[@]}"; do wait "${pids[$i]}" || rc=1; done
  ((rc == 0)) || die "could not start all worker nodes (see above)" "cluster/ray/down.sh, then retry"
}

# --- already up? ---------------------------------------------------------------------------------

mapfile -t WANT < <(node_names "$WORKERS")
if probe port 127.0.0.1 "$GCS_PORT"; then
  [[ -f "$STATE_FILE" ]] ||
    die "port $GCS_PORT is in use, but $RUN_DIR holds no cluster started by up.sh" \
      "another Ray or service owns it (\`$RAY status --address $GCS_ADDRESS\`): stop it, or pick other ports and run dir via TRAINCTL_RAY_PORT, TRAINCTL_RAY_DASHBOARD_PORT, TRAINCTL_RAY_CLIENT_PORT, TRAINCTL_RAY_RUN_DIR"
  running_auth="$(state_get AUTH)"
  running_auth="${running_auth:-disabled}"
  [[ "$running_auth" == "$AUTH" || -z "${TRAINCTL_RAY_AUTH:-}" ]] ||
    log "WARNING: the running cluster uses TRAINCTL_RAY_AUTH=$running_auth (asked: $AUTH); down.sh first to change it"
  AUTH="$running_auth"
  auth_env "$AUTH"
  mapfile -t RUNNING < <(running_nodes)
  if [[ " ${RUNNING[*]} " != *" head "* ]]; then
    log "GCS port $GCS_PORT answers but the head raylet of $RUN_DIR is gone: restarting the cluster"
    stop_cluster 0
  else
    extra=()
    for name in "${RUNNING[@]}"; do [[ " ${WANT[*]} " == *" $name "* ]] || extra+=("$name"); done
    ((${#extra[@]} == 0)) ||
      die "Ray is already up with nodes ${RUNNING[*]}; asked for ${WANT[*]} (WORKERS=$WORKERS)" \
        "make ray-down (cluster/ray/down.sh) first, then make ray-up WORKERS=$WORKERS"
    missing=()
    for name in "${WANT[@]}"; do [[ " ${RUNNING[*]} " == *" $name "* ]] || missing+=("$name"); done
    if ((${#missing[@]} == 0)); then
      wait_ready "${WANT[@]}"
      report "already up"
      exit 0
    fi
    log "up without ${missing[*]}: starting them"
    start_workers "${missing[@]}"
    wait_ready "${WANT[@]}"
    write_state "$WORKERS"
    report "up"
    exit 0
  fi
fi

# --- fresh start ---------------------------------------------------------------------------------

if [[ -f "$STATE_FILE" || -n "$(our_pids)" ]]; then
  log "cleaning up a dead cluster in $RUN_DIR"
  stop_cluster 0
  rm -f "$STATE_FILE" "$RUN_DIR"/*.sid
fi
if probe port 127.0.0.1 "$GCS_PORT"; then
  die "GCS port $GCS_PORT is still in use after stopping the cluster of $RUN_DIR" \
    "another Ray or service owns it: stop it, or set TRAINCTL_RAY_PORT and TRAINCTL_RAY_RUN_DIR"
fi
if probe port 127.0.0.1 "$DASH_PORT"; then
  die "dashboard port $DASH_PORT is already in use (but GCS port $GCS_PORT is free)" \
    "stop whatever listens there (\`ss -ltnp | grep :$DASH_PORT\`) or set TRAINCTL_RAY_DASHBOARD_PORT"
fi

auth_env "$AUTH"
if [[ "$AUTH" == token ]]; then
  (umask 077 && "$PY" -c 'import secrets; print(secrets.token_hex(32))' >"$TOKEN_FILE")
fi
log "starting head (GCS $GCS_ADDRESS, dashboard $DASH_URL) + $WORKERS worker node(s) in $RUN_DIR"
start_node head 0
write_state 0 # so down.sh can find the head even if a worker fails below
t_head="$(elapsed "$T0")"
((WORKERS == 0)) || start_workers "${WANT[@]:1}"
wait_ready "${WANT[@]}"
write_state "$WORKERS"
log "head started in ${t_head}s"
report "up"
