"""SLURM backend: submitit's SlurmExecutor (submit.py: the CLI's side; injob.py: the ranks')."""
