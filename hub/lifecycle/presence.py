"""The presence sweep's question to the store: which online agents went silent?

The same rule as `lifecycle.presence_expired`, in SQL, so a sweep over 100,000
agents reads only the few whose heartbeats stopped; the lifecycle then decides
each of them (grace windows, a suspect gateway) from the full snapshot.
tests/integration/test_presence.py checks the two agree.
"""

from __future__ import annotations

from collections.abc import Mapping

from hub.lifecycle.decisions import Phase, Policy, Status
from hub.store.database import Connection


def silent_agents_in(conn: Connection, now: float, policy: Policy) -> list[str]:
    """Ids of online agents with nothing outstanding whose presence has expired at `now`."""
    rows = conn.execute(
        """SELECT id FROM agents WHERE status = ? AND phase = ? AND paused_at IS NULL
               AND heartbeat_interval_s > 0 AND last_seen_at IS NOT NULL
               AND ? - last_seen_at > ? * heartbeat_interval_s""",
        (Status.ONLINE.value, Phase.IDLE.value, now, policy.offline_after_intervals),
    )
    return [row[0] for row in rows]


def touch_steady_in(conn: Connection, gateway_id: str, seen: Mapping[str, float]) -> int:
    """Move presence for the agents in `seen` (gateway agent id -> observed time) that are
    online with nothing outstanding, in one statement for the whole batch; observed times
    never go backwards. Returns how many were steady."""
    if conn.dialect == "postgresql":
        # One statement whatever the batch's size: the beats travel as two arrays.
        return int(
            conn.execute(
                """UPDATE agents SET last_seen_at = GREATEST(COALESCE(last_seen_at, 0), beat.at)
                   FROM unnest(?::text[], ?::double precision[]) AS beat(agent, at)
                   WHERE gateway_id = ? AND gateway_agent_id = beat.agent
                     AND status = 'online' AND phase = 'idle'""",
                (list(seen), list(seen.values()), gateway_id),
            ).rowcount
        )
    return int(
        conn.executemany(
            """UPDATE agents SET last_seen_at = MAX(COALESCE(last_seen_at, 0), ?)
               WHERE gateway_id = ? AND gateway_agent_id = ?
                 AND status = 'online' AND phase = 'idle'""",
            [(at, gateway_id, agent_id) for agent_id, at in seen.items()],
        ).rowcount
    )
