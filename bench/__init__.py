"""Benchmarks: each ``bench_*.py`` module measures synthpacs against a peer in the same run."""
