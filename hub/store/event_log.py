"""The hub's event log: one row per thing that happened (not per heartbeat).

Every change writes its entry in the same transaction as the change itself, so the
log never claims what did not commit.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from protos import link_pb2 as pb

# Notice channel: each event row, as `event_row` gives it, once its commit is durable
# (the activity stream's live part; hub/feeds.py).
ACTIVITY = "activity"


def add_event(
    conn: sqlite3.Connection,
    kind: str,
    *,
    gateway_id: str | None = None,
    agent_id: str | None = None,
    board_id: str | None = None,
    at: float | None = None,
    **detail: Any,
) -> None:
    """Log one event in the caller's transaction. Without a `board_id` it is the board of
    the agent named (by hub id, or by its gateway agent id), so the trail filters by board."""
    values = {
        "at": time.time() if at is None else at,
        "kind": kind,
        "gateway_id": gateway_id,
        "agent_id": agent_id,
        "board_id": board_id,
        "detail": json.dumps(detail, separators=(",", ":"), default=str),
    }
    row = conn.execute(
        """INSERT INTO events (at, kind, gateway_id, agent_id, board_id, detail)
           VALUES (:at, :kind, :gateway_id, :agent_id,
                   COALESCE(:board_id,
                            (SELECT board_id FROM agents WHERE id = :agent_id),
                            (SELECT board_id FROM agents
                             WHERE gateway_id = :gateway_id AND gateway_agent_id = :agent_id)),
                   :detail)
           RETURNING id, board_id""",
        values,
    ).fetchone()
    if getattr(conn, "notices", None) is not None:  # a write job: tell the streams on commit
        conn.notify(  # type: ignore[attr-defined]
            ACTIVITY, {**values, "id": row[0], "board_id": row[1], "detail": detail}
        )


def events_in(
    conn: sqlite3.Connection, gateway_id: str | None = None, kind: str | None = None
) -> list[dict[str, Any]]:
    rows = conn.execute(
        """SELECT * FROM events
           WHERE (? IS NULL OR gateway_id = ?) AND (? IS NULL OR kind = ?)
           ORDER BY id""",
        (gateway_id, gateway_id, kind, kind),
    ).fetchall()
    return [{**dict(r), "detail": json.loads(r["detail"])} for r in rows]


def record_run_observed_in(conn: sqlite3.Connection, gateway_id: str, run: pb.RunObserved) -> None:
    add_event(
        conn,
        "agent.run.observed",
        gateway_id=gateway_id,
        agent_id=run.agent_id,
        run_id=run.run_id,
        outcome=pb.RunObserved.Outcome.Name(run.outcome),
        message=run.message,
        generation=run.generation,
    )
