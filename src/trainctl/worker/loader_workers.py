"""Loader workers of the loaders trainctl rebuilds start from a clean process, never by forking the rank.

A rank runs threads beside its training loop: the metrics sink, the watchdog, the checkpoint writer, gloo's and
Lightning's, and whatever the user's code starts. `fork` copies the memory of all of them but runs only the
calling thread: a lock another thread held at that instant stays held forever in the child, and a worker that
needs it (torch.manual_seed's lazy-seed lock, a stream's buffer lock, a module's import lock, a C library's
mutex) waits forever while the rank waits for its first batch. So these loaders use multiprocessing's forkserver,
a single-threaded process that forks each worker from itself.

The rank forks that server at its start (`fork_server_now`), after importing the user's modules and Lightning
and before it runs any other Python thread: the server inherits those modules and no lock another thread could
own, and a worker costs one fork of it (a server forked before those imports makes every worker import Lightning
to unpickle its seeding worker_init_fn: seconds of CPU per worker). Where the rank already runs threads (Ray runs
training in a thread), the server starts as an interpreter of its own on the first loader with workers and
imports torch and the modules the workers unpickle.

No process outlives its rank: the server dies with the rank and each worker with the server (PR_SET_PDEATHSIG).
The server's end-of-file on its pipe from the rank is not enough: every worker holds a copy of that pipe's write
end, and a worker watches only its own parent, the server.

The server and its workers run with SIGTERM and SIGUSR2 blocked: a scheduler signals every process of a job
step, and the rank alone acts on a warning or a preemption (workers forked from the rank inherited its
flag-setting handlers and kept serving batches the same way).

A loader keeps `fork` when its start method is the user's choice, or when what the workers receive by pickling
is not picklable or not cheap to send (many separate tensors, each passed as a file descriptor; large arrays or
objects, copied to every worker): it is logged with the reason.
"""

from __future__ import annotations

import ctypes
import importlib
import inspect
import io
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import pickle
import signal
import socket
import sys
import threading
from collections.abc import Iterable
from typing import Any

import torch

log = logging.getLogger("trainctl.data")

MAX_TENSORS = 128  # forkserver passes each tensor's shared memory as a file descriptor (its limit: 256 a worker)
MAX_COPIED_BYTES = 64 << 20  # everything else is pickled into every worker at its start
_SERVER_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)
_announced = False
_SERVER_MAIN_ARGS = ["listener_fd", "alive_r", "preload", "main_path", "sys_path"]  # CPython 3.10-3.13.0's main()
_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None  # loaded here, never in a fork
SERVER_HOOKS = "trainctl.worker.loader_server"  # preloaded by a server of its own: its workers die with it


class _Sizer(pickle.Pickler):
    """Pickles to nowhere, counting what a worker's start would send: tensors (shared, one fd each) and bytes."""

    def __init__(self, sink: io.RawIOBase) -> None:
        super().__init__(sink, protocol=pickle.HIGHEST_PROTOCOL)
        self.tensors = 0
        self.array_bytes = 0

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            self.tensors += 1
            return self.tensors
        if type(obj).__module__ == "numpy" and type(obj).__name__ == "ndarray":
            self.array_bytes += int(obj.nbytes)
            return -1 - self.array_bytes
        return None


class _Counter(io.RawIOBase):
    def __init__(self) -> None:
        self.n = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.n += len(b)
        return len(b)


def why_not_forkserver(dataset: Any, collate_fn: Any, worker_init_fn: Any) -> str | None:
    """None when the workers' share of the loader pickles, with few tensors and few bytes; else the reason."""
    sink = _Counter()
    sizer = _Sizer(sink)
    try:
        sizer.dump((dataset, collate_fn, worker_init_fn))
    except Exception as exc:  # any pickling failure: lambdas, local classes, open handles, generators
        return f"its dataset/collate_fn/worker_init_fn do not pickle ({type(exc).__name__}: {exc})"
    if sizer.tensors > MAX_TENSORS:
        return f"its dataset holds {sizer.tensors} separate tensors (> {MAX_TENSORS})"
    copied = sink.n + sizer.array_bytes
    if copied > MAX_COPIED_BYTES:
        return f"its dataset pickles to {copied >> 20} MiB (> {MAX_COPIED_BYTES >> 20} MiB), copied to every worker"
    return None


