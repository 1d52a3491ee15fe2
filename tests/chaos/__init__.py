"""The chaos suite: crashes and partitions of the real programs, invariants after each.

`make chaos` runs `python -m tests.chaos` (CHAOS_ROUNDS rounds, default 100); `make
test` runs a short version (tests/chaos/test_chaos.py). See runner.py for a round.
"""
