"""What the other hubs on one PostgreSQL committed, pushed to this hub's live streams.

A hub feeds its own live streams after each commit: agent views to the event bus (the
agents stream, the dashboard), event rows to the activity feed. So that a stream opened
on another hub sees the change too, the writing transaction also leaves a small notice
every hub hears (NOTIFY carries at most 8000 bytes: ids, never rows); each other hub
reads those rows back, a batch at a time, and feeds its own streams with what it read
(a board memory note comes with its `board.memory.added` event: the note is read too;
a gateway's link and a rollout's steps reach the dashboard through their events).
A notice lost while a hub's listener reconnects costs that hub's streams the change
(a client reconnecting with Last-Event-ID gets the activity rows from the database). On
SQLite there is one hub: nothing is sent.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable, Mapping
from typing import Any

from hub.events import EventBus
from hub.feeds import Feed
from hub.memory import memory_row
from hub.provisioning.agents import AgentRow, agent_json
from hub.store.database import Connection, Database
from hub.store.event_log import EVENT_LOGGED
from missioncontrol.log import get_logger

log = get_logger("hub.live_relay")

# Notice channel (PostgreSQL, the other hubs): an agent changed. Payload: JSON
# {"id", "board_id", "gateway_id"} (the last two say where a deleted agent was).
AGENT_CHANGED = "agent_changed"
READ_BATCH = 500  # rows read back at once
LINK_EVENTS = frozenset({"gateway.connected", "gateway.disconnected"})


def agents_changed_in(
    conn: Connection, changed: Mapping[str, dict[str, Any] | Callable[[], dict[str, Any]]]
) -> None:
    """Tell the other hubs, once the caller's transaction commits, that these agents
    changed (agent id -> its API view, or what makes it: not built for this, since the
    other hubs read the row back; a deleted agent's view says where it was). Nothing on
    SQLite."""
    if conn.dialect != "postgresql":
        return
    for agent_id, view in changed.items():
        where = view if isinstance(view, dict) else {}
        conn.notify(
            AGENT_CHANGED,
            json.dumps(
                {
                    "id": agent_id,
                    "board_id": where.get("board_id"),
                    "gateway_id": where.get("gateway_id"),
                }
            ),
        )


class LiveRelay:
    """Reads back what the other hubs' notices name and feeds this hub's streams."""

    def __init__(self, db: Database, events: EventBus, activity: Feed, memory: Feed) -> None:
        self.db = db
        self.events = events
        self.activity = activity
        self.memory = memory
        self._agents: dict[str, dict[str, Any]] = {}  # id -> where it was
        self._event_ids: set[int] = set()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    def attach(self) -> None:
        """Listen to the other hubs (before the database opens)."""
        self.db.listen_elsewhere(AGENT_CHANGED, self.agent_changed)
        self.db.listen_elsewhere(EVENT_LOGGED, self.event_logged)

    def agent_changed(self, payload: str) -> None:
        try:
            fields = json.loads(payload)
            self._agents[str(fields["id"])] = fields
        except (ValueError, KeyError, TypeError):
            log.warning("live_relay.notice.unreadable", channel=AGENT_CHANGED)
            return
        self._wake()

    def event_logged(self, payload: str) -> None:
        try:
            self._event_ids.add(int(payload))
        except ValueError:
            log.warning("live_relay.notice.unreadable", channel=EVENT_LOGGED)
            return
        self._wake()

    async def stop(self) -> None:
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def _wake(self) -> None:
        # One reader at a time: notices arriving meanwhile wait for its next batch.
        if not self._stopped and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(
                self._read_back(), name="live-relay"
            )

    async def _read_back(self) -> None:
        while self._agents or self._event_ids:
            agents = dict(list(self._agents.items())[:READ_BATCH])
            for agent_id in agents:
                del self._agents[agent_id]
            event_ids = sorted(self._event_ids)[:READ_BATCH]
            self._event_ids.difference_update(event_ids)
            try:
                views, rows, notes = await self.db.read(
                    functools.partial(_read_in, agents=agents, event_ids=event_ids)
                )
            except Exception as exc:  # the streams miss these; the rows are still there
                log.error("live_relay.read_failed", error=str(exc))
                continue
            for view in views:
                self.events.publish(
                    "agent", view, board_id=view["board_id"], gateway_id=view["gateway_id"]
                )
            for row in rows:
                self.activity.publish(row)
                self._publish_from_event(row)
            for note in notes:
                self.memory.publish(note)

    def _publish_from_event(self, row: dict[str, Any]) -> None:
        """What the dashboard hears from the writing hub's own bus besides agents: a
        gateway's link opening or closing, a rollout's step (their events say so)."""
        kind, gateway_id = row["kind"], row["gateway_id"]
        if kind in LINK_EVENTS and gateway_id is not None:
            self.events.publish(
                "gateway",
                {"id": gateway_id, "connected": kind == "gateway.connected"},
                board_id=None,
                gateway_id=gateway_id,
            )
        elif kind.startswith("rollout.") and "rollout_id" in row["detail"]:
            self.events.publish(
                "rollout",
                {"rollout_id": row["detail"]["rollout_id"], "step": kind, "gateway_id": gateway_id},
                board_id=None,
                gateway_id=gateway_id,
            )


def _by_ids(conn: Connection, table: str, ids: list[Any]) -> list[Any]:
    """The rows of `table` with those ids, in id order (none asked: none read)."""
    if not ids:
        return []
    marks = ", ".join("?" for _ in ids)
    return conn.execute(f"SELECT * FROM {table} WHERE id IN ({marks}) ORDER BY id", ids).fetchall()


def _read_in(
    conn: Connection, agents: dict[str, dict[str, Any]], event_ids: list[int]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    found_agents = {r["id"]: AgentRow.from_row(r) for r in _by_ids(conn, "agents", list(agents))}
    views: list[dict[str, Any]] = []
    for agent_id, where in agents.items():
        row = found_agents.get(agent_id)
        if row is None:  # deleted: what the writing hub's streams said last
            views.append({**where, "status": "deleted"})
        else:
            views.append(agent_json(row))
    rows = [
        {**dict(r), "detail": json.loads(r["detail"])} for r in _by_ids(conn, "events", event_ids)
    ]
    noted = [r["detail"]["memory_id"] for r in rows if r["kind"] == "board.memory.added"]
    notes = [memory_row(r) for r in _by_ids(conn, "board_memory", noted)]
    return views, rows, notes
