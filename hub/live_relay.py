"""What the hubs on one PostgreSQL commit, pushed to this hub's live streams.

On SQLite there is one hub: its streams are fed after each of its commits, and nothing
here runs. On PostgreSQL several hubs write, and each hub's streams must see them all:

- Feeds (activity, board memory) are resumed by row id (Last-Event-ID), so a stream must
  see their rows in id order, every hub's alike. The database makes ids rise in commit
  order (hub/store/postgres.py FEED_ORDER) and tells every hub, this one too, when a
  commit added rows; `LiveRelay` then reads on from the last row it passed and feeds
  the streams in id order. A notice missed while the listener reconnects only delays:
  the next one reads on from the same row.
- The event bus (the agents stream, the dashboard) is fed by the writing hub after its
  commit. The others hear a small notice (NOTIFY carries at most 8000 bytes: ids, never
  rows) and read the agent back; a gateway's link and a rollout's steps reach their
  dashboards through those events. A notice lost while a hub's listener reconnects
  costs its bus the change.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
from collections.abc import Callable, Mapping
from typing import Any

from hub.events import EventBus
from hub.feeds import Feed
from hub.memory import memory_row
from hub.provisioning.agents import AgentRow, agent_json
from hub.store.database import Connection, Database
from hub.store.event_log import EVENT_LOGGED, FEED_GREW, LINK_EVENTS
from missioncontrol.log import get_logger

log = get_logger("hub.live_relay")

# Notice channel (PostgreSQL, the other hubs): an agent changed. Payload: JSON
# {"id", "board_id", "gateway_id"} (the last two say where a deleted agent was).
AGENT_CHANGED = "agent_changed"
READ_BATCH = 500  # rows read back at once


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
    """Feeds this hub's streams with what the hubs on the database commit (PostgreSQL)."""

    def __init__(self, db: Database, events: EventBus, activity: Feed, memory: Feed) -> None:
        self.db = db
        self.events = events
        self.activity = activity
        self.memory = memory
        self._agents: dict[str, dict[str, Any]] = {}  # id -> where it was
        self._event_ids: set[int] = set()
        self._task: asyncio.Task[None] | None = None
        self._feeds_after: int | None = None  # the last event row the feeds were given
        self._feeds_behind = False  # a commit added rows the feeds have not read yet
        self._feeds_task: asyncio.Task[None] | None = None
        self._stopped = False

    def attach(self) -> None:
        """Listen to the database (before it opens)."""
        self.db.listen_elsewhere(AGENT_CHANGED, self.agent_changed)
        self.db.listen_elsewhere(EVENT_LOGGED, self.event_logged)
        self.db.listen_in_commit_order(FEED_GREW, self.feed_grew)

    async def start(self) -> None:
        """Feed the streams from the rows committed from now on (once the database is
        open; what came before, a stream replays by its Last-Event-ID)."""
        self._feeds_after = await self.db.read(_last_event_id_in)
        self.feed_grew()

    def feed_grew(self) -> None:
        self._feeds_behind = True
        if (
            not self._stopped
            and self._feeds_after is not None
            and (self._feeds_task is None or self._feeds_task.done())
        ):
            self._feeds_task = asyncio.get_running_loop().create_task(
                self._read_feeds(), name="live-relay-feeds"
            )

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
        tasks = [t for t in (self._task, self._feeds_task) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = self._feeds_task = None

    async def _read_feeds(self) -> None:
        """Read the event rows after the last one given to the feeds, in id order, a
        batch at a time, until none are left; then the notes their memory events name."""
        while self._feeds_behind and not self._stopped:
            self._feeds_behind = False
            assert self._feeds_after is not None
            try:
                read = await self.db.read(functools.partial(_feed_rows_in, after=self._feeds_after))
            except Exception as exc:  # the rows are still there: the next notice reads on
                log.error("live_relay.feeds.read_failed", error=str(exc))
                return
            for row in read.rows:
                self.activity.publish(row)
                note = read.notes.get(row["id"])
                if note is not None:
                    self.memory.publish(note)
            self._feeds_after = read.last_id
            if read.full:
                self._feeds_behind = True

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
                views, rows = await self.db.read(
                    functools.partial(_read_in, agents=agents, event_ids=event_ids)
                )
            except Exception as exc:  # the bus misses these; the rows are still there
                log.error("live_relay.read_failed", error=str(exc))
                continue
            for view in views:
                self.events.publish(
                    "agent", view, board_id=view["board_id"], gateway_id=view["gateway_id"]
                )
            for row in rows:
                self._publish_from_event(row)

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
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    found_agents = {r["id"]: AgentRow.from_row(r) for r in _by_ids(conn, "agents", list(agents))}
    views: list[dict[str, Any]] = []
    for agent_id, where in agents.items():
        row = found_agents.get(agent_id)
        if row is None:  # deleted: what the writing hub's streams said last
            views.append({**where, "status": "deleted"})
        else:
            views.append(agent_json(row))
    return views, [_event_row(r) for r in _by_ids(conn, "events", event_ids)]


def _last_event_id_in(conn: Connection) -> int:
    return int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0])


@dataclasses.dataclass(frozen=True)
class _FeedRead:
    rows: list[dict[str, Any]]  # event rows, in id order
    notes: dict[int, dict[str, Any]]  # event id -> the note its board.memory.added names
    last_id: int  # the last row read, given or not
    full: bool  # as many as one read takes: there may be more


def _feed_rows_in(conn: Connection, after: int) -> _FeedRead:
    """The event rows after `after` (at most READ_BATCH) and the notes their memory
    events name. A row that cannot be read is left out, loudly, not read again: one bad
    row must not stop every stream."""
    raw = conn.execute(
        "SELECT * FROM events WHERE id > ? ORDER BY id LIMIT ?", (after, READ_BATCH)
    ).fetchall()
    rows = []
    for row in raw:
        try:
            rows.append(_event_row(row))
        except (ValueError, TypeError) as exc:
            log.error("live_relay.feeds.row_unreadable", event_id=row["id"], error=str(exc))
    noted = {
        r["detail"]["memory_id"]: r["id"]
        for r in rows
        if r["kind"] == "board.memory.added" and isinstance(r["detail"], dict)
    }
    notes = {}
    for note in _by_ids(conn, "board_memory", list(noted)):
        try:
            notes[noted[note["id"]]] = memory_row(note)
        except (ValueError, TypeError) as exc:
            log.error("live_relay.feeds.note_unreadable", memory_id=note["id"], error=str(exc))
    last_id = int(raw[-1]["id"]) if raw else after
    return _FeedRead(rows, notes, last_id, len(raw) == READ_BATCH)


def _event_row(row: Any) -> dict[str, Any]:
    return {**dict(row), "detail": json.loads(row["detail"])}
