#!/usr/bin/env bash
# Stop the local Ray cluster started by up.sh and clean its run dir. Idempotent.
#
#   cluster/ray/down.sh
#
# Scoped equivalent of `ray stop --force`: it SIGKILLs only the processes of the cluster in
# $TRAINCTL_RAY_RUN_DIR (each node's setsid session, Ray daemons naming the run dir, the Ray Client
# server of our GCS port, and all their descendants, job entrypoints included), not other Ray
# clusters on the host. Plain `ray stop` would kill every Ray process of every user it may signal.
#   TRAINCTL_RAY_STOP_GRACE=N   SIGTERM first and wait up to N s before SIGKILL (default 0)
#   TRAINCTL_RAY_KEEP_LOGS=1    keep $TRAINCTL_RAY_RUN_DIR/<node>/session_*/logs (default: delete the run dir)
#   TRAINCTL_RAY_STOP_ALL=1     afterwards also run `ray stop --force` (host-wide, unscoped)
set -euo pipefail

# shellcheck source=_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
case "${1:-}" in -h | --help) sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;; esac

T0="$(now)"
if [[ ! -d "$RUN_DIR" ]] && [[ "${TRAINCTL_RAY_STOP_ALL:-0}" != 1 ]]; then
  # Nothing recorded; still sweep Ray daemons that name the run dir (e.g. the dir was deleted by hand).
  stop_cluster "${TRAINCTL_RAY_STOP_GRACE:-0}"
  log "down: nothing to stop$( ((STOPPED_COUNT)) && echo " (killed $STOPPED_COUNT stray processes)")"
  exit 0
fi

take_lock
stop_cluster "${TRAINCTL_RAY_STOP_GRACE:-0}"

if [[ "${TRAINCTL_RAY_STOP_ALL:-0}" == 1 ]]; then
  if (resolve_ray) 2>/dev/null; then
    resolve_ray
    log "TRAINCTL_RAY_STOP_ALL=1: $RAY stop --force (every Ray process on this host)"
    "$RAY" stop --force || true
  fi
fi

# Wait for the ports to be released, so an immediate up.sh does not see a half-dead head.
deadline=$(($(date +%s) + 10))
while probe port 127.0.0.1 "$GCS_PORT" 2>/dev/null && (($(date +%s) < deadline)); do sleep 0.2; done
if probe port 127.0.0.1 "$GCS_PORT" 2>/dev/null; then
  log "WARNING: port $GCS_PORT still answers: another Ray (not started from $RUN_DIR) may own it"
fi

if [[ "${TRAINCTL_RAY_KEEP_LOGS:-0}" == 1 ]]; then
  rm -f "$STATE_FILE" "$RUN_DIR/env" "$RUN_DIR"/*.sid
  find "$RUN_DIR" -path '*/session_*/sockets' -prune -exec rm -rf {} + 2>/dev/null || true
  log "down: stopped $STOPPED_COUNT processes in $(elapsed "$T0")s; logs kept in $RUN_DIR"
else
  exec 9>&- # release the lock before removing its file
  rm -rf "$RUN_DIR"
  log "down: stopped $STOPPED_COUNT processes in $(elapsed "$T0")s; removed $RUN_DIR"
fi
