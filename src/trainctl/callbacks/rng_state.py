"""Every rank's RNG states (python, numpy, torch, CUDA) saved with each checkpoint and restored on resume.

Lightning saves no RNG state, so dropout and augmentation after a resume would differ from the run that was
never interrupted. States are gathered from all ranks when the checkpoint is dumped (every rank calls
save_checkpoint together) and each rank restores its own. numpy's state is stored as plain data, not a
pickled numpy object, so the checkpoint stays loadable with weights_only.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

KEY = "trainctl_rng_states"


def capture() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore(state: dict[str, Any]) -> None:
    random.setstate(_as_python_state(state["python"]))
    npst = state["numpy"]
    np.random.set_state((npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
                         npst["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _as_python_state(value: Any) -> tuple:
    version, internal, gauss = value
    return (version, tuple(internal), gauss)


class RngStateImpl:
    def __init__(self) -> None:
        super().__init__()
        self.loaded: list[dict[str, Any]] | None = None

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        mine = capture()
        if trainer.world_size > 1:
            gathered: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, mine)
        else:
            gathered = [mine]
        checkpoint[KEY] = gathered

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get(KEY)
        if states and trainer.global_rank < len(states):
            restore(states[trainer.global_rank])
