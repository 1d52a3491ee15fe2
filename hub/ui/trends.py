"""Fleet counts over time: what the overview's trends and charts are drawn from.

The store holds each thing's present state, not its history, so the dashboard samples
the fleet's counts (agents per status, gateways connected, tasks per status) every
`SAMPLE_INTERVAL_S` into `fleet_samples`, and keeps `KEEP_SAMPLES_S` of them. A trend
compares now with the sample nearest to a day ago; the chart draws the samples.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

from hub.provisioning.agents import agent_status_counts_in
from hub.store.database import Database
from hub.store.gateways import gateway_counts_in
from hub.tasks import task_status_counts_in
from missioncontrol.log import get_logger

log = get_logger("hub.ui.trends")

SAMPLE_INTERVAL_S = 300.0
KEEP_SAMPLES_S = 35 * 86400.0
DAY_S = 86400.0
# A sample this far from the moment asked for does not stand for it.
NEAREST_WITHIN_S = 3 * 3600.0

Counts = dict[str, int]


# ------------------------------------------------------------------------ store


def fleet_counts_in(conn: sqlite3.Connection) -> Counts:
    """The fleet's counts now, keyed "agents.<status>", "gateways.<what>", "tasks.<status>"."""
    counts: Counts = {}
    for status, count in agent_status_counts_in(conn).items():
        counts[f"agents.{status}"] = count
    for what, count in gateway_counts_in(conn).items():
        counts[f"gateways.{what}"] = count
    for status, count in task_status_counts_in(conn).get("*", {}).items():
        counts[f"tasks.{status}"] = count
    return counts


def record_sample_in(conn: sqlite3.Connection, at: float, counts: Counts) -> None:
    conn.execute(
        "INSERT INTO fleet_samples (at, counts) VALUES (?, ?) "
        "ON CONFLICT (at) DO UPDATE SET counts = excluded.counts",
        (at, json.dumps(counts, separators=(",", ":"), sort_keys=True)),
    )
    conn.execute("DELETE FROM fleet_samples WHERE at < ?", (at - KEEP_SAMPLES_S,))


def sample_near_in(conn: sqlite3.Connection, at: float) -> tuple[float, Counts] | None:
    """The sample nearest to `at` (within NEAREST_WITHIN_S), or None."""
    rows = [
        conn.execute(
            "SELECT at, counts FROM fleet_samples WHERE at <= ? ORDER BY at DESC LIMIT 1", (at,)
        ).fetchone(),
        conn.execute(
            "SELECT at, counts FROM fleet_samples WHERE at > ? ORDER BY at LIMIT 1", (at,)
        ).fetchone(),
    ]
    found = [(float(r[0]), json.loads(r[1])) for r in rows if r is not None]
    found = [f for f in found if abs(f[0] - at) <= NEAREST_WITHIN_S]
    return min(found, key=lambda f: abs(f[0] - at)) if found else None


def samples_in(
    conn: sqlite3.Connection, since: float, until: float, points: int
) -> list[tuple[float, Counts]]:
    """At most `points` samples from [since, until]: the last of each equal slice of time."""
    rows = conn.execute(
        "SELECT at, counts FROM fleet_samples WHERE at >= ? AND at <= ? ORDER BY at",
        (since, until),
    ).fetchall()
    slice_s = max((until - since) / max(points, 1), 1e-9)
    kept: dict[int, tuple[float, Counts]] = {}
    for at, counts in rows:
        kept[int((float(at) - since) // slice_s)] = (float(at), json.loads(counts))
    return [kept[k] for k in sorted(kept)]


# ------------------------------------------------------------------------ trend


@dataclass(frozen=True)
class Trend:
    now: int
    then: int | None  # None: no sample from then yet

    @property
    def change(self) -> int | None:
        return None if self.then is None else self.now - self.then


def trend(now: Counts, then: Counts | None, key: str) -> Trend:
    return Trend(now.get(key, 0), None if then is None else then.get(key, 0))


# ----------------------------------------------------------------------- sampler


class FleetSampler:
    """Samples the fleet's counts every `interval_s` (the first at start)."""

    def __init__(
        self,
        db: Database,
        *,
        clock: Callable[[], float],
        interval_s: float = SAMPLE_INTERVAL_S,
    ) -> None:
        self.db = db
        self.clock = clock
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    async def sample(self) -> Counts:
        counts = await self.db.read(fleet_counts_in)
        at = self.clock()
        await self.db.write(lambda conn: record_sample_in(conn, at, counts))
        return counts

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="ui-fleet-sampler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _loop(self) -> None:
        try:
            while True:
                try:
                    await self.sample()
                except Exception as exc:  # the next sample may well work; say so and go on
                    log.error("ui.sample.failed", error=str(exc))
                await asyncio.sleep(self.interval_s)
        except asyncio.CancelledError:
            raise
        finally:
            log.info("ui.sampler.stopped")
