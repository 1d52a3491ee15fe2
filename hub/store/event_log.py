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


def add_event(
    conn: sqlite3.Connection,
    kind: str,
    *,
    gateway_id: str | None = None,
    agent_id: str | None = None,
    at: float | None = None,
    **detail: Any,
) -> None:
    conn.execute(
        "INSERT INTO events (at, kind, gateway_id, agent_id, detail) VALUES (?, ?, ?, ?, ?)",
        (
            time.time() if at is None else at,
            kind,
            gateway_id,
            agent_id,
            json.dumps(detail, separators=(",", ":")),
        ),
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
        model_turn=run.model_turn,
        message=run.message,
        generation=run.generation,
    )
