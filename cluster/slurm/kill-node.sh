#!/usr/bin/env bash
# Fault injection for tests: make node nK of the local cluster die.
#   cluster/slurm/kill-node.sh nK                 # crash: SIGKILL slurmd + that node's step daemons and job tasks
#   cluster/slurm/kill-node.sh nK --slurmd-only   # only the daemon dies; the node's tasks keep running (orphans)
# slurmctld marks the node NOT_RESPONDING, then DOWN after SlurmdTimeout (~18 s measured) and requeues its
# batch jobs (sacct: NODE_FAIL, then the new attempt). `cluster/slurm/up.sh N` restarts the dead slurmd and the
# node returns to service by itself (ReturnToService=2).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$HERE/common.sh"

node=${1:-}
[[ $node =~ ^${NODE_PREFIX}[0-9]+$ ]] || die 2 "usage: $(basename "$0") nK [--slurmd-only]" "e.g. $(basename "$0") n2"
need_root
pidfile=$(slurmd_pid "$node")
pid=$(pid_of "$pidfile") || die 1 "slurmd of $node is not running ($pidfile)"
victims=("$pid")
if [[ ${2:-} != --slurmd-only ]]; then
  mapfile -t -O 1 victims < <(cluster_procs "$node")
fi
kill -KILL "${victims[@]}" 2>/dev/null || true
log "killed $node: slurmd pid $pid$( ((${#victims[@]} > 1)) && echo " + $((${#victims[@]} - 1)) step/task process(es)")"
