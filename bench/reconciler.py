"""Reconciler: time to process N due check-in deadlines, and deadline -> wake-queued delay.

Real agent rows (woken 30 s ago, not checked in, sidecar connected), the real
`Reconciler` (deadline heap, lifecycle step, WakeAgent into the outbox) on a real
SQLite file at the hub's default commit interval. Two agents per gateway, so no
gateway is blamed as a whole ("more than half missed") and every deadline ends in a wake.

BASELINE: the same rows written by hand: read the agent, update it, take the gateway's
next sequence, insert a prebuilt WakeAgent; 1,000 agents per transaction, back to back.
Delay BASELINE: an asyncio timer per deadline that commits the same bare write.

On PostgreSQL (the tests' throwaway server on loopback): the same due deadlines, the
hub's real path on its PostgreSQL engine, beside bare batched psycopg writing the same
rows a statement per kind for each 1,000 agents (the gateway rows locked for their
sequence numbers, as the hub does): commands queued per second on either.
"""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
import time
from pathlib import Path

import psycopg

from bench.harness import Figure, Section, Sizes, Target, percentile, wait_until
from bench.hubproc import COMMIT_INTERVAL_S
from bench.seed import SeededAgent, seed
from hub.lifecycle.decisions import Policy
from hub.lifecycle.reconciler import DEADLINE_BATCH, Reconciler
from hub.store.database import Database, connect
from hub.store.engines import engine_for
from hub.store.gateways import GatewayStore
from hub.store.outbox import OUTBOX
from protos import link_pb2 as pb
from tests.postgres_server import PostgresServer, PostgresUnavailable

CHECKIN_DEADLINE_S = 30.0
POSTGRES_DEADLINES = 20_000  # at most, on PostgreSQL: a rate, not the 100,000 again
DELAY_LEAD_S = 3.0  # setup finishes before the first deadline
DELAY_SPREAD_S = 2.0  # deadlines spread evenly over this window


async def run(sizes: Sizes) -> Section:
    section = Section("reconciler", "Reconciler")
    count = sizes.reconciler_deadlines
    throughput = Figure(
        f"{count:,} due deadlines -> wakes queued",
        "s",
        [],
        f"bare SQL, {DEADLINE_BATCH}/tx",
    )
    runs = 1 if count >= 50_000 else sizes.runs
    with tempfile.TemporaryDirectory(prefix="bench-reconciler-") as tmp:
        for i in range(runs):
            path = Path(tmp) / f"throughput-{i}.sqlite3"
            now = time.time()
            agents = seed(
                path, gateways=count // 2, agents_per_gateway=2, deadlines=[now - 1] * count
            )
            throughput.runs.append(await _process_all(path, agents))
            bare_path = Path(tmp) / f"bare-{i}.sqlite3"
            agents = seed(
                bare_path, gateways=count // 2, agents_per_gateway=2, deadlines=[now - 1] * count
            )
            throughput.baseline_runs.append(_bare_process_all(bare_path, agents))
        rate = Figure(
            "deadlines processed",
            "deadlines/s",
            [count / s for s in throughput.runs],
            "bare SQL",
            [count / s for s in throughput.baseline_runs],
        )
        delay = Figure(
            f"deadline -> wake queued (durable), p99 of {sizes.reconciler_spread:,} over "
            f"{DELAY_SPREAD_S:g} s",
            "ms",
            [],
            "asyncio timer + bare commit",
            target=Target("<=", 100.0),
        )
        median_delay = Figure(
            "deadline -> wake queued, p50", "ms", [], "asyncio timer + bare commit"
        )
        for i in range(sizes.runs):
            delays = await _delays(Path(tmp) / f"delay-{i}.sqlite3", sizes.reconciler_spread)
            bare = await _bare_delays(
                Path(tmp) / f"delay-bare-{i}.sqlite3", sizes.reconciler_spread
            )
            delay.runs.append(percentile(delays, 99) * 1000)
            delay.baseline_runs.append(percentile(bare, 99) * 1000)
            median_delay.runs.append(percentile(delays, 50) * 1000)
            median_delay.baseline_runs.append(percentile(bare, 50) * 1000)
    section.figures += [throughput, rate, delay, median_delay]
    section.figures += await _on_postgresql(min(count, POSTGRES_DEADLINES), section)
    if runs == 1:
        section.notes.append(f"{count:,} deadlines: one run (it is the long one)")
    section.notes.append(f"commit interval {COMMIT_INTERVAL_S:g} s (hub default)")
    return section


