#!/usr/bin/env bash
# Bring up a real local SLURM cluster with NODES nodes (n1..nN, one slurmd each) on this host.
#   cluster/slurm/up.sh [NODES]        (default 3; run as root)
# Idempotent: up with the same node count -> returns at once (restarting any dead slurmd);
# up with another count, or half up -> full restart. A fresh start wipes jobs and accounting.
# Env: TRAINCTL_SLURM_RUN_DIR (default /tmp/trainctl-slurm), TRAINCTL_SLURM_CPUS (per node, default 2),
#      TRAINCTL_SLURM_MEM_MB (RealMemory per node, default: host memory - 512 MB),
#      TRAINCTL_SLURM_GRACE_S (GraceTime of a preempted job, default 30).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$HERE/common.sh"

T0=$(date +%s.%N)
elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

NODES=${1:-${NODES:-3}}
if ! [[ $NODES =~ ^[0-9]+$ ]] || ((NODES < 1 || NODES > 64)); then
  die 2 "NODES must be 1..64, got '$NODES'" "cluster/slurm/up.sh 3"
fi
CPUS=${TRAINCTL_SLURM_CPUS:-2}
GRACE=${TRAINCTL_SLURM_GRACE_S:-30}
need_root

# --- packages --------------------------------------------------------------------------------
install_packages() {
  local missing=() b
  for b in slurmctld slurmd slurmstepd sinfo srun sbatch sacct munged slurmdbd mariadbd mariadb; do
    command -v "$b" >/dev/null 2>&1 || missing+=("$b")
  done
  ((${#missing[@]})) || return 0
  command -v apt-get >/dev/null 2>&1 || die 2 "missing ${missing[*]} and no apt-get to install them" \
    "install Slurm (slurmctld slurmd slurm-client slurmdbd), munge and MariaDB by hand, or use Debian/Ubuntu"
  log "installing SLURM, munge, MariaDB (missing: ${missing[*]})"
  # Keep the packages' init scripts from starting daemons: we start them ourselves.
  local prc=/usr/sbin/policy-rc.d ours=0
  if [[ ! -e $prc ]]; then printf '#!/bin/sh\nexit 101\n' >"$prc"; chmod 755 "$prc"; ours=1; fi
  local rc=0
  { apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      slurmctld slurmd slurm-client munge slurmdbd mariadb-server; } >"/tmp/trainctl-slurm-apt.log" 2>&1 || rc=$?
  ((ours)) && rm -f "$prc"
  ((rc == 0)) || die 2 "apt-get failed (exit $rc); see /tmp/trainctl-slurm-apt.log" \
    "check network access to the Debian mirrors, then rerun"
}
install_packages

mkdir -p "$RUN_DIR" "$PID_DIR" "$LOG_DIR"
exec 9>"$RUN_DIR/.lock"
flock -w 120 9 || die 1 "another up.sh/down.sh holds $RUN_DIR/.lock"

HOST=$(hostname -s)

# --- already up? ---------------------------------------------------------------------------------
nodes_ready() {  # all NODES nodes idle/alloc/mix, none not-responding
  local want=$1 n
  n=$(sl sinfo -h -N -o '%N %t' 2>/dev/null | awk '$2 ~ /^(idle|alloc|mix|comp|plnd)$/ {print $1}' | sort -u | wc -l)
  ((n == want))
}

start_slurmd() {
  local name=$1 k=${1#"$NODE_PREFIX"}
  mkdir -p "$RUN_DIR/spool/$name"
  # TRAINCTL_SLURM_NODE is inherited by the node's slurmstepd processes (see cluster_procs, kill-node.sh).
  TRAINCTL_SLURM_NODE="$name" SLURM_CONF="$CONF" slurmd -N "$name" -f "$CONF" </dev/null >>"$LOG_DIR/slurmd-$name.out" 2>&1 9>&- ||
    die 1 "slurmd -N $name failed; see $LOG_DIR/slurmd-$name.log" "port $((SLURMD_BASE_PORT + k)) in use?"
}

if [[ -f $NODES_FILE ]] && alive "$SLURMCTLD_PID" && alive "$SLURMDBD_PID" && sl scontrol ping >/dev/null 2>&1; then
  have=$(<"$NODES_FILE")
  if [[ $have == "$NODES" ]]; then
    for name in $(node_names "$NODES"); do
      alive "$(slurmd_pid "$name")" || { log "restarting dead slurmd $name"; start_slurmd "$name"; }
    done
    wait_until 30 nodes_ready "$NODES" || die 1 "cluster is up but not all $NODES nodes are idle/alloc/mix" \
      "sinfo -N; logs in $LOG_DIR; or cluster/slurm/down.sh && cluster/slurm/up.sh $NODES"
    log "already up with $NODES nodes ($(elapsed) s); run dir $RUN_DIR"
    exit 0
  fi
  log "up with $have nodes, want $NODES: restarting"
fi
# Anything left from an earlier cluster (also a half-started one) goes first (we hold the lock).
TRAINCTL_SLURM_LOCKED=1 "$HERE/down.sh" --quiet

# --- render configs ------------------------------------------------------------------------------
mem_total_mb=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
MEM=${TRAINCTL_SLURM_MEM_MB:-$((mem_total_mb > 1536 ? mem_total_mb - 512 : 1024))}
rm -rf "$RUN_DIR/state" "$RUN_DIR/spool"
mkdir -p "$RUN_DIR/state" "$RUN_DIR/spool"
chmod 755 "$RUN_DIR"
node_lines=""
k=0
for name in $(node_names "$NODES"); do
  k=$((k + 1))
  node_lines+="NodeName=$name NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$((SLURMD_BASE_PORT + k)) CPUs=$CPUS RealMemory=$MEM State=UNKNOWN"$'\n'
done
render() {  # render TEMPLATE OUT
  local line out=()
  while IFS= read -r line || [[ -n $line ]]; do
    if [[ $line == "@NODE_LINES@" ]]; then out+=("${node_lines%$'\n'}"); continue; fi
    line=${line//@HOST@/$HOST}
    line=${line//@RUN_DIR@/$RUN_DIR}
    line=${line//@GRACE@/$GRACE}
    out+=("$line")
  done <"$1"
  printf '%s\n' "${out[@]}" >"$2"
}
render "$HERE/slurm.conf.in" "$CONF"
chmod 644 "$CONF"
( umask 077; render "$HERE/slurmdbd.conf.in" "$RUN_DIR/slurmdbd.conf" )
chmod 600 "$RUN_DIR/slurmdbd.conf"
cat >"$RUN_DIR/env.sh" <<EOF
# source me: SLURM client commands for the trainctl local cluster (also works without: $ETC_CONF links here)
export SLURM_CONF=$CONF
EOF

# Client commands read $ETC_CONF by default: point it here unless it is someone else's file.
mkdir -p /etc/slurm
if [[ -L $ETC_CONF || ! -e $ETC_CONF ]]; then
  ln -sfn "$CONF" "$ETC_CONF"
else
  log "$ETC_CONF is not ours: leaving it; use 'source $RUN_DIR/env.sh' (SLURM_CONF) for client commands"
fi

hosts_remove
printf '127.0.0.1 %s %s\n' "$(node_names "$NODES")" "$HOSTS_MARK" >>/etc/hosts

# --- munge -----------------------------------------------------------------------------------------
munge_ok() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }
if munge_ok; then
  log "munge already running (not ours): using it"
else
  [[ -s /etc/munge/munge.key ]] || {
    log "creating /etc/munge/munge.key"
    install -d -o munge -g munge -m 700 /etc/munge
    if command -v mungekey >/dev/null; then runuser -u munge -- mungekey --create --force 9>&-
    else dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; fi
    chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
  }
  install -d -o munge -g munge -m 755 /run/munge "$RUN_DIR/munge"
  rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
  runuser -u munge -- munged --pid-file="$MUNGE_PID" --log-file="$RUN_DIR/munge/munged.log" \
    </dev/null >>"$LOG_DIR/munged.out" 2>&1 9>&- ||
    die 1 "munged failed to start; see $RUN_DIR/munge/munged.log"
  wait_until 10 munge_ok || die 1 "munge does not answer; see $RUN_DIR/munge/munged.log"
fi

# --- MariaDB ---------------------------------------------------------------------------------------
db() { mariadb --protocol=socket -uroot "$@"; }
if db -e 'select 1' >/dev/null 2>&1; then
  log "MariaDB already running (not ours): using it"
else
  install -d -o mysql -g mysql -m 755 /run/mysqld "$RUN_DIR/mysql"
  if [[ ! -d /var/lib/mysql/mysql ]]; then
    log "initialising /var/lib/mysql"
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql >"$LOG_DIR/mariadb-install.log" 2>&1 9>&- ||
      die 1 "mariadb-install-db failed; see $LOG_DIR/mariadb-install.log"
  fi
  setsid mariadbd --user=mysql --skip-networking --socket=/run/mysqld/mysqld.sock --pid-file="$MARIADB_PID" \
    --log-error="$RUN_DIR/mysql/mariadb.log" </dev/null >>"$LOG_DIR/mariadb.out" 2>&1 9>&- &
  wait_until 60 db -e 'select 1' || die 1 "MariaDB did not come up; see $RUN_DIR/mysql/mariadb.log and $LOG_DIR/mariadb.out"
  wait_until 10 alive "$MARIADB_PID" || true
fi
# Fresh accounting every fresh start: recycled job ids + stale records confuse sacct/submitit.
db -e 'DROP DATABASE IF EXISTS slurm_acct_db; CREATE DATABASE slurm_acct_db;'

# --- slurmdbd, slurmctld, slurmd ---------------------------------------------------------------------
SLURM_CONF="$CONF" slurmdbd </dev/null >>"$LOG_DIR/slurmdbd.out" 2>&1 9>&- ||
  die 1 "slurmdbd failed; see $LOG_DIR/slurmdbd.log"
wait_until 30 port_open 6819 || die 1 "slurmdbd is not listening on 6819; see $LOG_DIR/slurmdbd.log"

SLURM_CONF="$CONF" slurmctld -f "$CONF" </dev/null >>"$LOG_DIR/slurmctld.out" 2>&1 9>&- ||
  die 1 "slurmctld failed; see $LOG_DIR/slurmctld.log"
wait_until 30 sl scontrol ping || die 1 "slurmctld does not answer scontrol ping; see $LOG_DIR/slurmctld.log" \
  "port 6817 in use? hostname -s ($HOST) must equal SlurmctldHost"

for name in $(node_names "$NODES"); do start_slurmd "$name"; done
echo "$NODES" >"$NODES_FILE"
wait_until 60 nodes_ready "$NODES" || die 1 "not all $NODES nodes became idle; see $LOG_DIR/slurmd-*.log" \
  "sinfo -N -l; scontrol show node"
log "up: $NODES nodes ($(node_names "$NODES")) x $CPUS CPUs in $(elapsed) s; run dir $RUN_DIR"
