"""Ray backend: a Ray job through the Jobs API (submit.py: the CLI's side; fit.py: can the cluster place it;
logs.py: its log split by rank) whose driver (driver.py) runs Ray Train over trainctl's worker (worker.py, with the
backend's in-job side in injob.py)."""
