"""The log reader on real files: byte offsets, partial lines, attempts, new files; and the worker's noise filter."""

from __future__ import annotations

import logging
from pathlib import Path

from trainctl.callbacks.progress import batch_size, duration, metrics_text
from trainctl.logview import Follower, Splitter, Tail, attempt_mark, render_sweep, sections, show, tail_lines
from trainctl.worker.quiet import LightningNoise

START = "submitit INFO (2026-11-30 12:40:50,201) - Starting with JobEnvironment(job_id=7, global_rank=0(2))"
TIP = "💡 Tip: bars █▌ and ✓"


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as fh:
        fh.write(data)


def test_a_character_split_across_two_writes_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "7_0_log.out"
    raw = f"{TIP}\nsecond █ line\n".encode()
    cut = raw.rindex("█".encode()) + 1  # inside the three bytes of the second line's █
    tail = Tail(path)
    assert tail.read() == [], "a file not there yet has no lines"
    append(path, raw[:cut])
    assert tail.read() == [TIP]
    append(path, raw[cut:])
    assert tail.read() == ["second █ line"]
    append(path, "after ✓\n".encode())
    assert tail.read() == ["after ✓"], "offsets count bytes: later reads start where the last ended"


def test_a_partial_last_line_waits_for_its_newline_unless_the_writer_is_gone(tmp_path: Path) -> None:
    path = tmp_path / "7_0_log.out"
    tail = Tail(path)
    append(path, "progress 50% █████".encode())
    assert tail.read() == []
    append(path, "█████ 100%\r\nno newline 💡".encode())
    assert tail.read() == ["progress 50% ██████████ 100%"]
    assert tail.rest() == ["no newline 💡"]
    assert tail.rest() == []


