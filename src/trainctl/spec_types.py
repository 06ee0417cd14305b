"""The job spec's fields: every default and every range lives here, and nowhere else.

The dataclasses are the schema: `spec` loads YAML into them, `spec_doc` renders the README's field table from
them, and `to_dict` is what a run records.
"""

# ruff: noqa: RUF009  (`_f` only wraps dataclasses.field with range metadata; it is not a mutable default)
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Accelerator(str, Enum):
    cpu = "cpu"
    gpu = "gpu"
    auto = "auto"


class Mode(str, Enum):
    min = "min"
    max = "max"


class OnFailure(str, Enum):
    requeue = "requeue"  # infrastructure failures are retried from the last good checkpoint while max_restarts lasts
    fail = "fail"  # infrastructure failures end the run FAILED; preemption and time limits still requeue


class Strategy(str, Enum):
    ddp = "ddp"  # every rank holds the whole model and optimizer state
    fsdp = "fsdp"  # parameters, gradients and optimizer state sharded across the ranks


class Sharding(str, Enum):
    full_shard = "full_shard"  # parameters, gradients and optimizer state
    shard_grad_op = "shard_grad_op"  # gradients and optimizer state; parameters stay whole between forward and backward
    hybrid_shard = "hybrid_shard"  # full_shard within a node, replicated across nodes


class BackendKind(str, Enum):
    local = "local"
    slurm = "slurm"
    ray = "ray"


def _f(default: Any = dataclasses.MISSING, *, lo: float | None = None, hi: float | None = None,
       doc: str = "", factory: Any = None) -> Any:
    meta = {"lo": lo, "hi": hi, "doc": doc}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Component:
    """A class in LightningCLI form: `class_path` plus `init_args` (nested class_path objects allowed)."""

    class_path: str = _f(doc="importable dotted path, e.g. trainctl.examples.digits.DigitsClassifier")
    init_args: dict[str, Any] = _f(factory=dict, doc="keyword arguments, checked against the signature")


@dataclass
class Resources:
    nodes: int = _f(1, lo=1, hi=1024, doc="machines; >1 needs backend slurm or ray")
    devices_per_node: int = _f(1, lo=1, hi=64, doc="ranks per node: GPUs, or processes on CPU")
    accelerator: Accelerator = _f(Accelerator.cpu, doc="cpu | gpu | auto")
    cpus_per_task: int = _f(1, lo=1, hi=512, doc="CPU cores per rank")
    mem_gb: float = _f(4.0, lo=0.1, hi=16384, doc="host memory per node, GiB")
    time_min: int = _f(60, lo=1, hi=60 * 24 * 30, doc="wall-clock limit per attempt, minutes")
    strategy: Strategy = _f(Strategy.ddp, doc="ddp | fsdp (fully sharded: see the `fsdp` section)")


@dataclass
class Fsdp:
    """Fully sharded training; read only with resources.strategy: fsdp. Mixed precision follows trainer.precision."""

    sharding: Sharding = _f(Sharding.full_shard, doc="full_shard | shard_grad_op | hybrid_shard (GPU, nodes > 1)")
    wrap: list[str] = _f(factory=list, doc="class paths of the layers each sharded as its own unit (e.g. "
                         "the transformer block); none = the whole module is one unit")
    activation_checkpointing: bool = _f(False, doc="recompute the `wrap` layers' activations in backward")
    cpu_offload: bool = _f(False, doc="keep parameters and gradients in host memory between uses (GPU only)")


@dataclass
class Checkpoint:
    monitor: str | None = _f(None, doc="metric for top-k (e.g. val/loss); none keeps only resume checkpoints")
    mode: Mode = _f(Mode.min, doc="min | max")
    save_top_k: int = _f(1, lo=-1, hi=1000, doc="best checkpoints kept by `monitor` (-1 = all)")
    save_last: bool = _f(True, doc="mirror the newest resume checkpoint to MLflow (checkpoints/last)")
    every_n_train_steps: int | None = _f(None, lo=1, hi=10**9, doc="resume checkpoint every N steps")
    every_n_minutes: float | None = _f(None, lo=0.05, hi=10**6, doc="resume checkpoint every N minutes")
    async_save: bool = _f(True, doc="write in the background; training blocks only for the state copy")
    keep_resume: int = _f(2, lo=1, hi=100, doc="resume checkpoints kept (the newest good one is never deleted)")


