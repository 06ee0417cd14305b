"""A user's own module next to its spec, run from anywhere: the embedded store, no PYTHONPATH, no MLflow server.

The CLI runs as a console script does (`sys.path[0]` is the script's directory, not the cwd), so nothing but
trainctl itself makes the user's directory importable.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

from trainctl.errors import UserError

MODULE = '''
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset


class TinyModel(pl.LightningModule):
    def __init__(self, hidden: int = 8, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 2))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.net(x), y)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class TinyData(pl.LightningDataModule):
    def __init__(self, batch_size: int = 8) -> None:
        super().__init__()
        self.batch_size = batch_size

    def train_dataloader(self):
        x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
        return DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=self.batch_size)
'''

SPEC = """
name: tiny-anywhere
model: {class_path: tinymodels_anywhere.TinyModel, init_args: {hidden: 8}}
data: {class_path: tinymodels_anywhere.TinyData, init_args: {batch_size: 8}}
trainer: {max_epochs: 2}
resources: {devices_per_node: 2, time_min: 10}
fault_tolerance: {collective_timeout_s: 120, signal_lead_s: 30}
"""


@pytest.mark.slow
def test_user_module_and_runs_from_any_directory(tmp_path: Path) -> None:
    mod, there, elsewhere, state, bin_dir = (tmp_path / d for d in ("mod", "there", "elsewhere", "state", "bin"))
    for d in (mod, there, elsewhere, bin_dir):
        d.mkdir()
    (mod / "tinymodels_anywhere.py").write_text(MODULE)
    (mod / "job.yaml").write_text(SPEC)
    script = bin_dir / "trainctl"  # what pip's console script does
    script.write_text("import sys\nfrom trainctl.cli import main\nsys.exit(main())\n")
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PYTHONPATH")}
    env.update(PYTHONPATH=str(ROOT / "src"), TRAINCTL_STATE_DIR=str(state))

    def cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(script), *args], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=timeout)

    res = cli("validate", "job.yaml", cwd=mod)  # the module in the cwd
    assert res.returncode == 0, res.stderr
    # From another directory: the module is next to the spec only; the ranks run with `there` as their cwd.
    res = cli("submit", str(mod / "job.yaml"), cwd=there, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    run_id = re.search(r"run id:\s+([0-9a-f]{32})", res.stdout).group(1)
    store = there / "runs"
    assert "database tables" not in res.stderr, "MLflow's set-up of a new store is not the user's business"
    assert f"-m trainctl.mlflow_server --workdir {store}" in res.stdout, res.stdout

    status = cli("status", run_id[:8], cwd=elsewhere)
    assert status.returncode == 0 and "FINISHED" in status.stdout, status.stderr
    listed = cli("ls", cwd=elsewhere)
    assert listed.returncode == 0 and run_id in listed.stdout and str(store) in listed.stdout, listed.stderr
    logs = cli("logs", run_id, "--rank", "1", cwd=elsewhere)
    assert logs.returncode == 0 and "rank 1" in logs.stdout, logs.stderr
    synced = cli("sync", run_id[:6], cwd=elsewhere)
    assert synced.returncode == 0 and "uploaded 0" in synced.stdout, synced.stderr
    assert list(elsewhere.iterdir()) == [], "a read created a store"

    short = cli("status", run_id[:5], cwd=elsewhere)
    assert short.returncode == 2 and "at least 6 characters" in short.stderr and "Traceback" not in short.stderr
    again = cli("resume", run_id, cwd=elsewhere)  # max_epochs reached: it would train nothing
    assert again.returncode == 2 and "would train nothing" in again.stderr, again.stderr
    assert "--set trainer.max_epochs=4" in again.stderr and "HINT" in again.stderr


@pytest.mark.slurm
def test_a_refused_launch_ends_the_run_failed(slurm_cluster: None, tmp_path: Path) -> None:
    """submit and resume hand jobs over through control.launch: a backend's refusal never leaves a PENDING run."""
    from trainctl import control, tracking
    from trainctl.rundir import JobFile
    from trainctl.spec import parse_spec, read_yaml

    raw = read_yaml(ROOT / "jobs" / "digits-slurm.yaml")
    raw["backend"]["slurm"]["partition"] = "no-such-partition"
    spec = parse_spec(raw, check_classes=False)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = tracking.create_run(spec, store, "slurm")
    job = JobFile(run_id=run_id, tracking_uri=store, backend="slurm", spec=spec.to_dict())
    job.write(tmp_path / "run")
    with pytest.raises(UserError) as info:
        control.launch(spec, tmp_path / "run", job)
    assert "backend" in str(info.value) and "HINT" in str(info.value)
    ref = control.find_run(run_id, store)
    assert ref.state.value == "FAILED" and ref.tags["trainctl.reason"].startswith("submit failed"), ref.tags
