"""Backends: one module each (local, slurm, ray), the same small interface (base.Launcher)."""
