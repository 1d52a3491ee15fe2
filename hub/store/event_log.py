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
# Notice channel (PostgreSQL, the other hubs): the id of an event the dashboards' bus
# carries too (`on_bus`), once its commit is durable, so the other hubs' buses read it
# back (hub/live_relay.py). Every event reaches the activity streams by FEED_GREW.
EVENT_LOGGED = "event_logged"
LINK_EVENTS = frozenset({"gateway.connected", "gateway.disconnected"})
# Notice channel (PostgreSQL, every hub, this one too): a transaction added rows to a
# live feed's table, FEED_TABLES (sent by the database itself; payload empty), so each
# hub's feeds read on from the last row they passed (hub/live_relay.py).
FEED_GREW = "feed_grew"
FEED_TABLES = ("events", "board_memory")
# What counts as work on a board (boards.last_activity_at; the heartbeat governor backs
# a quiet board's agents off): tasks, approvals, board memory, messages to its agents.
BOARD_ACTIVITY = ("task.", "approval.", "board.memory.", "agent.message.")


def on_bus(kind: str) -> bool:
    """Whether the dashboards' bus hears of this kind of event (a sidecar's link opening
    or closing, a rollout's step), besides the activity streams."""
    return kind in LINK_EVENTS or kind.startswith("rollout.")


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
    if row[1] is not None and kind.startswith(BOARD_ACTIVITY):
        conn.execute(
            "UPDATE boards SET last_activity_at = ? WHERE id = ? "
            "AND (last_activity_at IS NULL OR last_activity_at < ?)",
            (values["at"], row[1], values["at"]),
        )
    if getattr(conn, "notices", None) is not None:  # a write job: tell the streams on commit
        conn.notify(  # type: ignore[attr-defined]
            ACTIVITY, {**values, "id": row[0], "board_id": row[1], "detail": detail}
        )
        if getattr(conn, "dialect", "sqlite") == "postgresql" and on_bus(kind):
            conn.notify(EVENT_LOGGED, str(row[0]))  # type: ignore[attr-defined]


