"""trainctl's command line as argparse sees it: each command's arguments and help. What a command does is in
trainctl.cli, which runs the command that `args.command` names."""

from __future__ import annotations

import argparse
from typing import Any

from trainctl import __version__
from trainctl.launchers import registry


def run_states() -> list[Any]:
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

    job_cmd("validate", "check a job spec; report every problem")
    s = job_cmd("submit", "validate and submit; local jobs are followed until they end")
    s.add_argument("--dry-run", action="store_true", help="print the exact request; submit nothing")
    s.add_argument("--detach", action="store_true", help="return at once (wins over --wait)")
    s.add_argument("--wait", action="store_true", help="follow cluster jobs too")
    s.add_argument("--backend", choices=registry.KINDS, help="override backend.kind")
    st = run_cmd("status", "the run's state and latest metrics")
    st.add_argument("--json", action="store_true")
    lg = run_cmd("logs", "each rank's output, every attempt; -f follows until the run ends")
    lg.add_argument("-f", "--follow", action="store_true", help="follow until the run ends; exit 0 if FINISHED")
    lg.add_argument("--rank", type=int, help="only this rank (with -f: this one instead of rank 0)")
    lg.add_argument("--attempt", type=int, help="only this attempt")
    lg.add_argument("--tail", type=int, metavar="N", help="only the last N lines of each section (with -f: of "
                    "what was written before)")
    cn = run_cmd("cancel", "end the job: its ranks save their current step; the run ends KILLED")
    cn.add_argument("--grace", type=float, metavar="SECONDS",
                    help="how long the ranks get to save their step and end before SIGTERM, then SIGKILL (default 60)")
    run_cmd("sync", "upload metrics spooled while MLflow was unreachable")
    r = run_cmd("resume", "resubmit a run from a checkpoint")
    r.add_argument("--from", dest="from_", default="last", help="last | best | PATH (default: last)")
    r.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE")
    r.add_argument("--backend", choices=registry.KINDS)
    r.add_argument("--detach", action="store_true", help="return at once (wins over --wait)")
    r.add_argument("--wait", action="store_true", help="follow cluster jobs too")
    rg = run_cmd("register", "make the run's best checkpoint a new version of a registered model")
    rg.add_argument("name", metavar="NAME", help="registered model name")
    rg.add_argument("--alias", help="alias to move to the new version, e.g. champion")
    rp = run_cmd("reproduce", "re-submit the run's spec in a checkout of its recorded commit and changes")
    rp.add_argument("--into", help="checkout directory (default: "
                    "<workdir>/reproduce/<run name>)")
    rp.add_argument("--backend", choices=registry.KINDS)
    rp.add_argument("--detach", action="store_true")
    g = sub.add_parser("gc", help="remove local files of ended runs (dry run unless --delete)")
    g.add_argument("--workdir", default="runs", help="the runs' workdir (default: runs)")
    g.add_argument("--older-than", default="7d", help="only runs that ended longer ago (90s, 12h, 7d; default 7d)")
    g.add_argument("--keep-best", action="store_true", help="keep each run's checkpoints/best/")
    g.add_argument("--delete", action="store_true", help="remove what the dry run lists")
    ls = sub.add_parser("ls", help="list trainctl runs")
    _store_args(ls)
    ls.add_argument("--limit", type=int, default=50, help="runs per store, newest first (default: 50)")
    ls.add_argument("--state", type=str.upper, metavar="STATE",
                    help=f"only runs in this state: {', '.join(s.value for s in run_states())}")
    ls.add_argument("--experiment", help="only runs of this MLflow experiment (its name)")
    return p
