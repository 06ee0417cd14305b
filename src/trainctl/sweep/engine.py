"""The sweep engine: one Optuna study in journal storage on the sweep's directory, driven by ask/tell.

Every trial, on every node, opens the same journal file (Optuna locks it for each write), so the adaptive
samplers see the trials that finished anywhere and the pruners compare trials at the same rung. Asks are also
serialised by the sweep's own lock: the grid sampler then never hands one point to two trials started together.
A rung is a validation: the n-th validation of a trial reports at step n.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainctl.sweep.layout import locked
from trainctl.sweep.space import SweepConfig

STUDY = "sweep"


def _optuna() -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _storage(sweep_dir: Path) -> Any:
    optuna = _optuna()
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(sweep_dir / "journal.log")))


def sampler(cfg: SweepConfig, index: int) -> Any:
    """Each trial's process builds its own sampler: seeded by the sweep's seed and the trial's index, so that two
    trials that ask at once do not draw the same random values."""
    optuna = _optuna()
    if cfg.method == "grid":
        return optuna.samplers.GridSampler({p: list(d.values) for p, d in cfg.space.items()}, seed=cfg.seed)
    if cfg.method == "tpe":  # random for the first half (at most 10), then model-based; liars for running trials
        startup = max(1, min(10, cfg.trials // 2))
        return optuna.samplers.TPESampler(seed=cfg.seed + index, n_startup_trials=startup, constant_liar=True)
    return optuna.samplers.RandomSampler(seed=cfg.seed + index)


def pruner(cfg: SweepConfig) -> Any:
    optuna = _optuna()
    opts = {k: v for k, v in cfg.pruner.items() if k != "kind"}
    if cfg.pruner["kind"] == "asha":
        opts.setdefault("min_resource", 1)
        return optuna.pruners.SuccessiveHalvingPruner(**opts)
    if cfg.pruner["kind"] == "median":
        return optuna.pruners.MedianPruner(**opts)
    return optuna.pruners.NopPruner()


def create(sweep_dir: Path, cfg: SweepConfig) -> None:
    _optuna().create_study(study_name=STUDY, storage=_storage(sweep_dir),
                           direction="minimize" if cfg.mode == "min" else "maximize")


def load(sweep_dir: Path, cfg: SweepConfig, index: int | None = None) -> Any:
    """The study; `index`: the trial that asks (else a plain sampler: the grid sampler's own end-of-grid step
    only works inside Optuna's optimize loop)."""
    optuna = _optuna()
    chosen = sampler(cfg, index) if index is not None else optuna.samplers.RandomSampler(seed=cfg.seed)
    return optuna.load_study(study_name=STUDY, storage=_storage(sweep_dir), sampler=chosen, pruner=pruner(cfg))


def ask(sweep_dir: Path, cfg: SweepConfig, index: int) -> tuple[int, int, dict[str, Any]]:
    """A new trial: (Optuna's trial number, its storage id, its parameters by spec path)."""
    with locked(sweep_dir / "ask.lock"):
        trial = load(sweep_dir, cfg, index).ask(cfg.distributions())
    return trial.number, trial._trial_id, dict(trial.params)  # the id re-attaches a running trial (report)


def report(sweep_dir: Path, cfg: SweepConfig, trial_id: int, rung: int, value: float) -> bool:
    """Record the metric at this rung; True when the pruner stops the trial here. Optuna's Trial(study, id) is
    how another process (a rank, a requeued attempt) reports for a trial it did not ask."""
    optuna = _optuna()
    trial = optuna.trial.Trial(load(sweep_dir, cfg), trial_id)
    if rung not in trial.storage.get_trial(trial_id).intermediate_values:  # a resumed attempt repeats none
        trial.report(value, rung)
    return bool(trial.should_prune())


def tell(sweep_dir: Path, cfg: SweepConfig, number: int, state: str, value: float | None = None) -> None:
    """End a trial in the study once (complete, pruned or fail); a second tell is ignored."""
    optuna = _optuna()
    states = {"complete": optuna.trial.TrialState.COMPLETE, "pruned": optuna.trial.TrialState.PRUNED,
              "fail": optuna.trial.TrialState.FAIL}
    study = load(sweep_dir, cfg)
    if state == "complete" and value is None:
        state = "fail"  # a finished trial that never reported its metric cannot be ranked
    study.tell(number, value if state == "complete" else None, state=states[state], skip_if_finished=True)
