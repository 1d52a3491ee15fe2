"""`mc-hub serve` runs with the hub's collector settings (hub/collector.py): young
objects collected seldom, what start-up built left out of later collections."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub import cli, collector
from hub.config import HubConfig


@pytest.fixture
def restored_collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def test_serve_tunes_the_collector_before_the_hub_starts(
    restored_collector: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[int, ...]] = []

    async def serve(config: HubConfig) -> None:  # the hub's start, as far as gc can tell
        seen.append(gc.get_threshold())

    monkeypatch.setattr(cli, "_serve", serve)
    monkeypatch.setenv("MC_ADMIN_TOKEN", "t" * 64)
    assert gc.get_threshold() != collector.THRESHOLDS
    code = cli.main(["serve", "--data-dir", str(tmp_path / "hub"), "--insecure-dev"])
    assert code == 0
    assert seen == [collector.THRESHOLDS]


def test_settle_leaves_what_exists_out_of_later_collections(restored_collector: None) -> None:
    kept = [[] for _ in range(1000)]  # containers the collector tracks
    collector.settle()
    assert gc.get_freeze_count() >= len(kept)
