"""trainctl command line: validate | submit | status | logs | cancel | ls | resume | sync | register | reproduce | gc.

Bad input prints what is wrong, where, what is valid and a HINT, and exits 2 with no traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

from trainctl.cli_parser import parser, run_states
from trainctl.errors import UserError
from trainctl.launchers import registry

if TYPE_CHECKING:
    from trainctl.control import Cancelled

EXIT_USAGE = 2
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # a shell's code for a writer the pipe's reader left


def _uri(args: argparse.Namespace) -> str | None:
    """The store named by --tracking-uri, MLFLOW_TRACKING_URI or --workdir; None: search (trainctl.stores)."""
    from trainctl.tracking import default_tracking_uri

    if args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or args.workdir:
        return args.tracking_uri or default_tracking_uri(args.workdir or "runs")
    return None


def _importable(job: str) -> list[str]:
    """Make the user's modules next to the spec and in the cwd importable here, as `python train.py` would."""
    from trainctl.rundir import import_dirs_for, use_import_dirs

    dirs = import_dirs_for(job)
    use_import_dirs(dirs)
    return dirs


def cmd_validate(args: argparse.Namespace) -> int:
    from trainctl.spec import load_spec

    _importable(args.job)
    if _sweep().is_sweep(args.job):
        spec, cfg = _sweep().load(args.job, args.set)
        print(f"{args.job}: valid sweep of {cfg.trials} trials ({spec.backend.kind.value} backend)")
        return 0
    spec = load_spec(args.job, args.set, from_source=True)
    print(f"{args.job}: valid ({spec.backend.kind.value} backend, "
          f"{spec.resources.nodes}x{spec.resources.devices_per_node} ranks)")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from trainctl import control, stores, tracking
    from trainctl.spec import load_spec

    dirs = _importable(args.job)
    if _sweep().is_sweep(args.job):
        sub = _sweep().submit(args.job, args.set, args.backend, args.dry_run, dirs)
        print(sub.text, flush=True)
        return _watch_sweep(sub.sweep_id, sub.uri) if _follows(args, sub.backend) and sub.sweep_id else 0
    spec = load_spec(args.job, [*args.set, *([f"backend.kind={args.backend}"] if args.backend else [])])
    ref, detail = control.submit(spec, dry_run=args.dry_run, source=args.job, import_dirs=dirs)
    if ref is None:
        print(detail)
        return 0
    print(f"run id:    {ref.run_id}\nrun dir:   {ref.run_dir}\nbackend:   {ref.backend} ({detail})\n"
          f"tracking:  {ref.uri}\nMLflow UI: {stores.ui_command(ref.uri)}\n"
          f"run page:  {tracking.run_page(ref.uri, ref.run_id)}")
    return _follow(ref) if _follows(args, ref.backend) else 0


def _sweep() -> Any:
    from trainctl.sweep import commands

    return commands


def _is_sweep(ref: Any) -> bool:
    from trainctl.sweep import PARENT_TAG

    return ref.tags.get(PARENT_TAG) == "parent"


def _follow(ref: Any, ranks: set[int] | None = None, attempt: int | None = None, tail: int | None = None) -> int:
    """Show the job's output (rank 0's by default) until the run ends, across requeues; exit 0 for FINISHED.
    tail: start with only the last lines already written."""
    from trainctl import control, stores
    from trainctl.logview import Follower, tail_lines
    from trainctl.render import Renderer

    def on_interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    ranks = ranks if ranks is not None else {0}
    out = Renderer(rank_prefix=len(ranks) > 1)
    follower = Follower(ref.run_dir / "logs", ranks)
    if tail is not None:  # the history so far, cut to its last lines
        for line in tail_lines([x for x in follower.poll() if attempt is None or x.attempt == attempt], tail):
            out.line(line)
    signal.signal(signal.SIGINT, on_interrupt)
    try:
        final = control.watch(ref, out.line, out.say, follower=follower, attempt=attempt)
    except KeyboardInterrupt:
        now = control.find_run(ref.run_id, ref.uri)
        if now.state.terminal:  # the job ended as the key was pressed: nothing to cancel, say how it ended
            print(f"\ninterrupted: run {now.run_id} had already ended {now.state.value}", file=sys.stderr)
            return 0 if now.state.value == "FINISHED" else 1
        print("\ninterrupted: cancelling the job", file=sys.stderr)
        _print_cancelled(control.cancel(now, say=_progress(sys.stderr)), sys.stderr)
        return 130
    more = [f"trainctl status {final.run_id}", f"trainctl logs {final.run_id}", f"UI: {stores.ui_command(final.uri)}"]
    out.end(final.run_id, final.state.value, final.tags.get("trainctl.reason", ""), final.metrics, more)
    return 0 if final.state.value == "FINISHED" else 1


