# shellcheck shell=bash disable=SC2034  # the variables are used by the scripts that source this
# Shared by up.sh, down.sh, status.sh and kill-node.sh (sourced, not run).
# One local cluster per host: ports 6817/6819/1700K, /etc/hosts and /etc/slurm/slurm.conf are host-wide.

export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin${PATH:+:$PATH}"

RUN_DIR="${TRAINCTL_SLURM_RUN_DIR:-/tmp/trainctl-slurm}"
CONF="$RUN_DIR/slurm.conf"
PID_DIR="$RUN_DIR/pid"
LOG_DIR="$RUN_DIR/log"
NODES_FILE="$RUN_DIR/nodes"            # node count of the running cluster; absent when down
HOSTS_MARK="# trainctl-slurm (cluster/slurm/up.sh; removed by down.sh)"
ETC_CONF=/etc/slurm/slurm.conf          # Debian's slurm-client default (compiled-in SLURM_CONF)
NODE_PREFIX=n                           # nodes are n1..nN
SLURMD_BASE_PORT=17000                  # node nK listens on 17000+K

MUNGE_PID="$RUN_DIR/munge/munged.pid"
MARIADB_PID="$RUN_DIR/mysql/mariadbd.pid"   # dirs owned by the daemon user
SLURMDBD_PID="$PID_DIR/slurmdbd.pid"
SLURMCTLD_PID="$PID_DIR/slurmctld.pid"
slurmd_pid() { echo "$PID_DIR/slurmd-$1.pid"; }

log() { printf '[slurm %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# die CODE MESSAGE [HINT]
die() {
  local code=$1 msg=$2 hint=${3:-}
  printf 'ERROR: %s\n' "$msg" >&2
  [[ -n $hint ]] && printf 'HINT: %s\n' "$hint" >&2
  exit "$code"
}

need_root() {
  [[ $(id -u) -eq 0 ]] || die 2 "$(basename "$0") must run as root (it starts munge, MariaDB and the SLURM daemons)" \
    "run it with sudo, or as root in the dev container"
}

# Client commands against *this* cluster, whatever /etc/slurm holds.
sl() { SLURM_CONF="$CONF" timeout 15 "$@"; }

# pid_of PIDFILE -> prints the pid if the file holds a live (non-zombie) process.
pid_of() {
  local f=$1 pid stat
  [[ -r $f ]] || return 1
  read -r pid <"$f" 2>/dev/null || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  stat=${stat##*) }                    # after "pid (comm) "
  [[ ${stat%% *} != Z && ${stat%% *} != X ]] || return 1
  echo "$pid"
}

alive() { pid_of "$1" >/dev/null; }

# wait_until SECONDS CMD... : poll CMD every 0.1 s.
wait_until() {
  local limit=$1; shift
  local end=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < end)) || return 1
    sleep 0.1
  done
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# stop_pidfiles FILE... : SIGTERM all, wait up to 15 s, then SIGKILL the rest. Zombies count as stopped.
stop_pidfiles() {
  local f pid pids=() files=()
  for f in "$@"; do
    if pid=$(pid_of "$f"); then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid"); files+=("$f")
    fi
  done
  ((${#files[@]})) || return 0
  local end=$((SECONDS + 15)) left
  while :; do
    left=()
    for f in "${files[@]}"; do alive "$f" && left+=("$f"); done
    ((${#left[@]})) || break
    if ((SECONDS >= end)); then
      for f in "${left[@]}"; do
        pid=$(pid_of "$f") && { log "SIGKILL $(basename "$f") pid $pid"; kill -KILL "$pid" 2>/dev/null || true; }
      done
      sleep 0.2
      break
    fi
    sleep 0.05
  done
  for f in "${files[@]}"; do rm -f "$f"; done
}

hosts_remove() {
  grep -qF "$HOSTS_MARK" /etc/hosts 2>/dev/null || return 0
  local tmp
  tmp=$(mktemp)
  grep -vF "$HOSTS_MARK" /etc/hosts >"$tmp" || true
  cat "$tmp" >/etc/hosts               # in place: /etc/hosts may be a bind mount
  rm -f "$tmp"
}

node_names() {
  local n=$1 k out=()
  for ((k = 1; k <= n; k++)); do out+=("$NODE_PREFIX$k"); done
  echo "${out[*]}"
}

# Processes of jobs that belong to this cluster (their environment names our slurm.conf and a node):
# slurmstepd and job tasks left behind by a killed slurmd. Prints pids.
job_leftovers() {
  local d pid env=() conf=0 node=0 job=0 v
  for d in /proc/[0-9]*; do
    pid=${d#/proc/}
    [[ $pid == "$$" || $pid == "$BASHPID" ]] && continue
    mapfile -d '' env 2>/dev/null <"$d/environ" || continue
    conf=0 node=0 job=0
    for v in "${env[@]}"; do
      case $v in
        "SLURM_CONF=$CONF") conf=1 ;;
        SLURMD_NODENAME=*) node=1 ;;
        SLURM_JOB_ID=*) job=1 ;;
      esac
    done
    ((conf)) || continue
    if ((node && job)); then
      echo "$pid"                       # a job task (batch script or srun task)
    elif [[ $(readlink "$d/exe" 2>/dev/null) == */slurmstepd ]]; then
      echo "$pid"                       # a step daemon spawned by one of our slurmd
    fi
  done
}
