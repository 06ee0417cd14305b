#!/usr/bin/env bash
# Is the local Ray cluster up?   cluster/ray/status.sh [EXPECTED_NODES] [-v]
#
# Prints the number of alive nodes on stdout (a human summary on stderr). Exit 0 when the cluster
# answers (GCS port + Jobs API) with EXPECTED_NODES alive (default: 1 + the WORKERS recorded by up.sh), 1 when it is down,
# 2 when it is up with another node count. -v also prints `ray status`.
set -euo pipefail

# shellcheck source=_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

expected="" verbose=0
for a in "$@"; do
  case "$a" in
    -h | --help) sed -n '2,6p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -v | --verbose) verbose=1 ;;
    *) [[ "$a" =~ ^[0-9]+$ ]] || die "EXPECTED_NODES must be an integer, got '$a'"; expected="$a" ;;
  esac
done
if [[ -z "$expected" && -f "$STATE_FILE" ]]; then expected="$(sed -n 's/^NODES=//p' "$STATE_FILE")"; fi

PY="$(command -v python3)"
[[ -x "$TRAINCTL_REPO_ROOT/.venv/bin/python" ]] && PY="$TRAINCTL_REPO_ROOT/.venv/bin/python"

if [[ "$(state_get AUTH)" == token ]]; then auth_env token; fi

if ! probe port 127.0.0.1 "$GCS_PORT"; then
  echo "ray: down (nothing on $GCS_ADDRESS)" >&2
  echo 0
  exit 1
fi
if ! probe jobs "$DASH_URL" || ! line="$(probe nodes "$DASH_URL")"; then
  echo "ray: GCS $GCS_ADDRESS answers but the dashboard / Jobs API at $DASH_URL does not" >&2
  echo 0
  exit 1
fi
read -r alive names <<<"$line"
owner="started by up.sh, run dir $RUN_DIR"
[[ -f "$STATE_FILE" ]] || owner="NOT started from $RUN_DIR"
echo "ray: up, $alive node(s) alive (${names}); expected ${expected:-?}; $owner; GCS $GCS_ADDRESS, Jobs API $DASH_URL" >&2
echo "$alive"
if ((verbose)); then
  resolve_ray
  "$RAY" status --address "$GCS_ADDRESS" >&2 || true
fi
[[ -z "$expected" || "$alive" == "$expected" ]] || exit 2
