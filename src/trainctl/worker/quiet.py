"""Lightning's noise, shown once or not at all, so that a rank's log is the user's output and trainctl's lines.

Dropped: Lightning's tips (`💡 Tip: …`), the `srun` warning a host with SLURM installed raises (trainctl
starts the ranks itself), and torch's deprecation of `LeafSpec`, which Lightning's own code triggers on every
checkpoint (the user can do nothing about it; raised from the user's code, it still shows). Shown once per
process: the `weights_only` note Lightning logs for every checkpoint it loads. A record that reaches two handlers
(the root one the worker sets up, and Lightning's own on `lightning.pytorch` or submitit's) is written once. The
user's prints, warnings and log records pass untouched.
"""

from __future__ import annotations

import logging
import warnings

OWN_HANDLER = ("submitit",)  # libraries that log through a handler of their own and also propagate to root
LIGHTNING_LOGGERS = ("lightning.pytorch", "pytorch_lightning", "lightning.fabric", "lightning_fabric", "lightning")
DROP = ("💡 Tip:",)
ONCE = ("`weights_only` was not set",)
SRUN_WARNING = r"The `srun` command is available on your system but is not used"
LEAFSPEC_DEPRECATION = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
LIGHTNING_MODULES = r"(pytorch_lightning|lightning)\."


class LightningNoise(logging.Filter):
    """On the root handlers: Lightning's records only; every other logger's record passes."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(LIGHTNING_LOGGERS):
            return True
        message = record.getMessage()
        if message.startswith(DROP):
            return False
        for once in ONCE:
            if once in message:
                if once in self.seen:
                    return False
                self.seen.add(once)
        return True


def drop_lightning_warnings() -> None:
    warnings.filterwarnings("ignore", message=SRUN_WARNING)
    warnings.filterwarnings("ignore", message=LEAFSPEC_DEPRECATION, category=FutureWarning, module=LIGHTNING_MODULES)


def install() -> None:
    """After logging.basicConfig: filter the root handlers; Lightning's loggers write through root only."""
    drop_lightning_warnings()
    noise = LightningNoise()
    root = logging.getLogger()
    for handler in root.handlers:
        handler.addFilter(noise)
    if not root.handlers:
        return
    for name in OWN_HANDLER:
        library = logging.getLogger(name)
        if library.handlers:
            library.propagate = False  # its own handler writes it already
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                logger.removeHandler(handler)  # the same record would also reach the root handler
