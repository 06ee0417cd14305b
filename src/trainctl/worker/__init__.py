"""The one entrypoint every backend runs on every rank: `trainctl.worker.entrypoint.run_rank`."""
