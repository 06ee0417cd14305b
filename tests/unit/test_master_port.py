"""The TCPStore port a cluster job's ranks derive alone (worker/env.py)."""

from __future__ import annotations

from trainctl.worker.env import MASTER_PORT_RANGE, job_master_port


def test_same_inputs_same_port_and_outside_the_ephemeral_range() -> None:
    ports = {job_master_port(str(job), str(restart)) for job in range(1, 20001) for restart in range(4)}
    assert all(p in MASTER_PORT_RANGE for p in ports) and max(ports) < 32768
    assert job_master_port("4", "0") == job_master_port("4", "0")
    assert len(ports) > 0.99 * len(MASTER_PORT_RANGE), "spread over the whole range"


def test_a_requeue_moves_to_another_port() -> None:
    # A port taken on the first node fails the attempt; the next one must not derive it again.
    moved = sum(job_master_port(str(job), "0") != job_master_port(str(job), "1") for job in range(1, 1000))
    assert moved >= 995
