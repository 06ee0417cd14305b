"""Whose fault an exception is: the user's code (fail fast, named by file:line) or the infrastructure (retried)."""

from __future__ import annotations

import concurrent.futures
import errno
import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch.distributed
from pytorch_lightning.callbacks import Callback

from trainctl.components import instantiate
from trainctl.runstate import Cause
from trainctl.spec import Component
from trainctl.worker.outcome import classify, user_frame


def _raise_from_user_file(tmp_path: Path, body: str) -> BaseException:
    """Run `body` from a module file of the user's (outside every library), return what it raised."""
    mod = tmp_path / "my_model.py"
    mod.write_text("def training_step():\n" + textwrap.indent(textwrap.dedent(body), "    ") + "\n")
    sys.path.insert(0, str(tmp_path))
    try:
        sys.modules.pop("my_model", None)
        import my_model  # type: ignore[import-not-found]

        my_model.training_step()
    except Exception as exc:
        return exc
    finally:
        sys.path.remove(str(tmp_path))
    raise AssertionError("nothing raised")


def test_a_user_exception_names_the_users_innermost_frame(tmp_path: Path) -> None:
    exc = _raise_from_user_file(tmp_path, "x = 1\nraise ValueError('bad batch shape')")
    ending = classify(exc)
    assert ending.cause is Cause.user_error
    assert ending.detail.startswith("ValueError: bad batch shape (at ")
    assert ending.detail.endswith("my_model.py:3 in training_step)")


def test_an_error_inside_a_library_is_named_by_the_users_frame_that_called_it(tmp_path: Path) -> None:
    """torch raises; the user's line that called torch is the one to fix (the innermost *user* frame)."""
    exc = _raise_from_user_file(tmp_path, "import torch\ntorch.zeros(2, 3) @ torch.zeros(2, 3)")
    assert classify(exc).cause is Cause.user_error
    assert user_frame(exc).endswith("my_model.py:3 in training_step")


def test_a_library_wrapping_the_users_exception_is_seen_through(tmp_path: Path) -> None:
    """Building the user's objects goes through jsonargparse, which raises its own ValueError while handling the
    user's exception: the user's exception is the one described. Built on a pool thread, as on a rank, so that
    no frame of this test file (user code too) is on the outer traceback."""
    (tmp_path / "my_callbacks.py").write_text(
        "import pytorch_lightning as pl\n\n\nclass Broken(pl.Callback):\n"
        "    def __init__(self) -> None:\n        raise RuntimeError('no GPU here')\n")
    sys.path.insert(0, str(tmp_path))
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            exc = pool.submit(instantiate, Component("my_callbacks.Broken", {}), Callback).exception()
    finally:
        sys.path.remove(str(tmp_path))
    assert exc is not None and not isinstance(exc, RuntimeError), "jsonargparse wraps it"
    ending = classify(exc)
    assert ending.cause is Cause.user_error
    assert ending.detail.startswith("RuntimeError: no GPU here (at "), ending.detail
    assert ending.detail.endswith("my_callbacks.py:6 in __init__)"), ending.detail


def test_library_frames_are_never_the_users(tmp_path: Path) -> None:
    try:
        json.loads("{")
    except ValueError as exc:
        frame = user_frame(exc)
    assert "json" not in frame and frame.endswith("in test_library_frames_are_never_the_users")


@pytest.mark.parametrize("exc", [
    torch.distributed.DistNetworkError("The server socket has failed to listen on any local network address. "
                                       "port: 29500, useIpv6: 0, code: -98, name: EADDRINUSE"),
    torch.distributed.DistBackendError("NCCL communicator was aborted"),
    RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [10.0.0.2]:6218"),
    RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 300000ms"),
    ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
    OSError(errno.EADDRINUSE, "Address already in use"),
])
def test_rendezvous_and_collective_errors_are_the_infrastructures(exc: BaseException) -> None:
    assert classify(exc).cause is Cause.network


def test_an_infrastructure_error_wrapped_by_a_library_is_still_infrastructure() -> None:
    try:
        try:
            raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
        except ConnectionResetError as inner:
            raise RuntimeError("collective failed") from inner
    except RuntimeError as exc:
        assert classify(exc).cause is Cause.network


def test_trainctls_fault_injection_counts_as_user_code() -> None:
    """trainctl.testing and trainctl.examples play the user's part in the tests and the examples."""
    from trainctl.testing.faults import RaiseAtTrainEnd

    class Trainer:
        global_rank = 0

    cb: Callback = RaiseAtTrainEnd(rank=0)
    with pytest.raises(RuntimeError) as info:
        cb.on_train_end(Trainer(), None)
    ending = classify(info.value)
    assert ending.cause is Cause.user_error and "faults.py:" in ending.detail and "in on_train_end" in ending.detail


def test_a_port_this_rank_could_not_bind_is_its_own_failure() -> None:
    from trainctl.runstate import Cause
    from trainctl.worker.outcome import Ending, local_bind_failure

    assert local_bind_failure(Ending(Cause.network, "DistNetworkError: ... port: 28001, useIpv6: 0, code: -98, "
                                                    "name: EADDRINUSE, message: address already in use"))
    assert not local_bind_failure(Ending(Cause.network, "RuntimeError: Connection closed by peer [127.0.0.1]:28837"))
    assert not local_bind_failure(Ending(Cause.user_error, "OSError: address already in use (at my.py:3 in f)"))
