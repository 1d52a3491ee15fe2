"""ConfigWatcher on a plain file (no gateway): drift policy, invalid files, stopping."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from sidecar.config_watch import ConfigReport, ConfigWatcher
from sidecar.openclaw_config import DriftKind, write_atomic

A = "mc-aaaa"
B = "lead-bbbb"


def document(*ids: str, stamp: str = "2026.9.6") -> dict[str, Any]:
    return {
        "gateway": {"mode": "local", "port": 18789, "auth": {"token": "t"}},
        "agents": {"entries": {i: {"name": i, "workspace": f"/ws/{i}"} for i in ("main", *ids)}},
        "meta": {"lastTouchedVersion": stamp},
    }


def text_of(path: Path) -> str:
    return path.read_text(encoding="utf-8")


class Collected:
    def __init__(self) -> None:
        self.reports: list[ConfigReport] = []
        self._arrived = asyncio.Event()

    def __call__(self, report: ConfigReport) -> None:
        self.reports.append(report)
        self._arrived.set()

    async def next(self, after: int, timeout_s: float = 3.0) -> ConfigReport:
        """The report after the first `after` ones, waiting for it within a bound."""
        async with asyncio.timeout(timeout_s):
            while len(self.reports) <= after:
                self._arrived.clear()
                await self._arrived.wait()
        return self.reports[after]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "openclaw.json"
    write_atomic(path, json.dumps(document(A, B)))
    return path


async def start(config: Path, **kwargs: Any) -> tuple[ConfigWatcher, Collected]:
    collected = Collected()
    watcher = ConfigWatcher(config, collected, gateway_version="2026.9.6", **kwargs)
    first = await watcher.start()
    assert first.valid and first.present == {A, B} and first.drift == ()
    return watcher, collected


async def test_removed_managed_entry_is_restored_and_reported(config: Path) -> None:
    watcher, collected = await start(config)
    try:
        watcher.set_managed({A, B})
        seen = len(collected.reports)
        write_atomic(config, json.dumps(document(B)))
        report = await collected.next(seen)
        assert {(d.agent_id, d.kind) for d in report.drift} == {
            (A, DriftKind.REMOVED),
            (A, DriftKind.RESTORED),
        }
        assert json.loads(text_of(config))["agents"]["entries"][A]["workspace"] == f"/ws/{A}"
    finally:
        await watcher.stop()


async def test_changed_and_added_entries_are_reported_not_undone(config: Path) -> None:
    watcher, collected = await start(config)
    try:
        watcher.set_managed({A, B})
        changed = document(A, B, "mc-new")
        changed["agents"]["entries"][A]["name"] = "renamed by hand"
        seen = len(collected.reports)
        write_atomic(config, json.dumps(changed))
        report = await collected.next(seen)
        assert {(d.agent_id, d.kind) for d in report.drift} == {
            (A, DriftKind.CHANGED),
            ("mc-new", DriftKind.ADDED),
        }
        assert "name" in next(d.detail for d in report.drift if d.agent_id == A)
        assert json.loads(text_of(config)) == changed
    finally:
        await watcher.stop()


async def test_without_a_known_gateway_version_nothing_is_written(config: Path) -> None:
    collected = Collected()
    watcher = ConfigWatcher(config, collected)
    await watcher.start()
    try:
        watcher.set_managed({A})
        seen = len(collected.reports)
        text = json.dumps(document(B))
        write_atomic(config, text)
        report = await collected.next(seen)
        assert [(d.kind, "not restored" in d.detail) for d in report.drift] == [
            (DriftKind.REMOVED, True)
        ]
        assert text_of(config) == text

        # Once the version is known the pending restore goes through.
        seen = len(collected.reports)
        watcher.set_gateway_version("2026.9.6")
        report = await collected.next(seen)
        assert (A, DriftKind.RESTORED) in {(d.agent_id, d.kind) for d in report.drift}
    finally:
        await watcher.stop()


async def test_invalid_file_is_reported_and_left_alone_then_recovers(config: Path) -> None:
    watcher, collected = await start(config)
    try:
        watcher.set_managed({A, B})
        seen = len(collected.reports)
        write_atomic(config, '{"agents": {"entries": {')
        report = await collected.next(seen)
        assert not report.valid and "syntax" in report.error and report.drift == ()
        assert text_of(config) == '{"agents": {"entries": {'

        seen = len(collected.reports)
        write_atomic(config, json.dumps(document(A, B)))
        report = await collected.next(seen)
        assert report.valid and report.drift == ()
    finally:
        await watcher.stop()


def watch_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "config-watch"]


async def test_stop_ends_the_watch_task(config: Path) -> None:
    watcher, _ = await start(config)
    [watch] = watch_tasks()
    assert not watch.done()
    await asyncio.wait_for(watcher.stop(), 5)
    assert watch.done() and watch_tasks() == []
    await asyncio.wait_for(watcher.stop(), 5)  # stopping twice is harmless
