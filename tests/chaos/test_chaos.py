"""The short chaos run inside `make test`: one round of each strike, then the storm.

Same harness as `make chaos` (tests/chaos/runner.py), fewer rounds: CHAOS_SHORT_ROUNDS
(default 4, one of each kind) and CHAOS_SEED to replay a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.chaos.runner import ChaosRun, ChaosSettings, seed_from_env

pytestmark = [pytest.mark.interop, pytest.mark.slow, pytest.mark.timeout(900)]


async def test_no_invariant_breaks_under_crashes_partitions_and_a_restart_storm(
    tmp_path: Path,
) -> None:
    seed = seed_from_env()
    settings = ChaosSettings(
        seed=seed,
        rounds=int(os.environ.get("CHAOS_SHORT_ROUNDS", "4")),
        root=tmp_path,
        storm_sidecars=int(os.environ.get("CHAOS_STORM", "200")),
    )
    report = await ChaosRun(settings).run()
    print(report.text())
    assert not report.violations, report.text()
