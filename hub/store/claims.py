"""Work that must be done once although every hub on a shared database runs its loop.

Each hub runs every worker (webhook delivery, alerts, rollouts), so what a pass does is
claimed in the database, never assumed to be this process's alone:

- rows to work on are locked where they are read, in the transaction that marks them
  done (`FOR UPDATE SKIP LOCKED`): another hub's pass skips them, and a hub that dies
  mid-pass rolls back and releases them;
- a pass over one shared thing (the alert cursor, one rollout) takes a transaction-level
  advisory lock without waiting: a hub that does not get it leaves the pass to the hub
  that has it, which sees whatever the previous holder committed.

Never a waiting lock inside a group commit: one job waiting would hold every job of its
batch, and two hubs waiting on each other would be a deadlock that fails both batches.
On SQLite the hub is the only one and its writer runs one transaction at a time: every
claim holds, and the queries are unchanged.
"""

from __future__ import annotations

from enum import IntEnum

from hub.store.database import Connection


class Singleton(IntEnum):
    """The advisory lock namespaces of the passes done by one hub at a time (the first
    key of `pg_try_advisory_xact_lock(int, int)`; the second is the thing's hash)."""

    ALERT_EVENTS = 0x6D630001
    ALERT_CONDITIONS = 0x6D630002
    ROLLOUT = 0x6D630003


def singleton_in(conn: Connection, job: Singleton, key: str = "") -> bool:
    """Whether this transaction may do `job` for `key` now: True on SQLite; on
    PostgreSQL when no other hub's transaction holds it (held to this one's end)."""
    if conn.dialect != "postgresql":
        return True
    row = conn.execute(
        "SELECT pg_try_advisory_xact_lock(?, hashtext(?))", (int(job), key)
    ).fetchone()
    return bool(row[0])


def skip_locked(conn: Connection, table: str) -> str:
    """What ends a SELECT of rows to work on so each is worked on by one hub: lock
    `table`'s rows (an alias) and skip those another hub's transaction holds. Empty on
    SQLite."""
    return f" FOR UPDATE OF {table} SKIP LOCKED" if conn.dialect == "postgresql" else ""
