"""Fully sharded training (resources.strategy: fsdp): Lightning's FSDPStrategy with trainctl's sharded checkpoints.

Lightning's Trainer strategy, rather than torch's FSDP applied by hand or Fabric: it wraps an unchanged
LightningModule inside the same Trainer the rest of trainctl drives (loops, callbacks, the precision plugin that
turns `trainer.precision` into FSDP's mixed precision, the distributed sampler), so neither the user's module nor
trainctl's callbacks change with the strategy. Its own sharded save writes no manifest and is not atomic, so
`save_checkpoint` and `load_checkpoint` are trainctl's (callbacks/sharded_checkpoint.py): every rank writes its
shard with DCP into a directory aside, the directory is committed as a whole with a manifest written last, and
a checkpoint is loaded only if every shard verifies. DCP reshards on load, so a checkpoint resumes on another
number of ranks.
"""

from __future__ import annotations

import json
import logging
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

from trainctl.callbacks.binding import make
from trainctl.callbacks.checkpoint_io import manifest_path, verify
from trainctl.callbacks.sharded_checkpoint import commit, file_digest, own_files, save_meta, tmp_dir
from trainctl.components import LightningNamespace, import_class
from trainctl.spec import Spec

log = logging.getLogger("trainctl.fsdp")
RESHARDED_TAG = "trainctl.resharded"


class ShardedFSDPImpl:
    """FSDPStrategy (bound to the user's namespace) whose checkpoints are trainctl's verified sharded directories."""

    def _setup_model(self, model: Any) -> Any:
        """Wrap once per module. A `trainer.test` after the fit hands the bare LightningModule in again, whose
        parameters are by then views into the first wrapper's shards: wrapping those again would shard the shards,
        so the first wrapper is returned. On CPU ranks the wrap names `device_id=cpu`: Lightning passes the
        device's index (None on a CPU), and FSDP then looks for an accelerator and refuses to start; Lightning's
        own setup sees the wrapped module and only adds what comes after wrapping (activation checkpointing)."""
        import torch
        from torch.distributed.fsdp import FullyShardedDataParallel

        wrapped = getattr(self, "trainctl_wrapped", None)
        if wrapped is not None and wrapped.module is model:
            return wrapped
        if self.root_device.type != "cpu" or any(  # type: ignore[attr-defined]
                isinstance(m, FullyShardedDataParallel) for m in model.modules()):
            self.trainctl_wrapped = super()._setup_model(model)  # type: ignore[misc]
            return self.trainctl_wrapped
        model = FullyShardedDataParallel(
            module=model, cpu_offload=self.cpu_offload,  # type: ignore[attr-defined]
            mixed_precision=self.mixed_precision_config,  # type: ignore[attr-defined]
            sharding_strategy=self.sharding_strategy, device_id=torch.device("cpu"),  # type: ignore[attr-defined]
            **self.kwargs)  # type: ignore[attr-defined]
        policy = self.kwargs.pop("auto_wrap_policy", None)  # type: ignore[attr-defined]
        try:
            self.trainctl_wrapped = super()._setup_model(model)  # type: ignore[misc]
        finally:
            if policy is not None:
                self.kwargs["auto_wrap_policy"] = policy  # type: ignore[attr-defined]
        return self.trainctl_wrapped

    def setup_environment(self) -> None:
        import torch.distributed as dist

        super().setup_environment()  # type: ignore[misc]
        # A CPU group of its own for the background writes' collectives: they never interleave with training's.
        # Made once (a test after the fit sets the environment up again, on every rank alike).
        if getattr(self, "trainctl_group", None) is None:
            self.trainctl_group = dist.new_group(backend="gloo", timeout=self._timeout)  # type: ignore[attr-defined]

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        """Every rank: the shards written aside with DCP, then committed (hashes gathered, rank 0 renames and
        writes the manifest). With checkpoint.async_save DCP copies the state to host memory here and writes in
        the background; the commit follows on the IO's writer thread. One save is in flight at a time, so the
        background collectives run in the same order on every rank."""
        import time

        from torch.distributed.checkpoint import FileSystemWriter, async_save
        from torch.distributed.checkpoint import save as dcp_save

        io = self.checkpoint_io  # type: ignore[attr-defined]
        t0 = time.perf_counter()
        io.wait()
        path = Path(self.broadcast(str(filepath)))  # type: ignore[attr-defined]
        zero = self.is_global_zero  # type: ignore[attr-defined]
        aside = tmp_dir(path)
        if zero:
            if aside.exists():
                shutil.rmtree(aside)  # an attempt that died mid-write left it; it was never committed
            aside.mkdir(parents=True)
        self.barrier("trainctl.fsdp.aside")  # type: ignore[attr-defined]
        state = {"model": checkpoint.pop("state_dict")}
        state.update({f"optimizer_{i}": s for i, s in enumerate(checkpoint.pop("optimizer_states", []))})
        if zero:
            save_meta(checkpoint, aside)  # small, and written now: the loops and callbacks move on
        meta = {"global_step": checkpoint.get("global_step"), "epoch": checkpoint.get("epoch")}
        # Lightning's keys (`model`, `optimizer_<i>`): its sharded loader reads the optimizers back by them.
        writer = FileSystemWriter(aside, sync_files=True)
        if not io.async_save:
            dcp_save(state, storage_writer=writer)
            self._commit(path, meta, None)
        else:
            written = async_save(state, storage_writer=writer, process_group=self.trainctl_group)
            io.submit(path, self._commit, path, meta, written)
        io.blocked_s.append(time.perf_counter() - t0)  # what the training loop waited (benchmarks read it)

    def _commit(self, path: Path, meta: dict[str, Any], written: Any) -> None:
        """A peer that dies meanwhile breaks the collectives here: the checkpoint then stays uncommitted (never
        loaded) or is committed already, and the attempt's end comes from training's own failed collective, so
        that break is logged, not raised (raised, it would mask why the attempt ended)."""
        import torch.distributed as dist

        if written is not None:
            written.result()  # this rank's shard is on disk (DCP fsyncs each file)
        mine = {f.name: file_digest(f) for f in own_files(tmp_dir(path), self.global_rank)}  # type: ignore[attr-defined]
        digests: list[Any] = [None] * self.world_size  # type: ignore[attr-defined]
        group = self.trainctl_group if written is not None else None
        try:
            dist.all_gather_object(digests, mine, group=group)
        except (RuntimeError, dist.DistError) as exc:
            log.warning("%s stays uncommitted: a rank left before sending its shards' checksums (%s)", path.name, exc)
            return
        if self.is_global_zero:  # type: ignore[attr-defined]
            commit(path, digests, meta)
        try:  # the checkpoint exists for every rank once its save has returned or been waited
            dist.barrier(group=group)
        except (RuntimeError, dist.DistError) as exc:
            log.warning("%s: a rank left before the commit's barrier (%s)", path.name, exc)

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        self.checkpoint_io.wait()  # type: ignore[attr-defined]  # a sharded save still being committed
        path = Path(self.broadcast(str(checkpoint_path)))  # type: ignore[attr-defined]
        problem = self.broadcast(verify(path) if self.is_global_zero else None)  # type: ignore[attr-defined]
        if problem:
            raise RuntimeError(f"refusing to load {path}: {problem}")
        self._note_resharding(path)
        # trainctl's own verified files: RNG and loader states are not weights-only
        return super().load_checkpoint(path, weights_only=False)  # type: ignore[misc]

    def _note_resharding(self, path: Path) -> None:
        """A checkpoint from another number of ranks: DCP reshards the state exactly, but each rank's samples
        (and the part of the epoch already done) change with the world size, so the run says so on a tag."""
        try:
            manifest = json.loads(manifest_path(path).read_text())
        except (OSError, ValueError):
            return
        saved, now = manifest.get("world_size"), self.world_size  # type: ignore[attr-defined]
        if saved and saved != now:
            self.trainctl_tags[RESHARDED_TAG] = (  # type: ignore[attr-defined]
                f"{path.name}: saved on {saved} ranks, resumed on {now}; the state is resharded exactly, the data "
                "order from this step on differs from a run that kept its ranks")
            log.warning("resharding %s from %s to %s ranks: the data order changes", path.name, saved, now)


