"""The presence sweep's question to the store: which online agents went silent?

The same rule as `lifecycle.presence_expired`, in SQL, so a sweep over 100,000
agents reads only the few whose heartbeats stopped; the lifecycle then decides
each of them (grace windows, a suspect gateway) from the full snapshot.
tests/integration/test_presence.py checks the two agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Set

from hub.lifecycle.decisions import CheckInSource, Phase, Policy, Status
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


BeatKey = tuple[str, str]  # (gateway id, gateway agent id)


def touch_steady_in(
    conn: Connection, seen: Mapping[BeatKey, float], runtime: Set[BeatKey] = frozenset()
) -> set[BeatKey]:
    """Move presence for the agents in `seen` (observed time by gateway and gateway agent
    id, any number of gateways) that are online with nothing outstanding, in one
    statement for all of them; observed times never go backwards, and the check-in's
    source (`runtime`: the beats that were runs the gateway finished, else the agent's
    own) moves with the time. Returns the beats that may not have been steady (an agent
    with a lifecycle decision waiting, or none by that id): exactly those on PostgreSQL;
    on SQLite all of them once any was not."""
    keys = list(seen)
    sources = [
        CheckInSource.RUNTIME.value if key in runtime else CheckInSource.HEARTBEAT.value
        for key in keys
    ]
    if conn.dialect == "postgresql":
        # One statement and round trip whatever the batch's size: the beats as arrays.
        # The steady test is in the SET, not the WHERE: filtered there, a table whose
        # statistics lag its rows (a fleet just added) looked one row small to the
        # planner, which then scanned it once per beat (1,000 beats: 20 s, not 20 ms).
        rows = conn.execute(
            """UPDATE agents SET
                   last_seen_at = CASE WHEN status = 'online' AND phase = 'idle'
                       THEN GREATEST(COALESCE(last_seen_at, 0), beat.at)
                       ELSE last_seen_at END,
                   last_checkin_source = CASE WHEN status = 'online' AND phase = 'idle'
                       AND beat.at >= COALESCE(last_seen_at, 0)
                       THEN beat.source ELSE last_checkin_source END
               FROM unnest(?::text[], ?::text[], ?::double precision[], ?::text[])
                    AS beat(gateway, agent, at, source)
               WHERE agents.gateway_id = beat.gateway AND agents.gateway_agent_id = beat.agent
               RETURNING agents.gateway_id, agents.gateway_agent_id,
                   status = 'online' AND phase = 'idle'""",
            (
                [gateway for gateway, _ in keys],
                [agent for _, agent in keys],
                list(seen.values()),
                sources,
            ),
        ).fetchall()
        return set(keys) - {(row[0], row[1]) for row in rows if row[2]}
    # In-process: executemany beats one statement with RETURNING here.
    moved = conn.executemany(
        """UPDATE agents SET last_seen_at = MAX(COALESCE(last_seen_at, 0), ?1),
               last_checkin_source = CASE WHEN ?1 >= COALESCE(last_seen_at, 0)
                   THEN ?2 ELSE last_checkin_source END
           WHERE gateway_id = ?3 AND gateway_agent_id = ?4
             AND status = 'online' AND phase = 'idle'""",
        [
            (at, source, gateway_id, agent_id)
            for ((gateway_id, agent_id), at), source in zip(seen.items(), sources, strict=True)
        ],
    ).rowcount
    return set() if moved == len(keys) else set(keys)
