"""Latency benchmarks (``scripts/bench_latency.py`` runs them): CPU, tiny bundle, real LocalStack."""
