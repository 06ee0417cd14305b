"""Loader workers of rebuilt loaders start from the forkserver: a lock a rank's thread holds cannot hang them,
they start with the user's modules already imported, and none outlives a killed rank."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from trainctl.worker.loader_workers import MAX_TENSORS, context_for, why_not_forkserver

SRC = Path(__file__).resolve().parents[2] / "src"

# A rank-like process: a thread sits inside torch's lazy-seed lock (torch.manual_seed takes it on a CPU build and
# formats a stack there, the GIL released on file reads) while the main thread starts loader workers, whose
# start-up calls torch.manual_seed. A plain loader forks its workers; the rebuilt one asks the forkserver.
SCRIPT = r'''
import json, os, signal, sys, threading, time

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from trainctl.components import namespace_of
from trainctl.worker.data import ResumableData


class Probe(Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as fh:
            own_interpreter = b"forkserver" in fh.read()
        return torch.tensor([i, signal.SIGTERM in blocked, signal.SIGUSR2 in blocked, os.getppid(), own_interpreter])


def first_batch(loader):
    it = iter(loader)
    try:
        return next(it).tolist()
    except RuntimeError as exc:
        return str(exc)
    finally:
        it._shutdown_workers()


if __name__ == "__main__":
    from trainctl.worker.loader_workers import fork_server_now

    forked = sys.argv[2] == "early" and fork_server_now()  # as worker.entrypoint.train: before any thread runs
    held = threading.Event()

    def hold():
        with torch.cuda._initialization_lock:
            held.set()
            time.sleep(3600)

    threading.Thread(target=hold, daemon=True).start()
    held.wait()
    forked = forked or fork_server_now()  # late: refused, a thread runs
    plain = DataLoader(Probe(), batch_size=8, num_workers=1, timeout=float(sys.argv[1]))
    rebuilt = ResumableData(namespace_of(pl.LightningModule), None, 0, 0, 1)._rebuild("test_dataloader", plain)
    rebuilt.timeout = 120.0  # it must deliver: a long bound; the plain loader never does: a short one (argv[1])
    out = {"rebuilt": first_batch(rebuilt), "plain": first_batch(plain), "rank": os.getpid(), "forked": forked}
    print(json.dumps(out), flush=True)
    os._exit(0)
'''


@pytest.mark.parametrize("server", ["early", "late"])
def test_rebuilt_loader_starts_workers_while_a_thread_holds_a_lock_they_need(tmp_path: Path, server: str) -> None:
    """early: the server forked from the rank at its start (local and SLURM ranks); late: started as an
    interpreter of its own by the first loader with workers (a rank that already runs threads, as on Ray)."""
    script = tmp_path / "rank.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, str(script), "2", server], capture_output=True, text=True, timeout=300,
                         env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["forked"] is (server == "early"), out
    # The forked worker inherited the held lock: it never delivers (the loader's own timeout ends the wait).
    assert isinstance(out["plain"], str) and "timed out" in out["plain"], out
    rows = out["rebuilt"]
    assert [int(r[0]) for r in rows] == list(range(8)), out
    assert all(r[1] == 1 and r[2] == 1 for r in rows), f"SIGTERM/SIGUSR2 must be blocked in the worker: {out}"
    assert all(int(r[3]) != out["rank"] for r in rows), "the worker's parent is the forkserver, not the rank"
    assert all(r[4] == (server == "late") for r in rows), "an early server is a fork of the rank, no interpreter"


class _Lambda(Dataset):
    def __init__(self) -> None:
        self.f = lambda i: i

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> int:
        return self.f(i)


def test_what_workers_receive_decides_the_start_method() -> None:
    small = TensorDataset(torch.zeros(100, 4), torch.zeros(100))
    assert why_not_forkserver(small, None, None) is None
    assert "do not pickle" in (why_not_forkserver(_Lambda(), None, None) or "")
    assert "do not pickle" in (why_not_forkserver(small, lambda b: b, None) or "")
    many = [torch.zeros(2) for _ in range(MAX_TENSORS + 1)]
    assert "separate tensors" in (why_not_forkserver(many, None, None) or "")
    assert "MiB" in (why_not_forkserver([np.zeros(80 << 20, dtype=np.uint8)], None, None) or "")


def test_no_workers_or_the_users_own_start_method_are_left_alone() -> None:
    ds = TensorDataset(torch.zeros(8, 2))
    assert context_for(DataLoader(ds, num_workers=0)) is None
    assert context_for(DataLoader(ds, num_workers=2, multiprocessing_context="spawn")) is None
    assert context_for(DataLoader(_Lambda(), num_workers=2)) is None  # kept on fork, with a warning


# A rank that starts persistent loader workers and is then SIGKILLed. "early": the server is forked from the rank
# after the user's modules are imported; "late": the server is an interpreter of its own. A worker reports whether
# Lightning was imported before it unpickled anything (this script's own top level does not import it).
KILLED = r'''
import json, os, sys, time

from torch.utils.data import DataLoader, Dataset

from trainctl.worker.loader_workers import context_for, fork_server_now


class Probe(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return int("pytorch_lightning" in sys.modules)


if __name__ == "__main__":
    if sys.argv[1] == "early":
        assert fork_server_now(["trainctl.examples.digits"])
    loader = DataLoader(Probe(), batch_size=4, num_workers=2, persistent_workers=True)
    loader.multiprocessing_context = context_for(loader)
    it = iter(loader)
    batch = next(it)
    import multiprocessing.forkserver as fs

    print(json.dumps({"imported": batch.tolist(), "server": fs._forkserver._forkserver_pid,
                      "workers": [w.pid for w in it._workers]}), flush=True)
    time.sleep(3600)
'''


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie (reparented children wait for init to reap them)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.parametrize("server", ["early", "late"])
def test_no_loader_process_outlives_a_killed_rank(tmp_path: Path, server: str) -> None:
    script = tmp_path / "rank.py"
    script.write_text(KILLED)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    rank = subprocess.Popen([sys.executable, str(script), server], stdout=subprocess.PIPE, text=True, env=env,
                            cwd=tmp_path)
    try:
        ready, _, _ = select.select([rank.stdout], [], [], 300)
        assert ready, "the rank printed nothing in 300 s"
        out = json.loads(rank.stdout.readline())
    finally:
        rank.kill()
        rank.wait(timeout=60)
    if server == "early":  # the workers start with the user's modules (and Lightning) already in the server
        assert out["imported"] == [1, 1, 1, 1], out
    left = [out["server"], *out["workers"]]
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in left) and time.monotonic() < deadline:
        time.sleep(0.2)
    outlived = [p for p in left if _alive(p)]
    for p in outlived:
        os.kill(p, signal.SIGKILL)
    assert not outlived, f"outlived the rank by 30 s: {outlived} of {left}"
