"""Preloaded by a loader forkserver that runs as an interpreter of its own (worker/loader_workers.py).

The server dies with the rank thread that started it, and every worker it forks dies with the server: no loader
process outlives a killed rank.
"""

from __future__ import annotations

import os

from trainctl.worker.loader_workers import die_with_parent, workers_die_with_this_server

die_with_parent(os.getppid())
workers_die_with_this_server()
