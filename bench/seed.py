"""Real hub databases for the benchmarks: the hub's own schema, gateways and agent rows.

Rows are inserted in bulk with plain SQL rather than through `create_agent` (which
renders templates and queues an ApplyAgent per agent): the benchmarks measure what
happens to agents that already exist.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hub.store.database import Connection, connect, migrate
from hub.store.engines import engine_for

# What the seeded agents' files were rendered with; the simulated sidecars' Hello says
# the same (bench/sidecars.py), so a connect is a connect, not a fleet-wide re-render.
SEEDED_WORKSPACE_ROOT = "/srv/openclaw"
SEEDED_AGENT_API_URL = "http://127.0.0.1:18790"


@dataclass(frozen=True)
class SeededAgent:
    id: str
    gateway_id: str
    gateway_agent_id: str


def gateway_ids(count: int) -> list[str]:
    return [f"bench-gw-{i:05d}" for i in range(count)]


def seed(
    path: Path,
    *,
    gateways: int,
    agents_per_gateway: int,
    heartbeat_interval_s: int = 600,
    deadlines: list[float] | None = None,
    database: str = "",
) -> list[SeededAgent]:
    """Create the hub database at `path` (or the PostgreSQL `database` URL) with online
    agents (or, with `deadlines`, agents woken 30 s before their check-in deadline and
    not yet checked in: one deadline each)."""
    now = time.time()
    conn: Connection
    if database:
        conn = engine_for(database).open_writer(None, None)  # migrated
    else:
        conn = connect(path)
        migrate(conn)
    agents: list[SeededAgent] = []
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO gateways (id, name, created_at, updated_at, workspace_root, "
        "agent_api_url, gateway_generation) "
        "VALUES (?, ?, ?, ?, ?, ?, 2)",
        [
            (g, g, now, now, SEEDED_WORKSPACE_ROOT, SEEDED_AGENT_API_URL)
            for g in gateway_ids(gateways)
        ],
    )
    conn.executemany(
        "INSERT INTO boards (id, gateway_id, name, slug, created_at, updated_at) "
        "VALUES (?, ?, 'bench', 'bench', ?, ?)",
        [(f"board-{g}", g, now, now) for g in gateway_ids(gateways)],
    )
    rows = []
    deadline_iter: Iterator[float] | None = iter(deadlines) if deadlines is not None else None
    for gateway_id in gateway_ids(gateways):
        for _ in range(agents_per_gateway):
            agent_id = str(uuid.uuid4())
            agent = SeededAgent(agent_id, gateway_id, f"mc-{agent_id}")
            agents.append(agent)
            common = (
                agent.id,
                gateway_id,
                f"board-{gateway_id}",
                agent.gateway_agent_id,
                f"agent {agent_id[:8]}",
            )
            if deadline_iter is None:
                rows.append((*common, "online", "idle", 0, None, None, now, heartbeat_interval_s))
            else:
                at = next(deadline_iter)
                rows.append(
                    (*common, "provisioning", "awaiting_checkin", 1, at, at - 30.0, None, 600)
                )
    conn.executemany(
        """INSERT INTO agents (id, gateway_id, board_id, kind, gateway_agent_id, name, status,
               phase, wake_attempts, checkin_deadline_at, last_wake_sent_at, last_seen_at,
               heartbeat_interval_s, lifecycle_generation, applied_generation,
               heartbeat_config, created_at, updated_at)
           VALUES (?, ?, ?, 'worker', ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, 1, '{"every": "10m"}', ?, ?)""",
        [(*r, now, now) for r in rows],
    )
    conn.execute("COMMIT")
    conn.close()
    return agents


def count_offline(path: Path) -> int:
    conn = connect(path, readonly=True)
    try:
        return int(
            conn.execute("SELECT COUNT(*) FROM agents WHERE status = 'offline'").fetchone()[0]
        )
    finally:
        conn.close()
