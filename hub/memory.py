"""Board memory: a board's shared notes, appended by its agents and admins, never edited.

Notes are rows with increasing ids, so a stream of them resumes by `Last-Event-ID`.
Each note is also an event of the board's activity trail (`board.memory.added`).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from hub.boards import BoardNotFound
from hub.store.database import Connection
from hub.store.event_log import add_event

# Notice channel: each added note (a `memory_row` dict), once its commit is durable.
MEMORY = "memory"

MAX_CONTENT_CHARS = 20_000
MAX_TAGS = 20
MAX_TAG_CHARS = 64
TAG_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9:._/-]{0,63}$"


def memory_row(row: sqlite3.Row) -> dict[str, Any]:
    return {**dict(row), "tags": json.loads(row["tags"])}


def add_memory_in(
    conn: Connection,
    board_id: str,
    *,
    content: str,
    tags: Sequence[str] = (),
    source: str = "",
    author_kind: str,
    author_id: str,
    now: float,
) -> dict[str, Any]:
    if conn.execute("SELECT 1 FROM boards WHERE id = ?", (board_id,)).fetchone() is None:
        raise BoardNotFound(f"board {board_id} does not exist")
    row = conn.execute(
        """INSERT INTO board_memory (board_id, content, tags, source, author_kind, author_id,
               created_at) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING *""",
        (
            board_id,
            content,
            json.dumps(list(dict.fromkeys(tags))),
            source,
            author_kind,
            author_id,
            now,
        ),
    ).fetchone()
    note = memory_row(row)
    add_event(
        conn,
        "board.memory.added",
        board_id=board_id,
        agent_id=author_id if author_kind == "agent" else None,
        at=now,
        memory_id=note["id"],
        tags=note["tags"],
        by=author_id,
    )
    conn.notify(MEMORY, note)
    return note


def list_memory_in(
    conn: sqlite3.Connection, board_id: str, *, tag: str | None, limit: int, offset: int
) -> tuple[list[dict[str, Any]], int]:
    """One page of the board's notes, newest first; `tag` keeps those carrying it."""
    if conn.execute("SELECT 1 FROM boards WHERE id = ?", (board_id,)).fetchone() is None:
        raise BoardNotFound(f"board {board_id} does not exist")
    where = "WHERE board_id = ?"
    args: list[Any] = [board_id]
    if tag is not None:
        where += " AND EXISTS (SELECT 1 FROM json_each(board_memory.tags) WHERE value = ?)"
        args.append(tag)
    total = conn.execute(f"SELECT COUNT(*) FROM board_memory {where}", args).fetchone()[0]
    rows = conn.execute(
        f"SELECT * FROM board_memory {where} ORDER BY id DESC LIMIT ? OFFSET ?",
        (*args, limit, offset),
    ).fetchall()
    return [memory_row(r) for r in rows], total


def memory_after_in(
    conn: sqlite3.Connection, board_id: str, after_id: int, limit: int
) -> list[dict[str, Any]]:
    """The board's notes after `after_id`, oldest first (a stream resuming)."""
    rows = conn.execute(
        "SELECT * FROM board_memory WHERE board_id = ? AND id > ? ORDER BY id LIMIT ?",
        (board_id, after_id, limit),
    ).fetchall()
    return [memory_row(r) for r in rows]
