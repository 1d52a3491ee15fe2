"""The presence sweep's question to the store: which online agents went silent?

The same rule as `lifecycle.presence_expired`, in SQL, so a sweep over 100,000
agents reads only the few whose heartbeats stopped; the lifecycle then decides
each of them (grace windows, a suspect gateway) from the full snapshot.
tests/integration/test_presence.py checks the two agree.
"""

from __future__ import annotations

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
