"""Fleet rollout: one template change across N simulated gateways in waves gated on
their health, beside the same gateways synced all at once.

The hub (`hub.app.Hub`, insecure-dev on loopback, its own process on core 0) holds N
gateways with one worker agent on a board each (bench/seed.py). A load process on
core 1 runs N sidecars that answer every command as a real sidecar does and report a
woken agent's run with a model turn (bench/applying.py), so each gateway passes its
health gate on the evidence the gate asks for: the new generation applied, and a
check-in since.

A run POSTs /api/v1/rollouts with a templates change (a new SOUL.md on every agent) in
the default waves, a canary of one gateway, then 10 %, 50 % and 100 % of them, and
times it until the rollout is completed; each wave starts only once the last one's
gateways passed their gates. Per-wave times come from the hub's own records (the
last verdict of each wave), the hub's CPU from /proc over the same window. The same
change in one wave (no canary) shows what the waves themselves cost.

BASELINE: the same gateways' templates synced all at once, without a rollout: the
hub's template sync job (what POST /api/v1/gateways/{id}/templates/sync starts) on
every gateway at the same moment, in the hub process, so the API's rate limit for one
admin token (50 requests/s) does not pace it; timed until every agent has applied its
new generation. A sync queues the same ApplyAgent per agent, without the wake: nothing
waits for a check-in.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.applying import applying_fleet_main
from bench.harness import (
    LOAD_CORE,
    Child,
    Figure,
    Section,
    Sizes,
    cpu_percent,
    free_port,
    pin_to,
    proc_sample,
)
from bench.hubproc import ADMIN_TOKEN, HubAddress, start_hub, start_template_sync
from bench.seed import gateway_ids, seed
from hub.fleet import rollouts as ro
from hub.store.database import Connection, connect

POLL_S = 0.05
DONE_TIMEOUT_S = 600.0
# The API's defaults, spelled out: a canary of one, then 10 %, 50 % and 100 %.
WAVES: dict[str, Any] = {"canary": 1, "waves": list(ro.DEFAULT_PERCENTAGES)}
ONE_WAVE: dict[str, Any] = {"canary": 0, "waves": [100.0]}
ACTIVE = tuple(str(s) for s in ro.ACTIVE)


@dataclass
class Figures:
    waved: Figure  # the rollout in waves; baseline: the sync
    single: Figure  # the same change in one wave; baseline: the sync
    cpu: Figure  # hub CPU % during the rollout in waves; baseline: during the sync
    cpu_time: Figure  # hub CPU seconds for it; baseline: for the sync
    waves: list[Figure] = field(default_factory=list)  # each wave of the rollout

    def all(self) -> list[Figure]:
        return [self.waved, *self.waves, self.single, self.cpu, self.cpu_time]


def run(sizes: Sizes) -> Section:
    n = sizes.rollout_gateways
    section = Section("rollout", "Fleet rollout")
    sync = "template sync, all at once"
    percentages = "/".join(f"{p:g}" for p in WAVES["waves"])
    count = len(ro.plan_waves(gateway_ids(n), canary=WAVES["canary"], percentages=WAVES["waves"]))
    figures = Figures(
        Figure(
            f"template change to {n:,} gateways in {count} waves "
            f"(canary {WAVES['canary']}, {percentages} %)",
            "s",
            [],
            sync,
            note="until completed: every wave's gateways applied and checked in",
        ),
        Figure("same change in one wave (no canary)", "s", [], sync),
        Figure("hub CPU during the rollout", "% of a core", [], sync),
        Figure("hub CPU time, rollout in waves", "s", [], sync),
    )
    with tempfile.TemporaryDirectory(prefix="bench-rollout-") as tmp:
        data_dir = Path(tmp) / "hub"
        data_dir.mkdir()
        database = data_dir / "hub.sqlite3"
        agents = seed(database, gateways=n, agents_per_gateway=1)
        fleet: dict[str, dict[str, int]] = {}
        for agent in agents:
            fleet.setdefault(agent.gateway_id, {})[agent.gateway_agent_id] = 1  # seeded at 1
        address = HubAddress(free_port(), free_port())
        hub = start_hub(data_dir, address)
        try:
            sim = Child(
                applying_fleet_main,
                f"127.0.0.1:{address.link_port}",
                list(fleet.items()),
                name="bench-rollout-gateways",
            )
            try:
                sim.recv(120.0)
                _wait_connected(sim, n, 300.0)
                with _pinned(LOAD_CORE):
                    base = f"http://127.0.0.1:{address.http_port}"
                    asyncio.run(_measure(base, database, hub, sorted(fleet), sizes, figures))
                status = sim.ask("status", 30.0)
            finally:
                sim.stop()
        finally:
            hub.stop()
    section.figures += figures.all()
    section.notes.append(
        f"{n:,} gateways x 1 agent; {sizes.runs} runs of each; every command answered and "
        f"every wake's run reported with a model turn at once ({status['commands']:,} "
        f"commands, {status['runs']:,} runs in all): a real agent's model turn adds its "
        "own time to every wave"
    )
    return section


async def _measure(
    base: str,
    database: Path,
    hub: Child,
    gateway_ids: list[str],
    sizes: Sizes,
    figures: Figures,
) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    db = connect(database, readonly=True)
    try:
        async with aiohttp.ClientSession(base, headers=headers) as http:
            for index in range(sizes.runs):
                before = proc_sample(hub.pid)
                started = time.monotonic()
                rollout_id = await _start_rollout(http, f"bench run {index}", WAVES)
                await _until("the rollout in waves", _finished, db, rollout_id)
                after = proc_sample(hub.pid)
                figures.waved.runs.append(time.monotonic() - started)
                figures.cpu.runs.append(cpu_percent(before, after))
                figures.cpu_time.runs.append(after.cpu_s - before.cpu_s)
                for wave, (size, seconds) in enumerate(_wave_times(db, rollout_id)):
                    if len(figures.waves) <= wave:
                        what = f"{size:,} gateway{'s' if size > 1 else ''}"
                        figures.waves.append(Figure(f"wave {wave + 1} ({what})", "s", []))
                    figures.waves[wave].runs.append(seconds)

                started = time.monotonic()
                rollout_id = await _start_rollout(http, f"bench run {index}, one wave", ONE_WAVE)
                await _until("the rollout in one wave", _finished, db, rollout_id)
                figures.single.runs.append(time.monotonic() - started)

                generation = _generation(db)
                before = proc_sample(hub.pid)
                started = time.monotonic()
                queued = await asyncio.to_thread(start_template_sync, hub, gateway_ids)
                if queued["jobs"] != len(gateway_ids):
                    raise RuntimeError(f"the template sync started {queued['jobs']} jobs")
                await _until("the template sync", _applied, db, generation + 1)
                after = proc_sample(hub.pid)
                seconds = time.monotonic() - started
                figures.waved.baseline_runs.append(seconds)
                figures.single.baseline_runs.append(seconds)
                figures.cpu.baseline_runs.append(cpu_percent(before, after))
                figures.cpu_time.baseline_runs.append(after.cpu_s - before.cpu_s)
    finally:
        db.close()


async def _start_rollout(http: aiohttp.ClientSession, name: str, plan: dict[str, Any]) -> str:
    body = {
        "name": name,
        "selector": "",
        "agents": "all",  # the seeded agents are workers on a board
        "change": {"kind": "templates", "soul_template": f"# Soul\n\nYou are {name}.\n"},
        **plan,
    }
    async with http.post("/api/v1/rollouts", json=body) as response:
        answer = await response.json()
        if response.status != 201:
            raise RuntimeError(f"POST /api/v1/rollouts answered {response.status}: {answer}")
    return str(answer["id"])


async def _until(what: str, done: Callable[..., bool], *args: Any) -> None:
    started = time.monotonic()
    while not done(*args):
        if time.monotonic() - started > DONE_TIMEOUT_S:
            raise TimeoutError(f"{what}: not done within {DONE_TIMEOUT_S:.0f} s")
        await asyncio.sleep(POLL_S)


def _finished(db: Connection, rollout_id: str) -> bool:
    """Whether the rollout is over; one that did not complete fails the benchmark."""
    status, reason = db.execute(
        "SELECT status, reason FROM rollouts WHERE id = ?", (rollout_id,)
    ).fetchone()
    if status in ACTIVE:
        return False
    if status != str(ro.Status.COMPLETED):
        raise RuntimeError(f"rollout {rollout_id} ended {status}: {reason}")
    unhealthy = db.execute(
        "SELECT COUNT(*) FROM rollout_targets WHERE rollout_id = ? AND state != 'healthy'",
        (rollout_id,),
    ).fetchone()[0]
    if unhealthy:
        raise RuntimeError(f"rollout {rollout_id} completed with {unhealthy} gateway(s) unhealthy")
    return True


def _wave_times(db: Connection, rollout_id: str) -> list[tuple[int, float]]:
    """Each wave's size and time, from the hub's records: from the previous wave's last
    verdict (the rollout's creation for the first) to its own last one."""
    (created_at,) = db.execute(
        "SELECT created_at FROM rollouts WHERE id = ?", (rollout_id,)
    ).fetchone()
    rows = db.execute(
        "SELECT wave, COUNT(*), MAX(decided_at) FROM rollout_targets WHERE rollout_id = ? "
        "GROUP BY wave ORDER BY wave",
        (rollout_id,),
    ).fetchall()
    times, since = [], float(created_at)
    for _, size, decided in rows:
        times.append((int(size), float(decided) - since))
        since = float(decided)
    return times


def _generation(db: Connection) -> int:
    low, high = db.execute(
        "SELECT MIN(lifecycle_generation), MAX(applied_generation) FROM agents"
    ).fetchone()
    if low != high:
        raise RuntimeError(f"agents are between generations ({low} to {high}) before the sync")
    return int(low)


def _applied(db: Connection, generation: int) -> bool:
    waiting = db.execute(
        "SELECT COUNT(*) FROM agents WHERE applied_generation < ?", (generation,)
    ).fetchone()[0]
    return int(waiting) == 0


def _wait_connected(sim: Child, total: int, timeout_s: float) -> None:
    started = time.monotonic()
    while (connected := sim.ask("status", 30.0)["connected"]) < total:
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"{connected} of {total} gateways connected after {timeout_s:.0f} s")
        time.sleep(0.2)


@contextlib.contextmanager
def _pinned(core: int) -> Iterator[None]:
    """This process on `core` for the block (the hub has the other to itself)."""
    before = os.sched_getaffinity(0)
    pin_to(core)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)
