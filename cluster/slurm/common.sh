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

# proc_state PID -> one-letter state (R, S, Z, ...) and start time, "" if gone.
proc_state() {
  local stat fields
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }                    # after "pid (comm) "
  read -r -a fields <<<"$stat"
  echo "${fields[0]} ${fields[19]}"             # state, starttime (field 22 of stat)
}

# pid_of PIDFILE -> prints the pid if the file holds a live (non-zombie) process.
pid_of() {
  local f=$1 pid st
  [[ -r $f ]] || return 1
  read -r pid <"$f" 2>/dev/null || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  st=$(proc_state "$pid") || return 1
  [[ ${st%% *} != Z && ${st%% *} != X ]] || return 1
  echo "$pid"
}

alive() { pid_of "$1" >/dev/null; }

# same_proc PID STARTTIME: still that process, and not a zombie.
same_proc() {
  local st
  st=$(proc_state "$1") || return 1
  [[ ${st#* } == "$2" && ${st%% *} != Z && ${st%% *} != X ]]
}

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

# stop_pidfiles FILE... : SIGTERM the processes the files name, wait (by pid + start time, since a daemon may
# remove its pid file before it has exited) up to 15 s, then SIGKILL the rest. Zombies count as stopped.
stop_pidfiles() {
  local f pid st pids=() starts=() i left
  for f in "$@"; do
    if pid=$(pid_of "$f") && st=$(proc_state "$pid"); then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid"); starts+=("${st#* }")
    fi
    rm -f "$f"
  done
  local end=$((SECONDS + 15))
  while ((${#pids[@]})); do
    left=0
    for i in "${!pids[@]}"; do same_proc "${pids[$i]}" "${starts[$i]}" && left=1; done
    ((left)) || break
    if ((SECONDS >= end)); then
      for i in "${!pids[@]}"; do
        if same_proc "${pids[$i]}" "${starts[$i]}"; then
          log "SIGKILL pid ${pids[$i]}"; kill -KILL "${pids[$i]}" 2>/dev/null || true
        fi
      done
      sleep 0.2
      break
    fi
    sleep 0.05
  done
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

# Processes of jobs run by this cluster's slurmd(s), optionally only those of node $1: step daemons
# (slurmd starts them with TRAINCTL_SLURM_NODE=<node> in their environment) and job tasks (SLURMD_NODENAME),
# both carrying SLURM_CONF=<our slurm.conf>. Prints pids. Used for leftovers and to simulate a node crash.
cluster_procs() {
  local want=${1:-} d pid env=() conf node job v
  for d in /proc/[0-9]*; do
    pid=${d#/proc/}
    [[ $pid == "$$" || $pid == "$BASHPID" ]] && continue
    mapfile -d '' env 2>/dev/null <"$d/environ" || continue
    conf=0 node="" job=0
    for v in "${env[@]}"; do
      case $v in
        "SLURM_CONF=$CONF") conf=1 ;;
        SLURMD_NODENAME=*) node=${v#*=} ;;
        SLURM_JOB_ID=*) job=1 ;;
        TRAINCTL_SLURM_NODE=*) [[ $(readlink "$d/exe" 2>/dev/null) == */slurmstepd* ]] && node=${v#*=} job=1 ;;
      esac
    done
    if ((conf && job)) && [[ -n $node ]] && [[ -z $want || $node == "$want" ]]; then echo "$pid"; fi
  done
}
