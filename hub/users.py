"""The local user: whom the agents work for (USER.md is rendered from it)."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from hub.provisioning.rendering import UserProfile

LOCAL_USER_ID = "local"
FIELDS = ("name", "preferred_name", "pronouns", "timezone", "notes", "context")


def local_user(conn: sqlite3.Connection) -> dict[str, Any]:
    row = conn.execute("SELECT * FROM users WHERE id = ?", (LOCAL_USER_ID,)).fetchone()
    if row is None:
        now = time.time()
        conn.execute(
            "INSERT OR IGNORE INTO users (id, name, created_at, updated_at) "
            "VALUES (?, 'Local admin', ?, ?)",
            (LOCAL_USER_ID, now, now),
        )
        row = conn.execute("SELECT * FROM users WHERE id = ?", (LOCAL_USER_ID,)).fetchone()
    return dict(row)


def read_user(conn: sqlite3.Connection) -> dict[str, Any]:
    """Read without creating (read-only connections); defaults when never saved."""
    row = conn.execute("SELECT * FROM users WHERE id = ?", (LOCAL_USER_ID,)).fetchone()
    if row is not None:
        return dict(row)
    return {
        "id": LOCAL_USER_ID,
        "name": "Local admin",
        **{k: "" for k in FIELDS[1:]},
        "created_at": None,
        "updated_at": None,
    }


def update_user(conn: sqlite3.Connection, fields: dict[str, Any]) -> dict[str, Any]:
    local_user(conn)
    changes = {k: v for k, v in fields.items() if k in FIELDS}
    if changes:
        assignments = ", ".join(f"{key} = ?" for key in changes)  # keys from FIELDS only
        conn.execute(
            f"UPDATE users SET {assignments}, updated_at = ? WHERE id = ?",
            (*changes.values(), time.time(), LOCAL_USER_ID),
        )
    return local_user(conn)


def user_profile(conn: sqlite3.Connection) -> UserProfile:
    user = read_user(conn)
    return UserProfile(**{k: user[k] for k in FIELDS})
