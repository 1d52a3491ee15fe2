"""A reconnect storm's link changes on both engines: every gateway's change waiting for a
commit is one job, and each gateway's agents are stepped with its changes in order."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from hub.lifecycle import decisions as lc
from hub.lifecycle.reconciler import Reconciler
from hub.store.database import Connection, Database
from hub.store.gateways import GatewayStore

OpenDatabase = Callable[..., Database]
GATEWAYS = [f"gw-{i}" for i in range(20)]


def seed(deadline_at: float) -> Callable[[Connection], None]:
    """One agent per gateway, woken and waiting for its check-in."""

    def op(conn: Connection) -> None:
        for gateway in GATEWAYS:
            conn.execute(
                "INSERT INTO gateways (id, name, created_at, updated_at) VALUES (?, ?, 0, 0)",
                (gateway, gateway),
            )
            conn.execute(
                """INSERT INTO agents (id, gateway_id, kind, gateway_agent_id, name, status,
                       phase, checkin_deadline_at, heartbeat_interval_s, created_at,
                       updated_at)
                   VALUES (?, ?, 'worker', 'mc-0', 'a', 'online', 'awaiting_checkin', ?,
                       600, 0, 0)""",
                (f"{gateway}-agent", gateway, deadline_at),
            )

    return op


async def test_a_storms_link_changes_are_one_job_stepped_in_order(
    open_database: OpenDatabase,
) -> None:
    db = open_database(commit_interval_s=0.3)
    try:
        await db.write(seed(time.time() + 600))
        reconciler = Reconciler(db, GatewayStore(db), lc.Policy(hub_started_at=time.time()))
        await db.write(lambda conn: None)  # spends the burst: the changes below are paced
        await db.write(lambda conn: None)
        await db.write(lambda conn: None)
        jobs = db.stats.jobs
        # Every stream drops; the first half's come back before the commit.
        changes = [reconciler.link_changed(g, False) for g in GATEWAYS]
        changes += [reconciler.link_changed(g, True) for g in GATEWAYS[:10]]
        await asyncio.gather(*changes)
        assert db.stats.jobs - jobs == 1
        rows = await db.read(
            lambda c: {
                r[0]: (r[1], r[2])
                for r in c.execute(
                    "SELECT gateway_id, status_reason, checkin_deadline_at FROM agents"
                )
            }
        )
        for gateway in GATEWAYS[10:]:  # held: nothing can reach them, no deadline runs
            assert rows[gateway] == (lc.WaitReason.SIDECAR_DISCONNECTED.value, None), gateway
        for gateway in GATEWAYS[:10]:  # back: waiting for the check-in again, with a deadline
            reason, deadline = rows[gateway]
            assert reason is None and deadline is not None, (gateway, rows[gateway])
    finally:
        await db.close()
