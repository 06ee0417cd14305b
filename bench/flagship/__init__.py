"""The GPU flagship benchmark (bench/gpu_flagship.py): timing, variants, diagnostics, the parent/child protocol,
the orchestration and the report, one module each."""
