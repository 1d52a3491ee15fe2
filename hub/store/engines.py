"""Which engine a `--database` URL names, and what both engines raise alike.

`sqlite://` and a path (`sqlite:///srv/mc-hub/hub.sqlite3`; the default is the data
directory's hub.sqlite3) or `postgresql://...` (libpq's URL: user, password, host, port,
database, options).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from hub.store.database import Engine, SqliteEngine

SQLITE_PREFIX = "sqlite://"
POSTGRES_PREFIXES = ("postgresql://", "postgres://")

# A constraint refused a write (a duplicate key, say), on either engine: the PostgreSQL
# engine raises psycopg's as a subclass of this (so psycopg is imported only when used).
IntegrityError = sqlite3.IntegrityError


class DatabaseUrlError(ValueError):
    """A --database value names no engine the hub has."""


def sqlite_url(path: Path) -> str:
    return f"{SQLITE_PREFIX}{path}"


def check_database_url(url: str) -> str:
    """`url` if it names an engine; else an error naming the two forms."""
    if url.startswith(SQLITE_PREFIX) and len(url) > len(SQLITE_PREFIX):
        return url
    if url.startswith(POSTGRES_PREFIXES):
        return url
    raise DatabaseUrlError(
        f"--database {url!r} names no engine: use sqlite:///PATH/hub.sqlite3 or "
        "postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
    )


def sqlite_path(url: str) -> Path | None:
    """The file an `sqlite://` URL names; None for another engine."""
    if url.startswith(SQLITE_PREFIX):
        return Path(url[len(SQLITE_PREFIX) :])
    return None


def engine_for(url: str) -> Engine:
    path = sqlite_path(check_database_url(url))
    if path is not None:
        return SqliteEngine(path)
    from hub.store.postgres import PostgresEngine

    return PostgresEngine(url)
