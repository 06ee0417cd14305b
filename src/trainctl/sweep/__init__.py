"""Sweeps: many trials of one job spec, searched and pruned by Optuna, each trial its own trainctl run.

A spec with a `sweep:` section is a sweep. `submit` validates the space against the spec (every grid point, a
sample of the others), creates the sweep's MLflow parent run and its directory, then starts the trials: on this
machine a driver keeps at most `max_concurrent` trial jobs alive; on SLURM the sweep is one job array (`%K`).
Each trial asks Optuna for its parameters the first time it starts and fixes them in its run directory, so a
requeue or a resume continues the same trial in the same child run.

    <workdir>/<name>-<parent id[:8]>/
        sweep.json      the sweep: parent run, tracking URI, base spec, space, backend (written at submit)
        journal.log     Optuna's journal storage: every trial on every node reads and writes it
        trials/NNNN/    one trial's run directory (rundir.py layout) + params.json, metric.json, pruned.json
        logs/           the local driver's log, or the SLURM array's output
"""

from __future__ import annotations

PARENT_TAG = "trainctl.sweep"  # "parent" on the sweep's own run
SWEEP_ID_TAG = "trainctl.sweep_id"  # on each trial's run: the parent run's id