def cmd_status(args: argparse.Namespace) -> int:
    from trainctl import control, progress

    found = control.find_run(args.run_id, _uri(args))
    if _is_sweep(found):
        print(_sweep().status(found, args.json))
        return 0
    ref = control.reconcile(found)
    out = {
        "run_id": ref.run_id, "name": ref.name, "status": ref.state.value, "backend": ref.backend,
        "scheduler_job_id": ref.scheduler_job_id, "attempt": int(ref.tags.get("trainctl.attempt", "0") or 0),
        "run_dir": str(ref.run_dir), "reason": ref.tags.get("trainctl.reason", ""),
        **progress.summary(ref), "metrics": ref.metrics,
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(progress.render_status(out))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    """Every attempt in order, each rank under its own header (rank 0 first); -f follows until the run ends."""
    from trainctl import control
    from trainctl.logview import check_selection, sections

    ref = control.find_run(args.run_id, _uri(args))
    check_selection(ref.run_dir, args.rank, args.attempt, sweep=_is_sweep(ref))
    if _is_sweep(ref):
        return _sweep_logs(args, ref)
    if args.follow:
        return _follow(ref, {args.rank if args.rank is not None else 0}, args.attempt, args.tail)
    found = sections(ref.run_dir / "logs")
    for sec in found:
        if (args.rank is None or sec.rank == args.rank) and (args.attempt is None or sec.attempt == args.attempt):
            lines = sec.lines if args.tail is None else sec.lines[-args.tail:] if args.tail > 0 else []
            body = "".join(f"{line}\n" for line in lines)
            print(f"==> attempt {sec.attempt} · rank {sec.rank} · std{sec.stream} ({sec.path.name}) <==\n{body}")
    if registry.backend(ref.backend).scheduler_logs:  # e.g. Ray's driver log: in the Jobs API only
        for label, text in registry.load(ref.backend).LAUNCHER.logs(ref.run_dir, ref.scheduler_job_id).items():
            mine = args.rank is None or f"rank {args.rank} " in label
            if ("driver" in label and args.rank is None) or (not found and mine):
                print(f"==> {label} <==\n{text}")
    return 0


def _sweep_logs(args: argparse.Namespace, ref: Any) -> int:
    """A sweep's driver log and its trials with the command for each one's output; -f follows it to its end."""
    from trainctl.logview import render_sweep

    if not args.follow:
        print(render_sweep(ref.run_id, ref.run_dir / "logs", _sweep().rows(ref)[2], args.tail))
        return 0
    return _watch_sweep(ref.run_id, ref.uri, announce=f"following sweep {ref.run_id} until it ends; "
                                                      "`trainctl logs -f RUN_ID` follows one trial's output")


def _watch_sweep(sweep_id: str, uri: str, announce: str = "") -> int:
    """Follow a sweep to its end (submit, resume, logs -f). Ctrl-C stops the watching only: a sweep holds many
    trials' work, so ending them takes the explicit `trainctl cancel SWEEP`. The announcement is printed inside
    the guard: a reader may press Ctrl-C the moment it shows."""
    try:
        if announce:
            print(announce, flush=True)
        return int(_sweep().wait(sweep_id, uri))
    except KeyboardInterrupt:
        print(f"\nstopped following sweep {sweep_id}; it goes on (`trainctl cancel {sweep_id}` ends it)",
              file=sys.stderr)
        return 130


def cmd_cancel(args: argparse.Namespace) -> int:
    from trainctl import control

    grace = control.CANCEL_GRACE_S if args.grace is None else args.grace
    if not grace > 0:
        raise UserError.single("--grace", f"{args.grace} is not a number of seconds above 0",
                               f"the time the ranks get to save their step; default {control.CANCEL_GRACE_S:.0f}")
    ref = control.find_run(args.run_id, _uri(args))
    if _is_sweep(ref):
        left = _sweep().cancel(ref, grace, _progress(sys.stdout))
        print(f"sweep {ref.run_id}: cancelled (KILLED)" + (f"; still running: {'; '.join(left)}" if left else
                                                             "; no trial of it is left running"))
        return 1 if left else 0
    done = control.cancel(ref, grace, say=_progress(sys.stdout))
    return _print_cancelled(done, sys.stdout)


def _progress(stream: IO[str]) -> Any:
    return lambda line: print(f"  {line}", file=stream, flush=True)


def _print_cancelled(done: Cancelled, stream: IO[str]) -> int:
    """The end of a cancel: the last attempt as closed, and plainly what is still running (exit 1 then)."""
    a = done.attempt
    if a is not None:
        saved = f"checkpoint of step {a.step}" if a.step is not None else "no checkpoint of its last step"
        print(f"  attempt {a.number} closed {a.outcome} ({saved}): {a.reason}", file=stream)
    if done.left:
        print(f"run {done.run_id}: KILLED, but these are still running: {'; '.join(done.left)}", file=stream)
        return 1
    print(f"run {done.run_id}: cancelled (KILLED); no process of the job is left", file=stream)
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    """One table per store: the one named, else this directory's runs/ store and every store submitted to."""
    from trainctl import control, progress, stores
    from trainctl.errors import did_you_mean
    from trainctl.sweep import SWEEP_ID_TAG

    uri = _uri(args)
    if uri is not None and not stores.exists(uri):
        raise UserError.single("--tracking-uri", f"no tracking store at {uri} (none was created)",
                               "pass the store the runs were submitted to, or drop it to list every store used")
    if args.limit is not None and args.limit < 1:
        raise UserError.single("--limit", f"{args.limit} is not a number of runs", "give 1 or more")
    states = [s.value for s in run_states()]
    if args.state is not None and args.state not in states:
        raise UserError.single("--state", f"{args.state!r} is not a run state; valid: {', '.join(states)}",
                               did_you_mean(args.state, states) or "e.g. --state RUNNING")
    if uri is not None and not stores.reachable(uri, stores.NAMED_PROBE_S):
        raise stores.not_answering([uri], named=True)
    listed = False  # a sweep is one line: its trials are in `status SWEEP`
    for store, refs in control.each_store(uri, args.limit, args.state, args.experiment, hide_tag=SWEEP_ID_TAG):
        print(progress.render_ls(store, refs), flush=True)
        listed = True
    if not listed:
        print(f"no tracking store here (runs/mlflow.db) nor in {stores.index_path()}: nothing submitted yet",
              file=sys.stderr)
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    from trainctl import control
    from trainctl.metrics import upload_spool

    ref = control.find_run(args.run_id, _uri(args))
    sent = upload_spool(ref.uri, ref.run_id, ref.run_dir / "spool")
    print(f"run {ref.run_id}: uploaded {sent} spooled metric points")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from trainctl import control
    from trainctl.resume import resume

    found = control.find_run(args.run_id, _uri(args))
    if _is_sweep(found):
        print(_sweep().resume(found))
        return _watch_sweep(found.run_id, found.uri) if _follows(args, found.backend) else 0
    ref, text = resume(args.run_id, _uri(args), args.from_, args.set, args.backend)
    print(text, flush=True)
    return _follow(ref) if ref is not None and _follows(args, ref.backend) else 0


def _follows(args: argparse.Namespace, backend: str) -> bool:
    """submit and resume follow the job when the backend does by default (local) or with --wait; never --detach."""
    return not args.detach and (args.wait or registry.backend(backend).follow)


def cmd_register(args: argparse.Namespace) -> int:
    from trainctl import control, model_registry

    ref = control.find_run(args.run_id, _uri(args))
    done = model_registry.register_best(ref.uri, ref.run_id, args.name, args.alias)
    print(f"run {ref.run_id}: best checkpoint registered as {args.name} version {done.version} ({done.uri})")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from trainctl import control, reproduce

    new_id, uri, text = reproduce.reproduce(args.run_id, _uri(args), args.into, args.backend)
    print(text)
    ref = control.find_run(new_id, uri)
    return _follow(ref) if registry.backend(ref.backend).follow and not args.detach else 0


def cmd_gc(args: argparse.Namespace) -> int:
    from pathlib import Path

    from trainctl.gc import gc

    print(gc(Path(args.workdir), args.older_than, args.keep_best, args.delete))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "validate": cmd_validate,
    "submit": cmd_submit,
    "status": cmd_status,
    "logs": cmd_logs,
    "cancel": cmd_cancel,
    "sync": cmd_sync,
    "resume": cmd_resume,
    "register": cmd_register,
    "reproduce": cmd_reproduce,
    "gc": cmd_gc,
    "ls": cmd_ls,
}


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # set_terminated prints to stdout
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial … tables" on a new store
    try:
        args = parser().parse_args(argv)
        try:
            return int(COMMANDS[args.command](args))
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            return EXIT_USAGE
        except Exception as exc:
            from trainctl import stores
            from trainctl.store_read import StoreUnreachable

            if not isinstance(exc, StoreUnreachable):
                raise
            print(f"error: {stores.not_answering([exc.uri], named=True)}", file=sys.stderr)
            return EXIT_USAGE
        finally:
            sys.stdout.flush()
    except BrokenPipeError:
        # The reader left (`| head`): Python's documented way out, so that the exit's flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