def _reconciler(
    path: Path, on_queued: object = None, *, url: str = ""
) -> tuple[Database, Reconciler]:
    if url:
        db = Database(commit_interval_s=COMMIT_INTERVAL_S, engine=engine_for(url))
    else:
        db = Database(path, COMMIT_INTERVAL_S)
    db.open()
    policy = Policy(
        checkin_deadline_s=CHECKIN_DEADLINE_S,
        restart_grace_windows=0.0,  # the hub started long ago; no restart grace in the way
        hub_started_at=time.time() - 3600,
    )
    if callable(on_queued):
        db.listen(OUTBOX, on_queued)
    return db, Reconciler(db, GatewayStore(db), policy)


async def _connect_all(reconciler: Reconciler, agents: list[SeededAgent]) -> None:
    """Every sidecar's stream is up (the reconciler only wakes agents it can reach)."""
    gateways = sorted({a.gateway_id for a in agents})
    for start in range(0, len(gateways), 5_000):
        await asyncio.gather(
            *(reconciler.link_changed(g, True) for g in gateways[start : start + 5_000])
        )


WAKES = "SELECT COUNT(*) FROM commands WHERE kind = 'wake_agent'"


def _wakes(path: Path) -> int:
    conn = connect(path, readonly=True)
    try:
        return int(conn.execute(WAKES).fetchone()[0])
    finally:
        conn.close()


