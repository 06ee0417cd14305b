"""trainctl command line: validate | submit | status | logs | cancel | ls | resume | sync | register | reproduce | gc.

Bad input prints what is wrong, where, what is valid and a HINT, and exits 2 with no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import IO, TYPE_CHECKING, Any

from trainctl import __version__
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
        return _sweep().wait(sub.sweep_id, sub.uri) if _follows(args, sub.backend) and sub.sweep_id else 0
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
    check_selection(ref.run_dir, args.rank, args.attempt)
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
    states = [s.value for s in _states()]
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
        return _sweep().wait(found.run_id, found.uri) if _follows(args, found.backend) else 0
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


def _states() -> list[Any]:
    from trainctl.runstate import State

    return list(State)


def _store_args(c: argparse.ArgumentParser) -> None:
    c.add_argument("--tracking-uri", help="default: MLFLOW_TRACKING_URI, else search the embedded store in ./runs "
                   "and every store you submitted to")
    c.add_argument("--workdir", help="search only the embedded store of this workdir (<workdir>/mlflow.db)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trainctl", description="Lightning DDP jobs on SLURM, Ray or this machine.")
    p.add_argument("--version", action="version", version=f"trainctl {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def job_cmd(name: str, help_: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_)
        c.add_argument("job", metavar="JOB", help="job spec (YAML)")
        c.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="override a field")
        return c

    def run_cmd(name: str, help_: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_)
        c.add_argument("run_id", metavar="RUN_ID")
        _store_args(c)
        return c

    job_cmd("validate", "check a job spec; report every problem").set_defaults(fn=cmd_validate)
    s = job_cmd("submit", "validate and submit; local jobs are followed until they end")
    s.add_argument("--dry-run", action="store_true", help="print the exact request; submit nothing")
    s.add_argument("--detach", action="store_true", help="return at once (wins over --wait)")
    s.add_argument("--wait", action="store_true", help="follow cluster jobs too")
    s.add_argument("--backend", choices=registry.KINDS, help="override backend.kind")
    s.set_defaults(fn=cmd_submit)
    st = run_cmd("status", "the run's state and latest metrics")
    st.add_argument("--json", action="store_true")
    st.set_defaults(fn=cmd_status)
    lg = run_cmd("logs", "each rank's output, every attempt; -f follows until the run ends")
    lg.add_argument("-f", "--follow", action="store_true", help="follow until the run ends; exit 0 if FINISHED")
    lg.add_argument("--rank", type=int, help="only this rank (with -f: this one instead of rank 0)")
    lg.add_argument("--attempt", type=int, help="only this attempt")
    lg.add_argument("--tail", type=int, metavar="N", help="only the last N lines of each section (with -f: of "
                    "what was written before)")
    lg.set_defaults(fn=cmd_logs)
    cn = run_cmd("cancel", "end the job: its ranks save their current step; the run ends KILLED")
    cn.add_argument("--grace", type=float, metavar="SECONDS",
                    help="how long the ranks get to save their step and end before SIGTERM, then SIGKILL (default 60)")
    cn.set_defaults(fn=cmd_cancel)
    run_cmd("sync", "upload metrics spooled while MLflow was unreachable").set_defaults(fn=cmd_sync)
    r = run_cmd("resume", "resubmit a run from a checkpoint")
    r.add_argument("--from", dest="from_", default="last", help="last | best | PATH (default: last)")
    r.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE")
    r.add_argument("--backend", choices=registry.KINDS)
    r.add_argument("--detach", action="store_true", help="return at once (wins over --wait)")
    r.add_argument("--wait", action="store_true", help="follow cluster jobs too")
    r.set_defaults(fn=cmd_resume)
    rg = run_cmd("register", "make the run's best checkpoint a new version of a registered model")
    rg.add_argument("name", metavar="NAME", help="registered model name")
    rg.add_argument("--alias", help="alias to move to the new version, e.g. champion")
    rg.set_defaults(fn=cmd_register)
    rp = run_cmd("reproduce", "re-submit the run's spec in a checkout of its recorded commit and changes")
    rp.add_argument("--into", help="checkout directory (default: "
                    "<workdir>/reproduce/<run name>)")
    rp.add_argument("--backend", choices=registry.KINDS)
    rp.add_argument("--detach", action="store_true")
    rp.set_defaults(fn=cmd_reproduce)
    g = sub.add_parser("gc", help="remove local files of ended runs (dry run unless --delete)")
    g.add_argument("--workdir", default="runs", help="the runs' workdir (default: runs)")
    g.add_argument("--older-than", default="7d", help="only runs that ended longer ago (90s, 12h, 7d; default 7d)")
    g.add_argument("--keep-best", action="store_true", help="keep each run's checkpoints/best/")
    g.add_argument("--delete", action="store_true", help="remove what the dry run lists")
    g.set_defaults(fn=cmd_gc)
    ls = sub.add_parser("ls", help="list trainctl runs")
    _store_args(ls)
    ls.add_argument("--limit", type=int, default=50, help="runs per store, newest first (default: 50)")
    ls.add_argument("--state", type=str.upper, metavar="STATE",
                    help=f"only runs in this state: {', '.join(s.value for s in _states())}")
    ls.add_argument("--experiment", help="only runs of this MLflow experiment (its name)")
    ls.set_defaults(fn=cmd_ls)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # set_terminated prints to stdout
    try:
        args = parser().parse_args(argv)
        try:
            return int(args.fn(args))
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
