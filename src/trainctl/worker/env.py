"""Rank, world size and rendezvous from the scheduler, exported once as torch's env:// variables.

One cluster environment for every backend: submitit's JobEnvironment reads SLURM (or its local executor) and
TorchDistributedEnvironment exports MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK; Lightning then reads them
through its generic LightningEnvironment. Lightning's SLURMEnvironment is never used: it would also install
its own SIGUSR1 auto-requeue, a second owner of preemption. Ray Train sets these variables itself.

Why Lightning does not pick SLURMEnvironment on SLURM (checked in Lightning 2.6, both namespaces): the
accelerator connector auto-detects a cluster environment (TorchElastic, then SLURMEnvironment when SLURM_NTASKS
is set and the job is not named bash/interactive, …) only when none was given. worker/build.py passes
`DDPStrategy(cluster_environment=LightningEnvironment())`, or `plugins=[LightningEnvironment()]` with its one-rank
SingleDeviceStrategy (which has no environment of its own); `_check_config_and_set_final_flags` takes either as
the cluster-environment flag and `_choose_and_init_cluster_environment` returns it as is. The signal connector
installs its SIGUSR1 auto-requeue handler only for `isinstance(env, SLURMEnvironment) and env.auto_requeue`, so
none is installed; its SIGTERM notifier is taken back by callbacks/preemption.py. (Lightning's
`hpc_ckpt_*.ckpt` auto-resume still looks when SLURM_NTASKS is set, but trainctl never writes such files.)
LightningEnvironment reads MASTER_ADDR/PORT, LOCAL_RANK and NODE_RANK.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import zlib

from trainctl.injob import RankInfo

# Below Linux's default ephemeral range (32768-60999), where any process's outgoing connection or
# listen(port 0) may already hold the port, and above Ray's worker ports (10002-19999) for Ray-on-SLURM.
MASTER_PORT_RANGE = range(20000, 32700)


def job_master_port(job_id: str, restart: str) -> int:
    """The TCPStore port of one attempt of a cluster job: the same on every rank without a word exchanged.

    The restart count is part of it, so when the port was taken on the first node (EADDRINUSE: the attempt
    crashes and is requeued) the next attempt tries another one instead of failing the same way again.
    """
    digest = zlib.crc32(f"{job_id}.{restart}".encode())
    return MASTER_PORT_RANGE.start + digest % len(MASTER_PORT_RANGE)


def export_from_submitit(master_port: int = 0) -> RankInfo:
    """Export torch's env:// variables from the submitit job environment (local or SLURM).

    On SLURM: MASTER_ADDR is the job's first node (submitit: hostnames[0] of SLURM_JOB_NODELIST) and
    MASTER_PORT is derived from the job id and the restart count (see job_master_port), so every rank of an
    attempt computes the same one alone. Call it after STOP.install() (trainctl/injob.py): it unblocks the signals
    the SLURM launcher blocked.
    """
    import submitit

    job = submitit.JobEnvironment()
    if master_port:
        os.environ["MASTER_PORT"] = str(master_port)
    elif "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(job_master_port(str(job.job_id), os.environ.get("SLURM_RESTART_COUNT", "0")))
    dist = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    os.environ["NODE_RANK"] = str(job.node)
    # SLURM: a task's hostname may be shared by several nodes (the local cluster runs them all on one host).
    host = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    if os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
        # launchers/slurm/submit.py starts every rank with SIGUSR2/SIGTERM blocked, so that a signal arriving during
        # start-up waits; trainctl's handlers are installed now (run_rank calls STOP.install() first), so a
        # pending warning or preemption is delivered to them here.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGUSR2, signal.SIGTERM))
        sys.stderr.write(f"trainctl: rank {dist.rank}/{dist.world_size} on node {host} (SLURM job {job.job_id}, "
                         f"restart {os.environ.get('SLURM_RESTART_COUNT', '0')}, master "
                         f"{dist.master_addr}:{dist.master_port})\n")
        sys.stderr.flush()
    return RankInfo(dist.rank, dist.local_rank, dist.world_size, job.node, job.num_nodes, host, str(job.job_id))
