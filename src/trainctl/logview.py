"""Reading the ranks' output: byte offsets, whole lines, attempts in order, for `logs` and every follower.

submitit (local and SLURM) appends every attempt of a rank to one file per job id and stream,
`<job id>_<rank>_log.out|err`; Ray's workers tee into the same names, one job id per submission. At each attempt's
start every rank writes a marker line (`[trainctl] attempt 2 · cause timeout · resumed at step 360`) to both
streams: it splits a file into attempts and is the banner a follower shows. Offsets count bytes and only complete
lines are decoded (a newline byte never occurs inside a UTF-8 character), so a character split across two reads
is never garbled. Only the standard library is imported here: `trainctl logs` stays fast.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from trainctl.errors import UserError

PREFIX = "[trainctl] "
MARK = re.compile(r"^\[trainctl\] attempt (\d+)\b")
# submitit's first line of a task: the lines from here to the marker belong to the attempt that starts.
TASK_START = re.compile(r"^submitit INFO \(.*\) - Starting with JobEnvironment")
FILE = re.compile(r"^(?P<job>[^_]+)_(?P<rank>\d+)_log\.(?P<stream>out|err)$")


def attempt_mark(number: int, cause: str, resumed_step: int | None) -> str:
    """The line every rank writes first in each attempt (worker.entrypoint)."""
    resumed = f" · resumed at step {resumed_step}" if resumed_step is not None else ""
    return f"{PREFIX}attempt {number} · cause {cause}{resumed}"


def decode(raw: bytes) -> str:
    return raw.rstrip(b"\r").decode("utf-8", errors="replace")


class Tail:
    """The complete lines appended to one file since the last read; a partial last line waits for its newline."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0  # bytes consumed, the partial line included
        self.partial = b""

    def read(self) -> list[str]:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return []
        if size < self.offset:  # truncated or replaced: read it again from the start
            self.offset, self.partial = 0, b""
        if size == self.offset:
            return []
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read(size - self.offset)
        self.offset += len(data)
        *lines, self.partial = (self.partial + data).split(b"\n")
        return [decode(line) for line in lines]

    def rest(self) -> list[str]:
        """The last line when its writer is gone without a newline."""
        lines = self.read()
        if self.partial:
            lines.append(decode(self.partial))
            self.partial = b""
        return lines


@dataclass(frozen=True)
class LogFile:
    path: Path
    job: str
    rank: int
    stream: str  # out | err


def log_files(log_dir: Path) -> list[LogFile]:
    """The ranks' files, oldest job id first (a retried Ray job writes new ones), then rank, out before err."""
    found = []
    for path in log_dir.glob("*_log.*") if log_dir.is_dir() else []:
        m = FILE.match(path.name)
        if m:
            found.append(LogFile(path, m["job"], int(m["rank"]), m["stream"]))
    first_seen = {}
    for f in sorted(found, key=lambda f: _ctime(f.path)):
        first_seen.setdefault(f.job, len(first_seen))
    return sorted(found, key=lambda f: (first_seen[f.job], f.rank, f.stream != "out"))


def _ctime(path: Path) -> float:
    try:
        return path.stat().st_ctime
    except FileNotFoundError:
        return float("inf")


@dataclass
class Section:
    """One rank's lines of one attempt in one stream."""

    attempt: int
    rank: int
    stream: str
    path: Path
    lines: list[str] = field(default_factory=list)


class Splitter:
    """Assigns each line of one file to its attempt: a task start or a marker opens an attempt; lines of a task
    before its marker take the marker's number; a task that never wrote one is the attempt after the last."""

    def __init__(self) -> None:
        self.last = 0  # the newest attempt seen in this file
        self.open = True  # the current section has no marker yet

    def split(self, lines: Iterable[str]) -> list[tuple[int | None, list[str]]]:
        """[(attempt or None while unknown, lines)], in order."""
        parts: list[tuple[int | None, list[str]]] = []
        for line in lines:
            m = MARK.match(line)
            if TASK_START.match(line):
                if parts and parts[-1][0] is None:  # the task before never wrote its marker
                    self.last += 1
                    parts[-1] = (self.last, parts[-1][1])
                self.open = True
                parts.append((None, [line]))
            elif m and self.open and parts and parts[-1][0] is None:
                self.open, self.last = False, int(m[1])
                parts[-1] = (self.last, [*parts[-1][1], line])
            elif m:
                self.open, self.last = False, int(m[1])
                parts.append((self.last, [line]))
            elif parts:
                parts[-1][1].append(line)
            else:
                parts.append((None if self.open else self.last, [line]))
        return parts


