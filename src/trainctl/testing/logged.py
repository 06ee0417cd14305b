"""The digits classifier written the way MLflow's and Lightning's docs show logging from a LightningModule.

Its hooks call `self.logger` on every rank, with no rank guard, as MLFlowLogger users do; each rank also writes what
its logger answered (`logger-probe-rank<N>.json` in `self.logger.save_dir`) for the test to compare.
"""

from __future__ import annotations

import json
from pathlib import Path

from trainctl.examples.digits import DigitsClassifier


class LoggedDigits(DigitsClassifier):
    def __init__(self, hidden: int = 128, dropout: float = 0.2, lr: float = 3e-3, step_lr_gamma: float = 0.9,
                 note: str = "first") -> None:
        super().__init__(hidden=hidden, dropout=dropout, lr=lr, step_lr_gamma=step_lr_gamma)
        self.save_hyperparameters()  # Lightning hands these to logger.log_hyperparams when fit starts

    def on_train_start(self) -> None:
        logger, rank = self.logger, self.global_rank
        client, run_id = logger.experiment, logger.run_id
        client.log_text(run_id, f"written on rank {rank}", "notes/hello.txt")
        client.log_dict(run_id, {"hidden": self.hparams.hidden, "layers": [64, self.hparams.hidden, 10]},
                        "config/model.json")
        logger.log_hyperparams({"optimizer": {"name": "adam", "betas": [0.9, 0.999]}, "note": self.hparams.note})
        probe = Path(logger.save_dir) / f"logger-probe-rank{rank}.json"
        probe.write_text(json.dumps({"run_id": run_id, "experiment_id": logger.experiment_id,
                                     "experiment": type(client).__name__, "save_dir": logger.save_dir}))
        client.log_artifact(run_id, str(probe), "probes")

    def on_train_epoch_end(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots()
        ax.plot([0, 1, 2], [1.0, 0.5, 0.25])
        self.logger.experiment.log_figure(self.logger.run_id, fig, f"plots/epoch{self.current_epoch}.png")
        plt.close(fig)
        self.logger.log_metrics({"custom/direct": float(self.current_epoch)}, step=self.global_step)
        # A key logged again with another value: MLflow params are immutable, the first value stays.
        self.logger.log_hyperparams({"note": f"epoch {self.current_epoch}"})
