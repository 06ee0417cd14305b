"""Backends: one folder each (local, slurm, ray), listed in registry.py. A backend's submit.py implements the submit
side (base.Launcher), its injob.py the side inside the job (trainctl.injob.InJob, handed to the worker)."""
