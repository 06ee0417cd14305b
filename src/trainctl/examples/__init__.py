"""Example modules for the jobs in jobs/ (they double as test workloads)."""
