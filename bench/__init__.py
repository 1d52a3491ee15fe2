"""Benchmarks against the raw stack: `python -m bench` (see bench/__main__.py)."""
