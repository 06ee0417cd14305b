"""Local backend: this machine, through submitit's LocalExecutor (submit.py: the CLI's side; injob.py: the ranks')."""