def test_attempts_split_a_file_and_lines_before_a_marker_belong_to_its_attempt(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    out = [START, attempt_mark(1, "first", None), "a1 line", START, "a2 startup", attempt_mark(2, "network", 20),
           "a2 line"]
    (logs / "7_0_log.out").write_text("\n".join(out) + "\n")
    (logs / "7_0_log.err").write_text("\n".join(["warn early", attempt_mark(1, "first", None), "e1",
                                                  attempt_mark(2, "network", 20), "e2"]) + "\n")
    (logs / "7_1_log.out").write_text("\n".join([START, attempt_mark(1, "first", None), "r1 a1"]) + "\n")
    got = [(s.attempt, s.rank, s.stream, s.lines[-1]) for s in sections(logs)]
    assert got == [(1, 0, "out", "a1 line"), (1, 0, "err", "e1"), (1, 1, "out", "r1 a1"),
                   (2, 0, "out", "a2 line"), (2, 0, "err", "e2")]
    second = next(s for s in sections(logs) if (s.attempt, s.stream) == (2, "out"))
    assert second.lines == [START, "a2 startup", attempt_mark(2, "network", 20), "a2 line"]
    assert sections(logs)[1].lines[0] == "warn early"


def test_a_task_that_never_wrote_its_marker_is_its_own_attempt() -> None:
    parts = Splitter().split([START, "died early", START, attempt_mark(2, "killed-without-verdict", None), "x"])
    assert [(n, lines[-1]) for n, lines in parts] == [(1, "died early"), (2, "x")]


def test_the_follower_reads_new_files_in_the_order_they_appeared(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    follow = Follower(logs, {0})
    assert follow.poll() == []
    (logs / "9_0_log.out").write_text(f"{attempt_mark(1, 'first', None)}\nfirst 💡\n")
    (logs / "9_1_log.out").write_text("rank 1 is not followed\n")
    (logs / "9_0_log.err").write_text(f"{attempt_mark(1, 'first', None)}\n")
    first = follow.poll()
    assert [(x.attempt, x.kind, x.text) for x in first if show(x)] == [
        (1, "banner", attempt_mark(1, "first", None)), (1, "text", "first 💡")]
    (logs / "10_0_log.out").write_text(f"{attempt_mark(2, 'preempted', 40)}\n[trainctl] epoch 1/3 · step 41/60\n")
    append(logs / "9_0_log.out", b"late line of attempt 1\n")
    second = follow.poll()
    assert [x.text for x in second] == ["late line of attempt 1", attempt_mark(2, "preempted", 40),
                                        "[trainctl] epoch 1/3 · step 41/60"], "job 9 before job 10"
    assert [x.kind for x in second] == ["text", "banner", "progress"]
    assert [x.attempt for x in second] == [1, 2, 2]
    assert tail_lines(first + second, 2) == second[1:]


def test_lightning_noise_is_dropped_or_shown_once_and_user_records_pass() -> None:
    noise = LightningNoise()

    def record(name: str, msg: str) -> logging.LogRecord:
        return logging.LogRecord(name, logging.INFO, __file__, 1, msg, None, None)

    assert not noise.filter(record("pytorch_lightning.utilities.rank_zero", "💡 Tip: try litlogger"))
    weights = "`weights_only` was not set, defaulting to `False`."
    name = "lightning.pytorch.trainer.connectors.checkpoint_connector"
    assert [noise.filter(record(name, weights)) for _ in range(3)] == [True, False, False]
    assert noise.filter(record("my_model", "💡 Tip: my own"))
    assert noise.filter(record("pytorch_lightning.utilities.rank_zero", "GPU available: False, used: False"))


def test_progress_helpers() -> None:
    import torch

    assert batch_size((torch.zeros(32, 8), torch.zeros(32))) == 32
    assert batch_size({"x": [torch.zeros(5, 2)]}) == 5
    assert batch_size("no tensors") == 0
    assert [duration(s) for s in (5, 75, 3725)] == ["5s", "1m15s", "1h02m"]
    assert metrics_text({"val/loss": 0.123456, "epoch": 2.0, "train/loss": 1.0, "note": "x"}) == \
        "train/loss 1 · val/loss 0.1235"


def test_the_first_poll_of_an_ended_run_reads_attempt_by_attempt(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "7_0_log.out").write_text("\n".join([START, attempt_mark(1, "first", None), "o1", START,
                                                 attempt_mark(2, "stall", 10), "o2"]) + "\n")
    (logs / "7_0_log.err").write_text("\n".join([attempt_mark(1, "first", None), "e1",
                                                 attempt_mark(2, "stall", 10), "e2"]) + "\n")
    texts = [x.text for x in Follower(logs, {0}).poll(final=True) if show(x) and not x.text.startswith(("sub", "["))]
    assert texts == ["o1", "e1", "o2", "e2"]


def test_a_sweeps_logs_are_its_driver_log_and_one_command_per_trial(tmp_path: Path) -> None:
    """`logs SWEEP`: the driver's lines (cut by --tail), then the trials by index with the command for each one's
    output; the array's task files (its trials' output, beside the driver log on SLURM) are not dumped."""
    (tmp_path / "driver.log").write_text("trial 0: started\ntrial 1: started ✓\n")
    (tmp_path / "77_0_log.out").write_text("a trial's own output\n")
    trials = [{"trial": 1, "state": "FINISHED", "attempts": 2, "run_id": "b" * 32, "pruned": "1"},
              {"trial": 0, "state": "RUNNING", "attempts": 1, "run_id": "a" * 32, "pruned": None}]
    out = render_sweep("f" * 32, tmp_path, trials, None).splitlines()
    assert out[:3] == [f"==> sweep {'f' * 32} · driver (driver.log) <==", "trial 0: started", "trial 1: started ✓"]
    assert out[-2:] == [f"      0  RUNNING       1  trainctl logs {'a' * 32}",
                        f"      1  PRUNED@1      2  trainctl logs {'b' * 32}"]
    assert "a trial's own output" not in "\n".join(out)
    tailed = render_sweep("f" * 32, tmp_path, [], 1).splitlines()
    assert tailed[1:3] == ["trial 1: started ✓", ""] and tailed[-1] == "  no trial has started yet"


def test_torchs_leafspec_deprecation_is_dropped_only_from_lightnings_code() -> None:
    """Lightning's own tree flattening (run on every checkpoint) triggers it; the user's code still sees it."""
    import warnings

    from pytorch_lightning.utilities._pytree import _tree_flatten
    from torch.utils._pytree import LeafSpec

    from trainctl.worker.quiet import drop_lightning_warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        _tree_flatten(1.0)
        assert any("LeafSpec" in str(w.message) for w in seen), "this Lightning no longer triggers it: drop the filter"
        seen.clear()
        drop_lightning_warnings()
        _tree_flatten(1.0)
        assert not seen, [str(w.message) for w in seen]
        LeafSpec()
        assert [w.category for w in seen] == [FutureWarning]
