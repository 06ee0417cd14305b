"""How a followed job looks: `submit` and `trainctl logs -f` print through one Renderer.

With a terminal attached, rich draws each attempt's banner as a rule, trainctl's progress lines in colour and the
final metrics as a table; in a pipe or CI every item is one plain line, so logs and tests read the same text.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from trainctl.logview import PREFIX, Line
from trainctl.progress import SYSTEM_PREFIX


class Renderer:
    def __init__(self, out: TextIO | None = None, rich: bool | None = None, rank_prefix: bool = False) -> None:
        self.out = out or sys.stdout
        self.rank_prefix = rank_prefix
        use_rich = self.out.isatty() if rich is None else rich
        self.console: Any = None
        if use_rich:
            from rich.console import Console

            self.console = Console(file=self.out, highlight=False, soft_wrap=True)

    def line(self, item: Line) -> None:
        text = item.text.removeprefix(PREFIX) if item.kind != "text" else item.text
        gutter = f"{item.rank}|" if self.rank_prefix else "|"
        if self.console is None:
            plain = {"banner": f"── {text} ──", "progress": f"  » {text}"}.get(item.kind, f"  {gutter} {text}")
            self._plain(plain)
            return
        from rich.text import Text

        if item.kind == "banner":
            self.console.rule(Text(text, style="bold"))
        elif item.kind == "progress":
            self.console.print(Text(f"  » {text}", style="cyan"))
        else:
            self.console.print(Text.assemble((f"  {gutter} ", "dim"), text))

    def say(self, text: str) -> None:
        if self.console is None:
            self._plain(text)
        else:
            from rich.text import Text

            self.console.print(Text(text, style="yellow"))

    def end(self, run_id: str, state: str, reason: str, metrics: dict[str, float], more: list[str]) -> None:
        """The last words: the final training metrics (the nodes' system metrics stay in the run), the commands
        that look further, and last the state (one line a script can take with `tail -1`)."""
        head = f"run {run_id} ended {state}" + (f": {reason}" if reason else "")
        shown = {k: v for k, v in sorted(metrics.items()) if k != "epoch" and not k.startswith(SYSTEM_PREFIX)}
        if self.console is None:
            if shown:
                self._plain("final: " + " · ".join(f"{k} {v:.6g}" for k, v in shown.items()))
            self._plain("more:  " + " · ".join(more))
            self._plain(head)
            return
        from rich.table import Table
        from rich.text import Text

        if shown:
            table = Table("final metric", "value", box=None, padding=(0, 2))
            for k, v in shown.items():
                table.add_row(k, f"{v:.6g}")
            self.console.print(table)
        self.console.print(Text("more:  " + " · ".join(more), style="dim"))
        self.console.print(Text(head, style="bold green" if state == "FINISHED" else "bold red"))

    def _plain(self, text: str) -> None:
        print(text, file=self.out, flush=True)
