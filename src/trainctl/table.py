"""Plain-text tables for a terminal, measured in the cells a terminal draws rather than in characters.

A CJK character or an emoji takes two cells and a combining accent none, so `str.ljust` would push every later
column of its row out of line; values a user chose (a sweep's overrides, a metric's name) may hold any of them.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence

ELLIPSIS = "…"


def cell_width(text: str) -> int:
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def fit(text: str, width: int) -> str:
    """`text` cut to at most `width` cells, ending in … when cut."""
    if cell_width(text) <= width:
        return text
    out, used = "", cell_width(ELLIPSIS)
    for c in text:
        if used + cell_width(c) > width:
            break
        out, used = out + c, used + cell_width(c)
    return out + ELLIPSIS


def table(header: Sequence[str], rows: Iterable[Sequence[str]], right: Iterable[int] = (), indent: str = "  ",
          gap: str = "  ") -> list[str]:
    """One line per row, each column as wide as its widest cell; columns in `right` are right-aligned."""
    body = [list(r) for r in rows]
    widths = [max(cell_width(c) for c in col) for col in zip(header, *body, strict=True)]
    align = set(right)

    def line(cells: Sequence[str]) -> str:
        parts = []
        for i, (c, w) in enumerate(zip(cells, widths, strict=True)):
            pad = " " * (w - cell_width(c))
            parts.append(pad + c if i in align else c + pad)
        return (indent + gap.join(parts)).rstrip()

    return [line(header), *(line(r) for r in body)]


def short_names(paths: Sequence[str]) -> dict[str, str]:
    """Each dotted path's shortest tail that no other path ends with: `model.init_args.lr` -> `lr`."""
    out = {}
    for path in paths:
        parts = path.split(".")
        out[path] = path
        for n in range(1, len(parts)):
            tail = ".".join(parts[-n:])
            if not any(q != path and (q == tail or q.endswith(f".{tail}")) for q in paths):
                out[path] = tail
                break
    return out