@dataclass
class EarlyStopping:
    monitor: str = _f(doc="metric to watch, e.g. val/loss")
    mode: Mode = _f(Mode.min, doc="min | max")
    patience: int = _f(3, lo=0, hi=10**6, doc="validation checks without improvement before stopping")
    min_delta: float = _f(0.0, lo=0, hi=1e12, doc="smallest change that counts as improvement")


@dataclass
class FaultTolerance:
    max_restarts: int = _f(3, lo=0, hi=1000, doc="requeues after preemption, time limit or an infrastructure "
                           "failure (a lost rank, a network error, a stall)")
    on_failure: OnFailure = _f(OnFailure.requeue, doc="requeue | fail: what an infrastructure failure does")
    retry_user_errors: int = _f(0, lo=0, hi=1000, doc="times an exception raised from your code is retried "
                                "(0: the run ends FAILED at once)")
    collective_timeout_s: float = _f(300.0, lo=5, hi=86400, doc="a stuck or dead rank fails the job after this")
    signal_lead_s: int = _f(60, lo=5, hi=3600, doc="warning signal this long before the time limit")


@dataclass
class Register:
    name: str = _f(doc="registered model that each FINISHED run's best checkpoint becomes a version of")
    alias: str | None = _f(None, doc="alias moved to that version, e.g. champion")


@dataclass
class Tracking:
    uri: str | None = _f(None, doc="MLflow URI; default MLFLOW_TRACKING_URI, else sqlite in workdir")
    log_every_n_steps: int = _f(1, lo=1, hi=10**6, doc="step metrics logged every N steps")
    log_grad_norm: bool = _f(True, doc="log the global L2 norm of the gradients (grad/norm)")
    log_checkpoints: bool = _f(True, doc="mirror best/last checkpoints to the MLflow run")
    system_metrics: float | None = _f(10.0, lo=0, hi=86400, doc="seconds between samples of each node's CPU, "
                                      "memory, disk, network, GPUs (system/<host>/…); 0 or null = off")
    redact: list[str] = _f(factory=list, doc="spec paths whose values are secret (never sent to MLflow)")
    register: Register | None = _f(None, doc="hand the best checkpoint to the Model Registry (optional)")


@dataclass
class SlurmOptions:
    partition: str | None = _f(None, doc="sbatch --partition")
    account: str | None = _f(None, doc="sbatch --account")
    qos: str | None = _f(None, doc="sbatch --qos")
    constraint: str | None = _f(None, doc="sbatch --constraint")
    gpus_per_node: int | None = _f(None, lo=0, hi=64, doc="default: devices_per_node when accelerator is gpu")
    setup: list[str] = _f(factory=list, doc="shell lines run before srun (module load …)")
    sbatch: dict[str, Any] = _f(factory=dict, doc="extra sbatch options, e.g. {exclusive: true}")


@dataclass
class RayOptions:
    address: str = _f("http://127.0.0.1:8265", doc="Ray Jobs API (dashboard) address")
    cpus_per_worker: float | None = _f(None, lo=0.1, hi=512, doc="default: resources.cpus_per_task")
    env_vars: dict[str, str] = _f(factory=dict, doc="extra environment for the Ray job")
    spread: bool = _f(True, doc="place workers on distinct nodes (SPREAD)")


@dataclass
class Backend:
    kind: BackendKind = _f(BackendKind.local, doc="local | slurm | ray")
    slurm: SlurmOptions = _f(factory=SlurmOptions)
    ray: RayOptions = _f(factory=RayOptions)


@dataclass
class Spec:
    name: str = _f(doc="job name: letters, digits, . _ - (≤ 64)")
    model: Component = _f(doc="the LightningModule")
    data: Component | None = _f(None, doc="the LightningDataModule (optional if the module has loaders)")
    experiment: str = _f("trainctl", doc="MLflow experiment")
    seed_everything: int | None = _f(42, lo=0, hi=2**32 - 1, doc="seed for every rank; none = not seeded")
    trainer: dict[str, Any] = _f(factory=dict, doc="Lightning Trainer arguments trainctl does not own")
    callbacks: list[Component] = _f(factory=list, doc="extra Lightning callbacks")
    resources: Resources = _f(factory=Resources)
    fsdp: Fsdp = _f(factory=Fsdp)
    checkpoint: Checkpoint = _f(factory=Checkpoint)
    early_stopping: EarlyStopping | None = _f(None, doc="optional")
    fault_tolerance: FaultTolerance = _f(factory=FaultTolerance)
    tracking: Tracking = _f(factory=Tracking)
    workdir: str = _f("runs", doc="run directories (shared storage on clusters)")
    backend: Backend = _f(factory=Backend)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