def _wakes_pg(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(WAKES).fetchone()
        return int(row[0]) if row else 0


async def _process_all(path: Path, agents: list[SeededAgent], *, url: str = "") -> float:
    db, reconciler = _reconciler(path, url=url)
    try:
        if url:  # a shared database: the hub judges the gateways it owns, as its streams do
            await reconciler.keep_ownership()
        await _connect_all(reconciler, agents)
        started = time.monotonic()
        await reconciler.start()
        await wait_until(
            lambda: (_wakes_pg(url) if url else _wakes(path)) >= len(agents),
            600.0,
            "all wakes queued",
        )
        return time.monotonic() - started
    finally:
        await reconciler.stop()
        await db.close()


def _wake_payload() -> bytes:
    return pb.Command(
        wake_agent=pb.WakeAgent(agent_id="mc-x", generation=1, message="x" * 400, attempt=2)
    ).SerializeToString()


def _bare_write(conn: sqlite3.Connection, agent: SeededAgent, now: float, payload: bytes) -> None:
    conn.execute("SELECT * FROM agents WHERE id = ?", (agent.id,)).fetchone()
    conn.execute(
        "UPDATE agents SET phase = 'waking', wake_attempts = 2, checkin_deadline_at = ?, "
        "updated_at = ? WHERE id = ?",
        (now + CHECKIN_DEADLINE_S, now, agent.id),
    )
    sequence = conn.execute(
        "UPDATE gateways SET next_sequence = next_sequence + 1 WHERE id = ? "
        "RETURNING next_sequence - 1",
        (agent.gateway_id,),
    ).fetchone()[0]
    conn.execute(
        "INSERT INTO commands (gateway_id, sequence, kind, agent_id, generation, payload, "
        "created_at) VALUES (?, ?, 'wake_agent', ?, 1, ?, ?)",
        (agent.gateway_id, sequence, agent.gateway_agent_id, payload, now),
    )


def _bare_process_all(path: Path, agents: list[SeededAgent]) -> float:
    conn = connect(path)
    payload = _wake_payload()
    started = time.monotonic()
    try:
        for start in range(0, len(agents), DEADLINE_BATCH):
            now = time.time()
            conn.execute("BEGIN IMMEDIATE")
            for agent in agents[start : start + DEADLINE_BATCH]:
                _bare_write(conn, agent, now, payload)
            conn.execute("COMMIT")
        return time.monotonic() - started
    finally:
        conn.close()


async def _on_postgresql(count: int, section: Section) -> list[Figure]:
    try:
        server = await asyncio.to_thread(PostgresServer().start)
    except PostgresUnavailable as exc:
        section.notes.append(f"PostgreSQL figures skipped: {exc}")
        return []
    figure = Figure(
        f"{count:,} due deadlines -> wakes queued on PostgreSQL",
        "commands/s",
        [],
        f"bare batched psycopg, {DEADLINE_BATCH}/tx",
    )
    try:
        now = time.time()
        for name in ("real", "bare"):
            url = server.url(server.create_database())
            agents = seed(
                Path(),
                gateways=count // 2,
                agents_per_gateway=2,
                deadlines=[now - 1] * count,
                database=url,
            )
            if name == "real":
                figure.runs.append(count / await _process_all(Path(), agents, url=url))
            else:
                seconds = await asyncio.to_thread(_bare_process_all_pg, url, agents)
                figure.baseline_runs.append(count / seconds)
        section.notes.append(
            "PostgreSQL: a throwaway server on loopback with fsync off (SQL cost, not disk); "
            f"{count:,} deadlines, one run"
        )
        return [figure]
    finally:
        await asyncio.to_thread(server.stop)


def _bare_process_all_pg(url: str, agents: list[SeededAgent]) -> float:
    payload = _wake_payload()
    with psycopg.connect(url, autocommit=True) as conn:
        started = time.monotonic()
        for start in range(0, len(agents), DEADLINE_BATCH):
            batch = agents[start : start + DEADLINE_BATCH]
            ids = [a.id for a in batch]
            now = time.time()
            with conn.transaction():
                conn.execute("SELECT * FROM agents WHERE id = ANY(%s)", (ids,)).fetchall()
                conn.execute(
                    "UPDATE agents SET phase = 'waking', wake_attempts = 2, "
                    "checkin_deadline_at = %s, updated_at = %s WHERE id = ANY(%s)",
                    (now + CHECKIN_DEADLINE_S, now, ids),
                )
                taken: dict[str, int] = {}
                for gateway_id, next_sequence in conn.execute(
                    "UPDATE gateways SET next_sequence = gateways.next_sequence + n.count "
                    "FROM (SELECT g, COUNT(*) AS count FROM unnest(%s::text[]) AS g GROUP BY g) "
                    "AS n WHERE gateways.id = n.g RETURNING gateways.id, "
                    "gateways.next_sequence - n.count",
                    ([a.gateway_id for a in batch],),
                ).fetchall():
                    taken[gateway_id] = next_sequence
                rows = []
                for agent in batch:
                    rows.append((agent.gateway_id, taken[agent.gateway_id], agent.gateway_agent_id))
                    taken[agent.gateway_id] += 1  # two agents a gateway: consecutive numbers
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO commands (gateway_id, sequence, kind, agent_id, generation, "
                        "payload, created_at) VALUES (%s, %s, 'wake_agent', %s, 1, %s, %s)",
                        [(g, seq, a, payload, now) for g, seq, a in rows],
                    )
        return time.monotonic() - started


def _spread(count: int) -> list[float]:
    first = time.time() + DELAY_LEAD_S
    return [first + DELAY_SPREAD_S * i / count for i in range(count)]


async def _delays(path: Path, count: int) -> list[float]:
    deadlines = _spread(count)
    agents = seed(path, gateways=count, agents_per_gateway=1, deadlines=deadlines)
    deadline_of = {a.gateway_id: at for a, at in zip(agents, deadlines, strict=True)}
    delays: list[float] = []

    def queued(gateway_id: str) -> None:
        delays.append(time.time() - deadline_of[gateway_id])

    db, reconciler = _reconciler(path, queued)
    try:
        await _connect_all(reconciler, agents)
        await reconciler.start()
        await wait_until(lambda: len(delays) >= count, 120.0, "all wakes queued")
        return delays
    finally:
        await reconciler.stop()
        await db.close()


async def _bare_delays(path: Path, count: int) -> list[float]:
    deadlines = _spread(count)
    agents = seed(path, gateways=count, agents_per_gateway=1, deadlines=deadlines)
    conn = connect(path)
    payload = _wake_payload()
    delays: list[float] = []
    try:
        for agent, at in zip(agents, deadlines, strict=True):
            await asyncio.sleep(max(0.0, at - time.time()))
            conn.execute("BEGIN IMMEDIATE")
            _bare_write(conn, agent, time.time(), payload)
            conn.execute("COMMIT")
            delays.append(time.time() - at)
        return delays
    finally:
        conn.close()
