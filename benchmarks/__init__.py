"""Benchmarks of peftcore against its references; run ``python benchmarks/bench.py --help``."""
