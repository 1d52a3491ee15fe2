"""The presence sweep's SQL and the lifecycle's presence rule agree, on each engine."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

from hub.lifecycle import decisions as lc
from hub.lifecycle.presence import silent_agents_in
from hub.provisioning.agents import AgentRow
from hub.store.database import Connection, Database

NOW = 1_800_000_000.0
STATUSES = ("online", "offline", "provisioning", "updating")
PHASES = ("idle", "awaiting_checkin", "waking")
SILENCES = (None, 0.0, 599.0, 1199.0, 1200.0, 1201.0, 5000.0)  # seconds since the last beat
INTERVALS = (0, 600)


async def test_sweep_selects_exactly_the_agents_the_rule_calls_expired(
    open_database: Callable[..., Database],
) -> None:
    db = open_database(commit_interval_s=0.01)
    policy = lc.Policy(hub_started_at=time.time())
    cases = list(itertools.product(STATUSES, PHASES, SILENCES, INTERVALS))

    def seed(conn: Connection) -> None:
        conn.execute(
            "INSERT INTO gateways (id, name, created_at, updated_at) VALUES ('gw', 'gw', 0, 0)"
        )
        for index, (status, phase, silence, interval) in enumerate(cases):
            conn.execute(
                """INSERT INTO agents (id, gateway_id, kind, gateway_agent_id, name, status,
                       phase, last_seen_at, heartbeat_interval_s, created_at, updated_at)
                   VALUES (?, 'gw', 'worker', ?, 'a', ?, ?, ?, ?, 0, 0)""",
                (
                    f"a{index}",
                    f"mc-a{index}",
                    status,
                    phase,
                    None if silence is None else NOW - silence,
                    interval,
                ),
            )

    try:
        await db.write(seed)
        selected = set(await db.read(lambda conn: silent_agents_in(conn, NOW, policy)))
        rows = await db.read(lambda conn: conn.execute("SELECT * FROM agents").fetchall())
        expected = set()
        for row in rows:
            snapshot = AgentRow.from_row(row).snapshot(link_up_since=None)
            if (
                snapshot.status is lc.Status.ONLINE
                and snapshot.phase is lc.Phase.IDLE
                and lc.presence_expired(snapshot, policy, NOW)
            ):
                expected.add(row["id"])
        assert selected == expected
        assert expected  # the cases include expired agents, so the check means something
    finally:
        await db.close()
