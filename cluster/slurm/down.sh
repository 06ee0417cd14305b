#!/usr/bin/env bash
# Stop the local SLURM cluster started by up.sh: cancels its jobs, stops exactly the daemons named by
# the pid files in the run dir (never by process name), removes its /etc/hosts line. Idempotent.
#   cluster/slurm/down.sh [--quiet]
# Keeps the run dir's logs; the next up.sh wipes job state and accounting.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$HERE/common.sh"

QUIET=0
[[ ${1:-} == --quiet ]] && QUIET=1
need_root
T0=$(date +%s.%N)

if [[ ${TRAINCTL_SLURM_LOCKED:-0} != 1 && -d $RUN_DIR ]]; then
  exec 9>"$RUN_DIR/.lock"
  flock -w 120 9 || die 1 "another up.sh/down.sh holds $RUN_DIR/.lock"
fi

was_up=0
for f in "$SLURMCTLD_PID" "$SLURMDBD_PID" "$MARIADB_PID" "$MUNGE_PID" "$PID_DIR"/slurmd-*.pid; do
  [[ -e $f ]] && alive "$f" && was_up=1
done

# 1. Cancel this cluster's jobs so no task outlives its slurmd (they all belong to this private cluster).
if alive "$SLURMCTLD_PID"; then
  mapfile -t jobs < <(sl squeue -h -o %A 2>/dev/null || true)
  if ((${#jobs[@]})); then
    sl scancel "${jobs[@]}" 2>/dev/null || true
    # shellcheck disable=SC2016  # \$1 is expanded by the inner bash
    wait_until 8 bash -c '[[ -z $(SLURM_CONF="$1" timeout 5 squeue -h -t R,CG,S -o %A 2>/dev/null) ]]' _ "$CONF" || true
  fi
fi

# 2. Daemons, dependents first: slurmd(s), slurmctld, slurmdbd, MariaDB, munge.
shopt -s nullglob
stop_pidfiles "$PID_DIR"/slurmd-*.pid
stop_pidfiles "$SLURMCTLD_PID"
stop_pidfiles "$SLURMDBD_PID"
stop_pidfiles "$MARIADB_PID"
stop_pidfiles "$MUNGE_PID"

# 3. Step daemons / tasks left behind by a killed slurmd (found by their environment, see cluster_procs).
mapfile -t left < <(cluster_procs "")
if ((${#left[@]})); then
  log "killing ${#left[@]} leftover job process(es): ${left[*]}"
  kill -KILL "${left[@]}" 2>/dev/null || true
fi

# 4. Host-wide bits.
hosts_remove
if [[ -L $ETC_CONF && $(readlink "$ETC_CONF") == "$CONF" ]]; then rm -f "$ETC_CONF"; fi
rm -f "$NODES_FILE"

if ((!QUIET || was_up)); then
  log "down ($(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s)"
fi
