"""`ConfigWatcher`: notice hand edits of openclaw.json and report (and undo) managed drift.

The gateway replaces openclaw.json by rename on every write, so the watch is on the
directory, filtered to the file's name. Each burst of changes is debounced, the file is
re-read and its managed entries are diffed against the last valid snapshot. A managed
entry removed by hand is written back when the policy says so, and only if the file
parses: an invalid file is reported and never written over.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import watchfiles

from missioncontrol.log import get_logger
from missioncontrol.tasks import start_long_lived
from sidecar.openclaw_config import (
    ConfigInvalid,
    Drift,
    DriftKind,
    Entry,
    Restored,
    diff_managed,
    is_newer,
    read_config,
    restore_entries,
)

log = get_logger("sidecar.config_watch")


@dataclass(frozen=True)
class ConfigReport:
    """openclaw.json as the sidecar last saw it; `drift` lists what changed since before."""

    valid: bool
    error: str = ""
    last_touched_version: str = ""
    stamp_changed: bool = False  # a different OpenClaw version (or a person) touched the file
    stamp_newer_than_gateway: bool = False  # the installed gateway would refuse to start
    drift: tuple[Drift, ...] = ()
    present: frozenset[str] = field(default_factory=frozenset)  # managed ids in the file
    # Every roster entry as (id, name, workspace); None when the file could not be read.
    roster: tuple[RosterEntry, ...] | None = None
    observed_at: float = field(default_factory=time.time, compare=False)


@dataclass(frozen=True)
class RosterEntry:
    """One agent of openclaw.json, as much as an admin needs to adopt it."""

    agent_id: str
    name: str = ""
    workspace: str = ""


def roster_of(entries: Mapping[str, Mapping[str, Any]]) -> tuple[RosterEntry, ...]:
    def text(value: object) -> str:
        return value if isinstance(value, str) else ""

    roster = []
    for agent_id, entry in sorted(entries.items()):
        identity = entry.get("identity")
        name = text(entry.get("name")) or (
            text(identity.get("name")) if isinstance(identity, Mapping) else ""
        )
        roster.append(RosterEntry(agent_id, name, text(entry.get("workspace"))))
    return tuple(roster)


ReportCallback = Callable[[ConfigReport], None]


class ConfigWatcher:
    def __init__(
        self,
        config_path: Path,
        on_report: ReportCallback,
        *,
        restore_removed: bool = True,
        debounce_ms: int = 150,
        gateway_version: str = "",
        missing_dir_poll_s: float = 1.0,
    ) -> None:
        self._path = config_path
        self._on_report = on_report
        self._restore_removed = restore_removed
        self._debounce_ms = debounce_ms
        self._gateway_version = gateway_version
        self._missing_dir_poll_s = missing_dir_poll_s
        self._managed: frozenset[str] | None = None  # None: not told yet
        self._known: dict[str, Entry] = {}  # managed entries of the last valid file
        self._known_stamp: str | None = None
        self._pending_restore: dict[str, Entry] = {}
        self._last_report: ConfigReport | None = None
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._armed = asyncio.Event()  # the directory watch is in place
        self._task: asyncio.Task[None] | None = None
        self._side_tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------ inputs

    def set_managed(self, agent_ids: Iterable[str]) -> None:
        """The agent ids this sidecar manages; only these are restored or reported removed."""
        self._managed = frozenset(agent_ids)
        self._pending_restore = {
            i: e for i, e in self._pending_restore.items() if i in self._managed
        }

    def set_gateway_version(self, version: str) -> None:
        """The installed gateway's version; restores never stamp the file above it."""
        self._gateway_version = version
        if version and self._pending_restore and self._task is not None:
            self._schedule_check()

    @property
    def last_report(self) -> ConfigReport | None:
        return self._last_report

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> ConfigReport:
        """Start watching, then take the first snapshot (always reported)."""
        self._stop.clear()
        self._armed.clear()
        self._task = start_long_lived(self._watch(), name="config-watch", log=log)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                await self._armed.wait()
        return await self.check()

    async def stop(self) -> None:
        self._stop.set()
        tasks = [t for t in (self._task, *self._side_tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None

    async def _pause(self) -> None:
        """Wait one poll interval, or less if stopping."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._missing_dir_poll_s):
                await self._stop.wait()

    async def _watch(self) -> None:
        directory = self._path.parent
        while not self._stop.is_set():
            if not directory.is_dir():
                # Nothing to watch until the gateway (or operator) creates its state dir.
                self._armed.set()
                await self._pause()
                continue
            try:
                await self._watch_directory(directory)
            except Exception:
                log.exception("config.watch.failed", path=str(self._path))
                await self._pause()

    async def _watch_directory(self, directory: Path) -> None:
        name = self._path.name
        changes = watchfiles.awatch(
            directory,
            watch_filter=lambda _change, path: Path(path).name == name,
            debounce=self._debounce_ms,
            step=min(50, self._debounce_ms),
            stop_event=self._stop,
            recursive=False,
        )
        next_batch = asyncio.ensure_future(anext(changes))
        try:
            # The generator's first step creates the inotify watch before it awaits
            # anything, so one turn of the loop arms it; then catch up on what changed
            # before it was armed.
            await asyncio.sleep(0)
            self._armed.set()
            await self.check()
            while True:
                try:
                    await next_batch
                except StopAsyncIteration:
                    return  # stop requested, or the directory went away: re-arm
                await self.check()
                next_batch = asyncio.ensure_future(anext(changes))
        finally:
            next_batch.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await next_batch
            await changes.aclose()

    def _schedule_check(self) -> None:
        task = asyncio.get_running_loop().create_task(self._check_logged())
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    async def _check_logged(self) -> None:
        try:
            await self.check()
        except Exception:
            log.exception("config.watch.failed", path=str(self._path))

    # ------------------------------------------------------------ one pass

    async def check(self) -> ConfigReport:
        """Re-read the file, diff, restore where policy says, report; returns the report."""
        async with self._lock:
            report = await self._check()
        previous = self._last_report
        self._last_report = report
        if previous is None or report.drift or _state(previous) != _state(report):
            try:
                self._on_report(report)
            except Exception:
                log.exception("config.report_callback.failed")
        return report

    async def _check(self) -> ConfigReport:
        config = await asyncio.to_thread(read_config, self._path)
        if isinstance(config, ConfigInvalid):
            log.warning("config.invalid", path=str(self._path), error=str(config))
            return ConfigReport(
                valid=False,
                error=str(config),
                last_touched_version=self._known_stamp or "",
                present=frozenset(self._known),
            )
        current = config.managed_entries()
        first = self._known_stamp is None
        # Judged on the file as read: a restore below may lower a newer stamp.
        stamp_changed = not first and config.last_touched_version != self._known_stamp
        drift: list[Drift] = []
        if not first:
            drift = self._reportable(diff_managed(self._known, current).drift())
            for item in drift:
                if item.kind is DriftKind.REMOVED and self._restorable(item.agent_id):
                    self._pending_restore[item.agent_id] = self._known[item.agent_id]
        self._pending_restore = {i: e for i, e in self._pending_restore.items() if i not in current}
        if self._pending_restore:
            restored, note = await self._restore(config.text)
            if restored is not None:
                config = restored.config
                current = config.managed_entries()
                drift += [
                    Drift(i, DriftKind.RESTORED, "entry written back to openclaw.json")
                    for i in restored.agent_ids
                ]
            elif note:
                drift = [
                    Drift(d.agent_id, d.kind, f"{d.detail}; not restored: {note}")
                    if d.kind is DriftKind.REMOVED and d.agent_id in self._pending_restore
                    else d
                    for d in drift
                ]
        stamp = config.last_touched_version
        self._known = dict(current)
        self._known_stamp = stamp
        for item in drift:
            log.info(
                "config.drift", agent_id=item.agent_id, kind=item.kind.name, detail=item.detail
            )
        if stamp_changed:
            log.info("config.stamp.changed", last_touched_version=stamp)
        return ConfigReport(
            valid=True,
            last_touched_version=stamp,
            stamp_changed=stamp_changed,
            stamp_newer_than_gateway=bool(
                stamp and self._gateway_version and is_newer(stamp, self._gateway_version)
            ),
            drift=tuple(drift),
            present=frozenset(current),
            roster=roster_of(config.entries),
        )

    def _reportable(self, drift: Iterable[Drift]) -> list[Drift]:
        """Removed/changed: only managed ids. Added: only ids the sidecar did not create."""
        managed = self._managed
        if managed is None:
            return list(drift)
        return [d for d in drift if (d.kind is DriftKind.ADDED) != (d.agent_id in managed)]

    def _restorable(self, agent_id: str) -> bool:
        return (
            self._restore_removed
            and self._managed is not None
            and agent_id in self._managed
            and agent_id in self._known
        )

    async def _restore(self, based_on_text: str) -> tuple[Restored | None, str]:
        entries: Mapping[str, Entry] = dict(self._pending_restore)
        result = await asyncio.to_thread(
            restore_entries,
            self._path,
            entries,
            installed_version=self._gateway_version,
            expected_text=based_on_text,
        )
        if isinstance(result, Restored):
            self._pending_restore.clear()
            log.info("config.restored", agent_ids=list(result.agent_ids))
            return result, ""
        note = str(result) if isinstance(result, ConfigInvalid) else result.reason
        log.warning("config.restore.skipped", agent_ids=sorted(entries), reason=note)
        return None, note


def _state(report: ConfigReport) -> tuple[object, ...]:
    """The parts of a report worth telling the hub about again when they change."""
    return (
        report.valid,
        report.error,
        report.last_touched_version,
        report.stamp_newer_than_gateway,
        report.present,
        report.roster,
    )
