#!/usr/bin/env bash
# Is the local SLURM cluster up? Prints one line; exit 0 when slurmctld answers and all of the
# up.sh node count are idle/alloc/mix (or completing/planned), 1 otherwise.
#   cluster/slurm/status.sh
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$HERE/common.sh"

if [[ ! -f $NODES_FILE || ! -f $CONF ]]; then
  echo "slurm: down (no cluster started from $RUN_DIR)"; exit 1
fi
want=$(<"$NODES_FILE")
if ! alive "$SLURMCTLD_PID" || ! sl scontrol ping >/dev/null 2>&1; then
  echo "slurm: down (slurmctld not answering; want $want nodes; logs in $LOG_DIR)"; exit 1
fi
states=$(sl sinfo -h -N -o '%N %t' 2>/dev/null | sort -u) || states=""
ok=$(awk '$2 ~ /^(idle|alloc|mix|comp|plnd)$/' <<<"$states" | wc -l)
total=$(sed '/^$/d' <<<"$states" | wc -l)
summary=$(awk '{c[$2]++} END {for (s in c) printf "%s%s=%d", (n++ ? " " : ""), s, c[s]}' <<<"$states")
if ((ok == want && total == want)); then
  echo "slurm: up nodes=$want ($summary) conf=$CONF"; exit 0
fi
echo "slurm: degraded nodes=$ok/$want usable ($summary) conf=$CONF"; exit 1
