"""Hub ingest: heartbeats/s from the link into SQLite (and PostgreSQL), and
beat-to-durable latency.

Throughput: `Reconciler.heartbeats` (the hub's report path for a HeartbeatBatch) on
real agent rows, the real group-committing `Database` at the hub's default commit
interval, offered more than it can take. BASELINE: a bare batched
`UPDATE agents SET last_seen_at = ? WHERE id = ?` loop, one transaction per batch of
the same size, on the same file.

End to end: real sidecar relays (`HeartbeatRelay` + `LinkClient` + `LocalState`) in
this process, the real hub in its own; a beat's latency runs from `relay.record`
(what the agent API calls) to the HeartbeatAck the hub sends once it is committed.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path

import psycopg

from bench.harness import (
    LOAD_CORE,
    Figure,
    Section,
    Sizes,
    Target,
    free_port,
    percentile,
    pin_to,
    wait_until,
)
from bench.hubproc import COMMIT_INTERVAL_S, HubAddress, start_hub
from bench.seed import SeededAgent, seed
from bench.sidecars import RelaySidecar
from hub.lifecycle.decisions import Policy
from hub.lifecycle.reconciler import Reconciler
from hub.store.database import Database, connect
from hub.store.engines import engine_for
from hub.store.gateways import GatewayStore
from protos import link_pb2 as pb
from protos.contract import timestamp
from tests.postgres_server import PostgresServer, PostgresUnavailable

AGENTS_PER_GATEWAY = 10
# Beats offered per commit interval: above what one writer takes, so the figure is the
# ingest path's capacity, not the offered load. (60,000 was, while every batch was its
# own job; since a commit writes every waiting batch as one, it took them all.)
OFFERED_BEATS = 200_000
E2E_BEAT_INTERVAL_S = 5.0


async def run(sizes: Sizes) -> Section:
    section = Section("ingest", "Hub ingest")
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        path = Path(tmp) / "hub.sqlite3"
        agents = seed(path, gateways=sizes.ingest_gateways, agents_per_gateway=AGENTS_PER_GATEWAY)
        by_gateway = _by_gateway(agents)
        real = Figure(
            f"Reconciler.heartbeats, {len(agents):,} agents",
            "beats/s",
            [],
            "bare batched UPDATE",
            target=Target(">=", 0.5, on="ratio"),
        )
        commits = Figure("group commits under that load", "commits/s", [], target=Target("<=", 1.1))
        for _ in range(sizes.runs):
            beats_s, commits_s, per_commit = await _real_ingest(
                path, by_gateway, sizes.ingest_duration_s, _submitters(sizes)
            )
            real.runs.append(beats_s)
            commits.runs.append(commits_s)
            real.baseline_runs.append(_bare_ingest(path, agents, max(per_commit, 10)))
        section.figures += [real, commits]
        section.notes.append(
            f"commit interval {COMMIT_INTERVAL_S:g} s (hub default); "
            f"{_submitters(sizes)} batches of {AGENTS_PER_GATEWAY} beats in flight per gateway"
        )
    section.figures += await _on_postgresql(sizes, section)
    section.figures.append(await _end_to_end(sizes))
    return section


async def _on_postgresql(sizes: Sizes, section: Section) -> list[Figure]:
    """The same ingest on a real PostgreSQL on loopback (the tests' throwaway server),
    beside bare batched psycopg: one transaction per batch, one statement each."""
    try:
        server = await asyncio.to_thread(PostgresServer().start)
    except PostgresUnavailable as exc:
        section.notes.append(f"PostgreSQL figures skipped: {exc}")
        return []
    try:
        url = server.url(server.create_database())
        agents = seed(
            Path(),
            gateways=sizes.ingest_gateways,
            agents_per_gateway=AGENTS_PER_GATEWAY,
            database=url,
        )
        by_gateway = _by_gateway(agents)
        real = Figure(
            f"Reconciler.heartbeats on PostgreSQL, {len(agents):,} agents",
            "beats/s",
            [],
            "bare batched psycopg",
        )
        commits = Figure("group commits on PostgreSQL under that load", "commits/s", [])
        for _ in range(1 if sizes.quick else sizes.runs):  # quick: the figure, not its spread
            beats_s, commits_s, per_commit = await _real_ingest(
                url, by_gateway, sizes.ingest_duration_s, _submitters(sizes)
            )
            real.runs.append(beats_s)
            commits.runs.append(commits_s)
            real.baseline_runs.append(
                await asyncio.to_thread(_bare_ingest_pg, url, agents, max(per_commit, 10))
            )
        section.notes.append(
            "PostgreSQL: a throwaway server on loopback with fsync off (SQL cost, not disk)"
        )
        return [real, commits]
    finally:
        await asyncio.to_thread(server.stop)


def _by_gateway(agents: list[SeededAgent]) -> dict[str, list[SeededAgent]]:
    by_gateway: dict[str, list[SeededAgent]] = {}
    for agent in agents:
        by_gateway.setdefault(agent.gateway_id, []).append(agent)
    return by_gateway


def _submitters(sizes: Sizes) -> int:
    return max(1, OFFERED_BEATS // (sizes.ingest_gateways * AGENTS_PER_GATEWAY))


async def _real_ingest(
    where: Path | str, by_gateway: dict[str, list[SeededAgent]], duration_s: float, submitters: int
) -> tuple[float, float, int]:
    """`where`: the SQLite file, or a PostgreSQL URL."""
    engine = engine_for(where) if isinstance(where, str) else None
    db = Database(where if engine is None else None, COMMIT_INTERVAL_S, engine=engine)
    db.open()
    reconciler = Reconciler(db, GatewayStore(db), Policy(hub_started_at=time.time()))
    done = 0
    stop_at = 0.0

    async def submitter(gateway_id: str, members: list[SeededAgent]) -> None:
        nonlocal done
        batch_id = 0
        while time.monotonic() < stop_at:
            batch_id += 1
            stamp = timestamp()
            batch = pb.HeartbeatBatch(batch_id=batch_id)
            for agent in members:
                batch.beats.add(agent_id=agent.gateway_agent_id, observed_at=stamp)
            await reconciler.heartbeats(gateway_id, batch)
            done += len(members)

    try:
        # A short warm-up commit, then the measured window.
        await reconciler.heartbeats(next(iter(by_gateway)), pb.HeartbeatBatch())
        commits_before = db.stats.commits
        started = time.monotonic()
        stop_at = started + duration_s
        await asyncio.gather(
            *(
                submitter(gateway_id, members)
                for gateway_id, members in by_gateway.items()
                for _ in range(submitters)
            )
        )
        # Every batch submitted before the end counts, and so does the time to commit it.
        elapsed = time.monotonic() - started
        commits = db.stats.commits - commits_before
    finally:
        await db.close()
    per_commit = done // max(commits, 1)
    return done / elapsed, commits / elapsed, per_commit


def _bare_ingest(path: Path, agents: list[SeededAgent], per_commit: int) -> float:
    conn = connect(path)
    try:
        total = min(len(agents) * 5, 200_000)
        ids = [a.id for a in agents]
        started = time.perf_counter()
        written = 0
        while written < total:
            now = time.time()
            rows = [(now, ids[(written + i) % len(ids)]) for i in range(per_commit)]
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("UPDATE agents SET last_seen_at = ? WHERE id = ?", rows)
            conn.execute("COMMIT")
            written += per_commit
        return written / (time.perf_counter() - started)
    finally:
        conn.close()


def _bare_ingest_pg(url: str, agents: list[SeededAgent], per_commit: int) -> float:
    with psycopg.connect(url, autocommit=True) as conn:
        total = min(len(agents) * 5, 200_000)
        ids = [a.id for a in agents]
        started = time.perf_counter()
        written = 0
        while written < total:
            now = time.time()
            batch = [ids[(written + i) % len(ids)] for i in range(per_commit)]
            with conn.transaction():
                conn.execute(
                    "UPDATE agents SET last_seen_at = beat.at FROM "
                    "unnest(%s::text[], %s::double precision[]) AS beat(id, at) "
                    "WHERE agents.id = beat.id",
                    (batch, [now] * len(batch)),
                )
            written += per_commit
        return written / (time.perf_counter() - started)


async def _end_to_end(sizes: Sizes) -> Figure:
    figure = Figure(
        f"beat at sidecar -> durable in hub, p99 ({sizes.e2e_sidecars} relays)",
        "s",
        [],
        target=Target("<=", 1.5),
    )
    previous = os.sched_getaffinity(0)
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        data_dir = Path(tmp) / "hub"
        data_dir.mkdir()
        agents = seed(
            data_dir / "hub.sqlite3",
            gateways=sizes.e2e_sidecars,
            agents_per_gateway=AGENTS_PER_GATEWAY,
        )
        address = HubAddress(free_port(), free_port())
        hub = start_hub(data_dir, address)
        sidecars: list[RelaySidecar] = []
        try:
            pin_to(LOAD_CORE)
            by_gateway = _by_gateway(agents)
            target = f"127.0.0.1:{address.link_port}"
            for i, (gateway_id, members) in enumerate(by_gateway.items()):
                sidecar = RelaySidecar(
                    Path(tmp) / f"sidecar-{i}",
                    target,
                    gateway_id,
                    [a.gateway_agent_id for a in members],
                )
                sidecars.append(sidecar)
                await sidecar.start()
            await wait_until(lambda: all(s.connected for s in sidecars), 60.0, "relays connected")
            windows = sizes.runs
            window_s = sizes.e2e_duration_s / windows
            beaters = [asyncio.create_task(s.beat_forever(E2E_BEAT_INTERVAL_S)) for s in sidecars]
            try:
                await asyncio.sleep(E2E_BEAT_INTERVAL_S)  # every agent has beaten once
                for _ in range(windows):
                    for s in sidecars:
                        s.latencies.clear()
                    await asyncio.sleep(window_s)
                    samples = [x for s in sidecars for x in s.latencies]
                    figure.runs.append(percentile(samples, 99))
            finally:
                for task in beaters:
                    task.cancel()
                await asyncio.gather(*beaters, return_exceptions=True)
        finally:
            for sidecar in sidecars:
                await sidecar.stop()
            hub.stop()
            os.sched_setaffinity(0, previous)
    figure.note = f"agents beat every {E2E_BEAT_INTERVAL_S:g} s; windows of {window_s:g} s"
    return figure
