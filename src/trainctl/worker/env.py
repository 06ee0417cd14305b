"""Rank, world size and rendezvous from the scheduler, exported once as torch's env:// variables.

One cluster environment for every backend: submitit's JobEnvironment reads SLURM (or its local executor) and
TorchDistributedEnvironment exports MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK; Lightning then reads them
through its generic LightningEnvironment. Lightning's SLURMEnvironment is never used: it would also install
its own SIGUSR1 auto-requeue, a second owner of preemption. Ray Train sets these variables itself.
"""

from __future__ import annotations

import os
import socket
import zlib
from dataclasses import dataclass


@dataclass(frozen=True)
class RankInfo:
    global_rank: int
    local_rank: int
    world_size: int
    node_rank: int
    num_nodes: int
    host: str
    scheduler_job_id: str


def export_from_submitit(master_port: int = 0) -> RankInfo:
    """Export torch's env:// variables from the submitit job environment (local or SLURM)."""
    import submitit

    job = submitit.JobEnvironment()
    if master_port:
        os.environ["MASTER_PORT"] = str(master_port)
    elif "MASTER_PORT" not in os.environ:
        # Same on every rank of the job and stable across its requeues: derived from the job id.
        os.environ["MASTER_PORT"] = str(20000 + zlib.crc32(str(job.job_id).encode()) % 20000)
    dist = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    os.environ["NODE_RANK"] = str(job.node)
    return RankInfo(dist.rank, dist.local_rank, dist.world_size, job.node, job.num_nodes, socket.gethostname(),
                    str(job.job_id))


def from_environment() -> RankInfo:
    """Read the variables a launcher (Ray Train, torchrun) already set."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    rank = int(os.environ.get("RANK", "0"))
    return RankInfo(rank, int(os.environ.get("LOCAL_RANK", "0")), world, int(os.environ.get("NODE_RANK", "0")),
                    max(1, world // max(1, local_world)), socket.gethostname(), os.environ.get("TRAINCTL_JOB_ID", ""))
