"""Board groups: boards gathered under one name, and the one fleet-like call Mission
Control has, which sets a heartbeat cadence on every agent of a group's boards."""

from __future__ import annotations

import re
import sqlite3
import time
import uuid
from typing import Any

from hub.store.errors import Refusal, StoreError
from hub.store.event_log import add_event


class GroupNotFound(StoreError):
    refusal = Refusal.NOT_FOUND


def _slug(name: str, fallback: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or fallback


def group_in(conn: sqlite3.Connection, group_id: str) -> dict[str, Any]:
    row = conn.execute("SELECT * FROM board_groups WHERE id = ?", (group_id,)).fetchone()
    if row is None:
        raise GroupNotFound(f"board group {group_id} does not exist")
    boards = [
        r[0]
        for r in conn.execute(
            "SELECT id FROM boards WHERE board_group_id = ? ORDER BY created_at, id", (group_id,)
        )
    ]
    return {**dict(row), "board_ids": boards}


def create_group_in(conn: sqlite3.Connection, name: str, description: str) -> dict[str, Any]:
    group_id, now = str(uuid.uuid4()), time.time()
    conn.execute(
        "INSERT INTO board_groups (id, name, slug, description, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (group_id, name, _slug(name, group_id), description, now, now),
    )
    add_event(conn, "board_group.created", at=now, board_group_id=group_id, name=name)
    return group_in(conn, group_id)


def update_group_in(
    conn: sqlite3.Connection, group_id: str, *, name: str | None, description: str | None
) -> dict[str, Any]:
    group = group_in(conn, group_id)
    conn.execute(
        "UPDATE board_groups SET name = ?, slug = ?, description = ?, updated_at = ? WHERE id = ?",
        (
            name or group["name"],
            _slug(name, group_id) if name else group["slug"],
            group["description"] if description is None else description,
            time.time(),
            group_id,
        ),
    )
    return group_in(conn, group_id)


def delete_group_in(conn: sqlite3.Connection, group_id: str) -> None:
    """The group goes; its boards stay, in no group."""
    group_in(conn, group_id)
    conn.execute("UPDATE boards SET board_group_id = NULL WHERE board_group_id = ?", (group_id,))
    conn.execute("DELETE FROM board_groups WHERE id = ?", (group_id,))
    add_event(conn, "board_group.deleted", board_group_id=group_id)


def list_groups_in(
    conn: sqlite3.Connection, limit: int, offset: int
) -> tuple[list[dict[str, Any]], int]:
    total = conn.execute("SELECT COUNT(*) FROM board_groups").fetchone()[0]
    rows = conn.execute(
        "SELECT id FROM board_groups ORDER BY created_at, id LIMIT ? OFFSET ?", (limit, offset)
    ).fetchall()
    return [group_in(conn, r[0]) for r in rows], total


def group_agents_in(conn: sqlite3.Connection, group_id: str, *, include_leads: bool) -> list[str]:
    """The agents of the group's boards (workers, and leads if asked), oldest first."""
    group_in(conn, group_id)
    rows = conn.execute(
        """SELECT a.id FROM agents a JOIN boards b ON b.id = a.board_id
           WHERE b.board_group_id = ? AND a.status != 'deleting'
             AND (a.kind = 'worker' OR (? AND a.kind = 'lead'))
           ORDER BY a.created_at, a.id""",
        (group_id, include_leads),
    ).fetchall()
    return [r[0] for r in rows]


def check_group_in(conn: sqlite3.Connection, group_id: str | None) -> None:
    """A board's board_group_id must name a group (None: no group)."""
    if group_id is not None:
        try:
            group_in(conn, group_id)
        except GroupNotFound:
            raise StoreError(f"board_group_id: board group {group_id} does not exist") from None
