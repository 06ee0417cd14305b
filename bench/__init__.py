"""Benchmarks: `python bench/gpu_flagship.py --help` (GPU flagship: trainctl's worker path vs a raw loop)."""
