"""Heartbeat ingest on both engines: every gateway's batches waiting for a commit are one
write job; steady agents' presence moves, the others get their lifecycle step; the job
goes ahead of a backlog, so a fleet's link-up work does not hold every beat's ack."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from hub.lifecycle import decisions as lc
from hub.lifecycle.reconciler import Reconciler
from hub.store.database import MIN_COMMIT_BUDGET_S, Connection, Database
from hub.store.gateways import GatewayStore
from protos import link_pb2 as pb
from protos.contract import timestamp

OpenDatabase = Callable[..., Database]
GATEWAYS = ("gw-a", "gw-b", "gw-c")
STALE = 1_000.0  # every agent's last beat, long ago


def seed(conn: Connection) -> None:
    for gateway in GATEWAYS:
        conn.execute(
            "INSERT INTO gateways (id, name, created_at, updated_at) VALUES (?, ?, 0, 0)",
            (gateway, gateway),
        )
        for i in range(4):
            status = "offline" if i == 3 else "online"  # the last one of each is offline
            conn.execute(
                """INSERT INTO agents (id, gateway_id, kind, gateway_agent_id, name, status,
                       phase, last_seen_at, heartbeat_interval_s, created_at, updated_at)
                   VALUES (?, ?, 'worker', ?, 'a', ?, 'idle', ?, 600, 0, 0)""",
                (f"{gateway}-{i}", gateway, f"mc-{i}", status, STALE),
            )


def batch(*agents: str) -> pb.HeartbeatBatch:
    beats = pb.HeartbeatBatch()
    for agent in agents:
        beats.beats.add(agent_id=agent, observed_at=timestamp())
    return beats


def reconciler_on(db: Database) -> Reconciler:
    return Reconciler(db, GatewayStore(db), lc.Policy(hub_started_at=time.time()))


async def test_every_gateways_waiting_batches_are_one_job(open_database: OpenDatabase) -> None:
    db = open_database(commit_interval_s=0.3)
    try:
        await db.write(seed)
        reconciler = reconciler_on(db)
        await reconciler.heartbeats("gw-a", batch())  # spends the burst: the rest is paced
        jobs = db.stats.jobs
        before = time.time()
        await asyncio.gather(
            *(
                reconciler.heartbeats(gateway, batch(f"mc-{i}", "mc-unknown"))
                for gateway in GATEWAYS
                for i in range(4)
            )
        )
        assert db.stats.jobs - jobs == 1  # twelve batches from three gateways, one job
        agents = await db.read(
            lambda c: {
                r[0]: (r[1], r[2]) for r in c.execute("SELECT id, status, last_seen_at FROM agents")
            }
        )
        for gateway in GATEWAYS:
            for i in range(3):
                status, seen = agents[f"{gateway}-{i}"]
                assert status == "online" and seen >= before - 1, (gateway, i)
            # The offline one's beat is a check-in the lifecycle decides: online again.
            assert agents[f"{gateway}-3"][0] == "online"
        gateways = await db.read(
            lambda c: {r[0]: r[1] for r in c.execute("SELECT id, last_seen_at FROM gateways")}
        )
        assert all(gateways[g] >= before - 1 for g in GATEWAYS)
    finally:
        await db.close()


async def test_beats_are_durable_ahead_of_a_backlog(open_database: OpenDatabase) -> None:
    db = open_database(commit_interval_s=0.05)
    try:
        await db.write(seed)
        reconciler = reconciler_on(db)
        started: dict[int, float] = {}

        def slow(index: int) -> Callable[[Connection], None]:
            def op(conn: Connection) -> None:
                started[index] = time.monotonic()
                time.sleep(MIN_COMMIT_BUDGET_S / 3)

            return op

        backlog = [asyncio.ensure_future(db.write(slow(i))) for i in range(8)]
        for _ in range(500):  # until the backlog's first job runs
            if 0 in started:
                break
            await asyncio.sleep(0.01)
        await reconciler.heartbeats("gw-a", batch("mc-0"))
        durable_at = time.monotonic()
        await asyncio.gather(*backlog)
        assert durable_at < started[7], "the beat's ack waited for the whole backlog"
    finally:
        await db.close()