def _preload(objs: tuple[Any, ...], extra: tuple[str, ...]) -> list[str]:
    """The modules a worker imports to unpickle its share: imported once in the server instead."""
    mods = ["torch", "torch.utils.data", *extra]
    for obj in objs:
        if obj is None:
            continue
        target = getattr(obj, "func", obj)  # functools.partial
        name = getattr(target, "__module__", None) or type(target).__module__
        if name and name not in ("builtins", "__main__") and name not in mods:
            mods.append(name)
    main = getattr(sys.modules.get("__main__"), "__spec__", None)
    package = main.name.rpartition(".")[0] if main is not None else ""
    if package and package not in mods:  # a worker runs the rank's main module by name: its package, imported
        mods.append(package)
    return mods


def die_with_parent(parent: int) -> None:
    """SIGKILL this process when the thread that forked it ends (its process killed included)."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent was gone before the request was in place
        os._exit(1)


def workers_die_with_this_server() -> None:
    """In the forkserver: every process it forks from now on dies with it."""
    server = os.getpid()
    os.register_at_fork(after_in_child=lambda: die_with_parent(server))


def worker_imports(class_paths: Iterable[str | None]) -> list[str]:
    """The modules of the user's classes: their loaders' datasets, collate and worker_init functions live there
    or in what they import (Lightning's seeding worker_init_fn among them)."""
    return [path.rpartition(".")[0] for path in class_paths if isinstance(path, str) and "." in path]


def fork_server_now(imports: Iterable[str] = ()) -> bool:
    """Import `imports`, then fork this rank's forkserver if no other Python thread runs; False (nothing forked)
    otherwise. A module that fails to import is left to the rank's own build, which reports it."""
    fs = multiprocessing.forkserver._forkserver
    if fs._forkserver_pid is not None:
        return True
    if list(inspect.signature(multiprocessing.forkserver.main).parameters) != _SERVER_MAIN_ARGS:
        return False  # another Python's forkserver protocol (e.g. with an authkey): it starts as its own interpreter
    for name in imports:
        try:
            importlib.import_module(name)
        except Exception:  # the build imports it again inside the guarded part and reports it
            continue
    for fabric in ("lightning_fabric", "lightning.fabric"):
        if fabric in sys.modules:  # its seeding worker_init_fn is in every worker Lightning starts
            importlib.import_module(f"{fabric}.utilities.seed")
    # Python threads only: the native ones alive at a rank's start are numpy's and scipy's OpenBLAS pools,
    # idle, and OpenBLAS stops them itself around a fork.
    if threading.active_count() != 1:
        return False
    multiprocessing.resource_tracker.ensure_running()  # a process of its own (fork + exec), started now
    rank = os.getpid()
    address = multiprocessing.connection.arbitrary_address("AF_UNIX")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(address)
        os.chmod(address, 0o600)
        listener.listen()
        alive_r, alive_w = os.pipe()  # the server leaves when this rank (the write end's only holder) is gone
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _SERVER_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    os.close(alive_w)
                    die_with_parent(rank)
                    workers_die_with_this_server()
                    multiprocessing.forkserver.main(listener.fileno(), alive_r, [])
                except SystemExit:
                    code = 0
                finally:
                    os._exit(code)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        os.close(alive_r)
    fs._forkserver_address, fs._forkserver_alive_fd, fs._forkserver_pid = address, alive_w, pid
    return True


def start_server(preload: list[str]) -> None:
    """Start the forkserver as an interpreter of its own unless it runs (again if it died), signals blocked."""
    fs = multiprocessing.forkserver._forkserver
    if fs._forkserver_pid is None:
        fs.set_forkserver_preload([*preload, SERVER_HOOKS])
    # Started first: starting it unblocks SIGTERM (and SIGINT) in this thread once its own process is out.
    multiprocessing.resource_tracker.ensure_running()
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _SERVER_SIGNALS)
    try:
        fs.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)  # a signal that came meanwhile is delivered now
    global _announced
    if not _announced:
        _announced = True
        log.info("loader workers start from a forkserver (pid %d%s)", fs._forkserver_pid,
                 f", preloading {', '.join(fs._preload_modules)}" if fs._preload_modules != ["__main__"] else "")


def context_for(loader: Any, preload: tuple[str, ...] = ()) -> Any:
    """The multiprocessing context for a rebuilt loader's workers; None keeps the loader's own (fork by default).

    `preload`: more modules the workers will import (Lightning's seeding worker_init_fn, added after the rebuild).
    """
    if loader.num_workers == 0 or loader.multiprocessing_context is not None:
        return None
    reason = why_not_forkserver(loader.dataset, loader.collate_fn, loader.worker_init_fn)
    if reason is not None:
        log.warning("loader workers for %s start by fork beside this rank's threads, because %s",
                    type(loader.dataset).__name__, reason)
        return None
    start_server(_preload((loader.dataset, loader.collate_fn, loader.worker_init_fn), preload))
    return multiprocessing.get_context("forkserver")