def build_strategy(ns: LightningNamespace, spec: Spec, acc: str, checkpoint_io: Any, tags: dict[str, str]) -> Any:
    """Lightning's FSDPStrategy from the spec's fsdp block, saving and loading trainctl's sharded checkpoints.
    `tags`: the run's tags, where a resume on another number of ranks is recorded."""
    fs, res = spec.fsdp, spec.resources
    layers = {import_class(p) for p in fs.wrap}
    kwargs: dict[str, Any] = {}
    if layers:
        kwargs["auto_wrap_policy"] = layers
        if fs.activation_checkpointing:
            kwargs["activation_checkpointing_policy"] = layers
    if fs.sharding.value == "hybrid_shard":
        kwargs["device_mesh"] = (res.nodes, res.devices_per_node)
    strategy = make(
        ShardedFSDPImpl, ns.pl.strategies.FSDPStrategy,
        process_group_backend="nccl" if acc == "gpu" else "gloo",
        timeout=timedelta(seconds=spec.fault_tolerance.collective_timeout_s),
        cluster_environment=ns.fabric.plugins.environments.LightningEnvironment(),
        checkpoint_io=checkpoint_io,
        sharding_strategy=fs.sharding.value.upper(),
        cpu_offload=fs.cpu_offload,
        state_dict_type="sharded",
        **kwargs,
    )
    strategy.trainctl_tags = tags
    return strategy


def is_sharded(strategy: Any) -> bool:
    """Whether gradients live in shards (a global norm then needs every rank's part)."""
    return isinstance(strategy, ShardedFSDPImpl)