def sections(log_dir: Path) -> list[Section]:
    """Every rank's output split by attempt, in the order a person reads it: attempt, then rank, out before err."""
    out: list[Section] = []
    for f in log_files(log_dir):
        tail = Tail(f.path)
        splitter = Splitter()
        for attempt, lines in splitter.split(tail.rest()):
            number = attempt if attempt is not None else splitter.last + 1
            if out and (out[-1].path, out[-1].attempt) == (f.path, number):
                out[-1].lines += lines
            else:
                out.append(Section(number, f.rank, f.stream, f.path, list(lines)))
    return sorted(out, key=lambda s: (s.attempt, s.rank, s.stream != "out"))


@dataclass(frozen=True)
class Line:
    rank: int
    stream: str
    attempt: int | None
    text: str

    @property
    def kind(self) -> str:
        """banner (an attempt's marker), progress (trainctl's own line) or text (the job's output)."""
        if MARK.match(self.text):
            return "banner"
        return "progress" if self.text.startswith(PREFIX) else "text"


class Follower:
    """New lines of the chosen ranks' files, as they are written, across attempts and new files."""

    def __init__(self, log_dir: Path, ranks: set[int] | None = None) -> None:
        self.log_dir, self.ranks = log_dir, ranks
        self.tails: dict[Path, tuple[LogFile, Tail, Splitter]] = {}

    def poll(self, final: bool = False) -> list[Line]:
        """final: the writers are gone, so a last line without a newline is complete."""
        for f in log_files(self.log_dir):
            if f.path not in self.tails and (self.ranks is None or f.rank in self.ranks):
                self.tails[f.path] = (f, Tail(f.path), Splitter())
        out: list[Line] = []
        for f, tail, splitter in self.tails.values():
            for attempt, lines in splitter.split(tail.rest() if final else tail.read()):
                number = attempt if attempt is not None else (splitter.last + 1 if splitter.open else splitter.last)
                out += [Line(f.rank, f.stream, number or None, text) for text in lines]
        # The first poll of an ended run holds every attempt: attempt by attempt, each file's lines in order.
        return sorted(out, key=lambda line: line.attempt or 0)


def show(line: Line) -> bool:
    """A follower shows each banner once: the marker is written to both streams."""
    return not (line.kind == "banner" and line.stream == "err")


def tail_lines(items: list[Line], n: int | None) -> list[Line]:
    """The last n lines a person would see (banners count)."""
    shown = [x for x in items if show(x)]
    return shown if n is None else shown[-n:] if n > 0 else []


def check_selection(run_dir: Path, rank: int | None, attempt: int | None) -> None:
    """A rank outside the job or an attempt that never started is an error, not an empty answer."""
    from trainctl.rundir import JobFile
    from trainctl.runstate import Attempts

    if rank is not None:
        try:
            res = JobFile.read(run_dir).spec.get("resources", {})
            world = int(res.get("nodes", 1)) * int(res.get("devices_per_node", 1))
        except (OSError, ValueError):
            world = 1 + max((s.rank for s in sections(run_dir / "logs")), default=0)
        if not 0 <= rank < world:
            raise UserError.single("--rank", f"no rank {rank}: the job has ranks 0…{world - 1}",
                                   "leave --rank out to see every rank")
    if attempt is not None:
        known = {a.number for a in Attempts(run_dir).all()} | {s.attempt for s in sections(run_dir / "logs")}
        if attempt not in known:
            listed = ", ".join(map(str, sorted(known))) or "none yet"
            raise UserError.single("--attempt", f"no attempt {attempt} (attempts so far: {listed})",
                                   "leave --attempt out to see every attempt")
