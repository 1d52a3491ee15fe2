"""The serving hub's settings for Python's cyclic garbage collector.

A hub holds on the order of a hundred objects per sidecar stream for as long as the
stream lives, and every beat batch lives until its group commit, so it outlives the
young generations and counts towards a full collection. With the default thresholds
(700, 10, 10) a hub with 10,000 streams spent about 1.7 s of every 10 s collecting,
most of it scanning the same million long-lived objects again; the beats' own work was
less. Reference counting frees nearly everything a hub drops (a cycle is rare: an
exception kept with its traceback), so the young generation is collected every 50,000
allocations, not 700, and a full collection waits for 100 of the middle one's.
"""

from __future__ import annotations

import gc

THRESHOLDS = (50_000, 20, 100)


def tune() -> None:
    """Collect seldom (call at process start, before the hub builds its state)."""
    gc.set_threshold(*THRESHOLDS)


def settle() -> None:
    """Leave what start-up built (modules, the store, the servers) out of every later
    collection: it lives as long as the process (call once the hub has started)."""
    gc.collect()
    gc.freeze()
