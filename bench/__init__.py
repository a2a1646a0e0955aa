"""Benchmarks: each ``*_bench.py`` prints its figures as one JSON object (its last stdout line)."""
