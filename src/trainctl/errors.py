"""User-facing errors: what is wrong, where (YAML path or file), what is valid, and a HINT.

The CLI prints these without a traceback and exits 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the user's input."""

    path: str
    message: str
    hint: str = ""

    def render(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        return f"{text}\n    HINT: {self.hint}" if self.hint else text


@dataclass
class UserError(Exception):
    """Bad input from the user; carries every problem found, not just the first."""

    problems: list[Problem] = field(default_factory=list)
    source: str = ""

    def __str__(self) -> str:
        head = f"{self.source}: " if self.source else ""
        count = len(self.problems)
        lines = [f"{head}{count} problem{'s' if count != 1 else ''} found"]
        lines += [f"  - {p.render()}" for p in self.problems]
        return "\n".join(lines)

    @classmethod
    def single(cls, path: str, message: str, hint: str = "", source: str = "") -> UserError:
        return cls([Problem(path, message, hint)], source)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A 'did you mean' suffix for an unknown key or value, or '' when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else ""


def shown(value: Any) -> str:
    """A value as the user wrote it, short enough for one problem line."""
    text = "null (nothing)" if value is None else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
