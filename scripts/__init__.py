"""Benchmarks and tools, run from the repository root as modules: `python -m scripts.bench_train`."""