class EventBatch:
    """Many `add_event` calls as a few statements: `add` in the order the events happen,
    then `flush` once, in the same transaction (rows, board activity and ACTIVITY
    notices as `add_event` leaves them). An entry's detail may be filled in after it is
    added and before the flush (`add` returns it): a queued command's sequence number."""

    _CHUNK = 256  # rows per INSERT; the rest in halving chunks, so few statement texts

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._entries: list[tuple[dict[str, Any], dict[str, Any]]] = []

    def add(
        self,
        kind: str,
        *,
        gateway_id: str | None = None,
        agent_id: str | None = None,
        board_id: str | None = None,
        at: float | None = None,
        **detail: Any,
    ) -> dict[str, Any]:
        """Log one event at the flush (arguments as `add_event`); returns its detail."""
        values = {
            "at": time.time() if at is None else at,
            "kind": kind,
            "gateway_id": gateway_id,
            "agent_id": agent_id,
            "board_id": board_id,
        }
        self._entries.append((values, detail))
        return detail

    def flush(self) -> None:
        entries, self._entries = self._entries, []
        start = 0
        while start < len(entries):
            size = self._CHUNK
            while size > len(entries) - start:
                size //= 2
            self._insert(entries[start : start + size])
            start += size

    def _insert(self, entries: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
        conn = self.conn
        params: list[Any] = []
        for values, detail in entries:
            values["detail"] = json.dumps(detail, separators=(",", ":"), default=str)
            agent_id, gateway_id = values["agent_id"], values["gateway_id"]
            params += (values["at"], values["kind"], gateway_id, agent_id)
            params += (values["board_id"], agent_id, gateway_id, agent_id, values["detail"])
        rows = conn.execute(
            f"""INSERT INTO events (at, kind, gateway_id, agent_id, board_id, detail)
                VALUES {", ".join([_EVENT_VALUES] * len(entries))}
                RETURNING id, board_id""",
            params,
        ).fetchall()
        # RETURNING gives the rows in no particular order; their ids increase in the
        # order the VALUES list them (one statement, ids from one counter).
        rows.sort(key=lambda r: r[0])
        notify = getattr(conn, "notices", None) is not None
        active: dict[str, float] = {}
        for (values, detail), (event_id, board_id) in zip(entries, rows, strict=True):
            if board_id is not None and values["kind"].startswith(BOARD_ACTIVITY):
                active[board_id] = max(values["at"], active.get(board_id, values["at"]))
            if notify:
                conn.notify(  # type: ignore[attr-defined]
                    ACTIVITY, {**values, "id": event_id, "board_id": board_id, "detail": detail}
                )
        if active:
            conn.executemany(
                "UPDATE boards SET last_activity_at = ? WHERE id = ? "
                "AND (last_activity_at IS NULL OR last_activity_at < ?)",
                [(at, board_id, at) for board_id, at in active.items()],
            )


# One event's row as `add_event` writes it (the board, when not given, is its agent's).
_EVENT_VALUES = """(?, ?, ?, ?, COALESCE(?, (SELECT board_id FROM agents WHERE id = ?),
    (SELECT board_id FROM agents WHERE gateway_id = ? AND gateway_agent_id = ?)), ?)"""


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


def agent_events_in(
    conn: sqlite3.Connection,
    gateway_id: str,
    agent_ids: tuple[str, ...],
    *,
    before_id: int | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """An agent's entries, newest first. Entries name an agent by the hub's id (lifecycle,
    tokens) or by its gateway agent id (commands, drift): pass both. Every such entry
    carries its gateway, so the gateway's index bounds the walk."""
    marks = ", ".join("?" for _ in agent_ids)
    rows = conn.execute(
        f"""SELECT * FROM events
            WHERE gateway_id = ? AND agent_id IN ({marks}) AND (? IS NULL OR id < ?)
            ORDER BY id DESC LIMIT ?""",
        (gateway_id, *agent_ids, before_id, before_id, limit),
    ).fetchall()
    return [{**dict(r), "detail": json.loads(r["detail"])} for r in rows]


def count_events_in(
    conn: sqlite3.Connection,
    kinds: tuple[str, ...],
    since: float,
    until: float | None = None,
    *,
    having_key: str | None = None,
) -> int:
    """How many entries of `kinds` happened in [since, until) (whose detail has
    `having_key`, if named)."""
    marks = ", ".join("?" for _ in kinds)
    return int(
        conn.execute(
            f"""SELECT COUNT(*) FROM events
                WHERE kind IN ({marks}) AND at >= ? AND (? IS NULL OR at < ?)
                    AND (? IS NULL OR json_extract(detail, ?) IS NOT NULL)""",
            (*kinds, since, until, until, having_key, f"$.{having_key}"),
        ).fetchone()[0]
    )


def recent_events_in(
    conn: sqlite3.Connection,
    kinds: tuple[str, ...],
    since: float,
    limit: int,
    *,
    gateway_id: str | None = None,
) -> list[dict[str, Any]]:
    """Entries of `kinds` since `since` (of one gateway, if named), newest first."""
    marks = ", ".join("?" for _ in kinds)
    rows = conn.execute(
        f"""SELECT * FROM events WHERE kind IN ({marks}) AND at >= ?
                AND (? IS NULL OR gateway_id = ?)
            ORDER BY at DESC, id DESC LIMIT ?""",
        (*kinds, since, gateway_id, gateway_id, limit),
    ).fetchall()
    return [{**dict(r), "detail": json.loads(r["detail"])} for r in rows]


def event_counts_by_gateway_in(
    conn: sqlite3.Connection, kind: str, gateway_ids: list[str], since: float
) -> dict[str, int]:
    """For each gateway named, how many `kind` entries it has since `since`."""
    if not gateway_ids:
        return {}
    marks = ", ".join("?" for _ in gateway_ids)
    rows = conn.execute(
        f"""SELECT gateway_id, COUNT(*) FROM events
            WHERE gateway_id IN ({marks}) AND kind = ? AND at >= ? GROUP BY gateway_id""",
        (*gateway_ids, kind, since),
    ).fetchall()
    return {r[0]: int(r[1]) for r in rows}


def latest_agent_event_in(
    conn: sqlite3.Connection, gateway_id: str, agent_ids: tuple[str, ...], kind: str, key: str
) -> dict[str, Any] | None:
    """The agent's newest `kind` entry whose detail has `key` (see agent_events_in)."""
    marks = ", ".join("?" for _ in agent_ids)
    row = conn.execute(
        f"""SELECT * FROM events
            WHERE gateway_id = ? AND agent_id IN ({marks}) AND kind = ?
                AND json_extract(detail, ?) IS NOT NULL
            ORDER BY id DESC LIMIT 1""",
        (gateway_id, *agent_ids, kind, f"$.{key}"),
    ).fetchone()
    return {**dict(row), "detail": json.loads(row["detail"])} if row else None
