"""The short chaos run inside `make test`: one round of each strike, then the storm.

Same harness as `make chaos` (tests/chaos/runner.py) with fewer, smaller rounds
(`ChaosSettings.short`): CHAOS_SHORT_ROUNDS (default 4, one of each strike), CHAOS_STORM
(default 100) and CHAOS_SEED to replay a failure with the seed it printed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.chaos.runner import ChaosRun, ChaosSettings, seed_from_env
from tests.support import add_summary

pytestmark = [pytest.mark.interop, pytest.mark.slow, pytest.mark.timeout(900)]


async def test_no_invariant_breaks_under_crashes_partitions_and_a_restart_storm(
    tmp_path: Path,
) -> None:
    settings = ChaosSettings.short(
        seed_from_env(),
        tmp_path,
        rounds=int(os.environ.get("CHAOS_SHORT_ROUNDS", "4")),
        storm=int(os.environ.get("CHAOS_STORM", "100")),
    )
    report = await ChaosRun(settings).run()
    add_summary("chaos", report.text())
    assert not report.violations, report.text()
