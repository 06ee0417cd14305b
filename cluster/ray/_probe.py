"""Tiny, stdlib-only probes used by up.sh / status.sh (no `import ray`: ~30 ms instead of ~1.5 s).

python3 _probe.py port HOST PORT          exit 0 if a TCP connect to HOST:PORT succeeds
python3 _probe.py jobs DASHBOARD_URL      exit 0 if the Jobs API (GET /api/version, /api/jobs/) answers
python3 _probe.py nodes DASHBOARD_URL     print "<alive> <name>,<name>,..." from the state API
                                          (GET /api/v0/nodes); exit 1 if it does not answer
"""

from __future__ import annotations

import json
import os
import socket
import sys
import urllib.request

TIMEOUT_S = 3.0


def _token() -> str | None:
    """Ray 2.60 token auth (RAY_AUTH_MODE=token): the token goes in an Authorization header."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return None
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    with open(path) as f:
        return f.read().strip()


def _get(url: str) -> bytes:
    req = urllib.request.Request(url)
    token = _token()
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
        if resp.status != 200:
            raise OSError(f"HTTP {resp.status}")
        return resp.read()


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cmd = argv[0]
    try:
        if cmd == "port":
            with socket.create_connection((argv[1], int(argv[2])), timeout=TIMEOUT_S):
                return 0
        base = argv[1].rstrip("/")
        if cmd == "jobs":  # what JobSubmissionClient / `ray job list` call
            json.loads(_get(f"{base}/api/version"))
            json.loads(_get(f"{base}/api/jobs/"))
            return 0
        if cmd == "nodes":
            body = json.loads(_get(f"{base}/api/v0/nodes?limit=10000&detail=false"))
            nodes = body["data"]["result"]["result"]
            alive = sorted(n.get("node_name") or n["node_id"][:8] for n in nodes if n.get("state") == "ALIVE")
            print(len(alive), ",".join(alive))
            return 0
    except (OSError, ValueError, KeyError, TypeError):
        return 1
    print(f"unknown probe {cmd!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
