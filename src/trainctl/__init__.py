"""trainctl: Lightning DDP jobs on SLURM, Ray or this machine, tracked in MLflow."""

__version__ = "0.1.0"
