"""The PostgreSQL engine: the same group-committing writer, schema and queries as SQLite.

The writer keeps one connection of its own (a group commit is one transaction with a
savepoint per job, as on SQLite); readers borrow from a psycopg_pool pool, each read in
autocommit on a read-only session. Queries are the hub's SQLite dialect, rewritten once
each (hub/store/dialect.py) and bound client-side, so a parameter is typed by where it
stands as SQLite types it. Migrations run under an advisory lock, so hubs starting
together on one database migrate it once.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Any, cast

import psycopg
from psycopg.adapt import Dumper, Loader
from psycopg_pool import ConnectionPool

from hub.pki.secrets_box import SecretBox
from hub.store.database import (
    Connection,
    DatabaseError,
    Notice,
    Notices,
    SchemaState,
    pending_migrations,
)
from hub.store.dialect import COMPAT_FUNCTIONS, schema_for_postgresql, to_postgresql
from hub.store.event_log import FEED_GREW, FEED_TABLES
from missioncontrol.log import get_logger
from missioncontrol.version import VERSION

log = get_logger("hub.store")

MIGRATION_LOCK = 0x6D635F6875625F76  # pg_advisory_xact_lock key: "mc_hub_v", migrations
FEED_ORDER_LOCK = 0x6D635F6875625F66  # pg_advisory_xact_lock key: "mc_hub_f", feed row ids
READER_POOL_MAX = 4
NOTIFY_PAYLOAD_MAX = 7999  # bytes in one NOTIFY payload, PostgreSQL's limit
NOTIFY_PREFIX = "mc_hub_"  # the PostgreSQL channel of the store's notice channel X
LISTEN_POLL_S = 0.5  # how often the listener looks up from waiting (to stop)
LISTEN_RETRY_S = 1.0
CONNECT_TIMEOUT_S = 10


def _trigger_once(table: str, function: str, when: str) -> str:
    """Create the statement trigger `function` on `table` unless it is there (every hub
    start runs this: no exclusive lock on a busy table when nothing changes)."""
    return f"""
    DO $$ BEGIN
      IF NOT EXISTS (SELECT 1 FROM pg_trigger
                     WHERE tgname = '{function}' AND tgrelid = '{table}'::regclass) THEN
        CREATE TRIGGER {function} {when} INSERT ON {table}
          FOR EACH STATEMENT EXECUTE FUNCTION {function}();
      END IF;
    END $$
    """


# Live streams resume by their rows' ids (Last-Event-ID). Hubs sharing the database draw
# those ids from one sequence and commit in their own orders, so a row with a smaller id
# could commit after a stream has passed a larger one, and be skipped. Each INSERT into a
# feed's table first takes one lock, held to its commit (before the row's id is drawn:
# a statement trigger runs first), so ids rise in commit order across hubs. Its commit
# then tells every hub's streams to read on (one notice per transaction: NOTIFY folds
# equal payloads).
FEED_ORDER = (
    f"""
    CREATE OR REPLACE FUNCTION mc_feed_order() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN PERFORM pg_advisory_xact_lock({FEED_ORDER_LOCK}); RETURN NULL; END $$
    """,
    f"""
    CREATE OR REPLACE FUNCTION mc_feed_grew() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN PERFORM pg_notify('{NOTIFY_PREFIX}{FEED_GREW}', ''); RETURN NULL; END $$
    """,
    *(
        statement
        for table in FEED_TABLES
        for statement in (
            _trigger_once(table, "mc_feed_order", "BEFORE"),
            _trigger_once(table, "mc_feed_grew", "AFTER"),
        )
    ),
)


def redacted(url: str) -> str:
    """`url` without its password, for messages and logs."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


class Row:
    """A result row as sqlite3.Row reads: by position, by (case-blind) column name,
    iterated, `keys()`, `dict(row)`."""

    __slots__ = ("_index", "_values")

    def __init__(self, values: Sequence[Any], index: Mapping[str, int]) -> None:
        self._values = tuple(values)
        self._index = index

    def __getitem__(self, key: int | str | slice) -> Any:
        if isinstance(key, str):
            try:
                return self._values[self._index[key.lower()]]
            except KeyError:
                raise IndexError(f"no such column: {key}") from None
        return self._values[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Row) and self._values == other._values

    def __hash__(self) -> int:
        return hash(self._values)

    def __repr__(self) -> str:
        return f"Row({self._values!r})"

    def keys(self) -> list[str]:
        return list(self._index)


def _rows(cursor: Any) -> Callable[[Sequence[Any]], Row]:
    index = {c.name.lower(): i for i, c in enumerate(cursor.description or ())}
    return lambda values: Row(values, index)


class _NumberLoader(Loader):
    """NUMERIC (what SUM over BIGINT gives) as SQLite answers it: an int when whole."""

    def load(self, data: Any) -> int | float:
        number = Decimal(bytes(data).decode())
        return int(number) if number == number.to_integral_value() else float(number)


class _BoolAsSqlite(Dumper):
    """A Python bool as SQLite reads it: 1 or 0 in an INTEGER flag column, and still a
    truth value where SQL wants one (`NOT ?`, `CASE WHEN ?`). An untyped '1' or '0'
    is both: PostgreSQL types it by where it stands."""

    oid = 0  # unknown: typed by its context

    def dump(self, obj: Any) -> bytes:
        return b"1" if obj else b"0"

    def quote(self, obj: Any) -> bytes:
        return b"'1'" if obj else b"'0'"


def _configure(conn: psycopg.Connection[Any]) -> None:
    conn.adapters.register_loader("numeric", _NumberLoader)
    conn.adapters.register_dumper(bool, _BoolAsSqlite)


class PgIntegrityError(sqlite3.IntegrityError):
    """psycopg's IntegrityError as the store's callers catch it on either engine."""


class PgConnection(Notices):
    """A psycopg connection speaking the subset of sqlite3.Connection the hub uses.
    On the writer, the notices on shared channels are also NOTIFYs, sent in the group
    commit's transaction (`PostgresEngine.publish`): the other hubs hear them on
    commit, and not those of a job that rolled back."""

    dialect = "postgresql"
    shared: frozenset[str] = frozenset()

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw

    def notify(self, channel: str, payload: Any) -> None:
        # Refused here, in its job: sent with the commit, it would fail everyone's.
        if channel in self.shared and isinstance(payload, str):
            size = len(payload.encode())
            if size > NOTIFY_PAYLOAD_MAX:
                raise DatabaseError(
                    f"a notice on {channel} is {size} bytes; PostgreSQL takes at most "
                    f"{NOTIFY_PAYLOAD_MAX} in one NOTIFY: pass a row's id instead"
                )
        super().notify(channel, payload)

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> Any:
        try:
            return self.raw.execute(to_postgresql(sql), params)
        except psycopg.IntegrityError as exc:
            raise PgIntegrityError(str(exc)) from exc

    def executemany(self, sql: str, rows: Iterable[Sequence[Any] | Mapping[str, Any]]) -> Any:
        cursor = self.raw.cursor()
        try:
            cursor.executemany(to_postgresql(sql), list(rows))
        except psycopg.IntegrityError as exc:
            raise PgIntegrityError(str(exc)) from exc
        return cursor

    @property
    def in_transaction(self) -> bool:
        status = self.raw.info.transaction_status
        return status in (
            psycopg.pq.TransactionStatus.INTRANS,
            psycopg.pq.TransactionStatus.INERROR,
        )

    @property
    def broken(self) -> bool:
        return self.raw.broken or self.raw.closed

    def close(self) -> None:
        self.raw.close()


def _connect(url: str) -> psycopg.Connection[Any]:
    raw: psycopg.Connection[Any] = psycopg.connect(
        url,
        autocommit=True,
        cursor_factory=psycopg.ClientCursor,
        row_factory=_rows,
        connect_timeout=CONNECT_TIMEOUT_S,
        application_name="mc-hub",
    )
    _configure(raw)
    return raw


def schema_state_pg(conn: PgConnection) -> SchemaState:
    """Read-only: the schema version the database holds (0 when it holds none)."""
    if conn.execute("SELECT to_regclass('schema_version')").fetchone()[0] is None:
        return SchemaState(0, "")
    row = conn.execute(
        "SELECT version, program_version FROM schema_version ORDER BY version DESC LIMIT 1"
    ).fetchone()
    return SchemaState(int(row[0]), row[1] or "") if row else SchemaState(0, "")


def migrate_pg(
    conn: PgConnection, *, before: Callable[[SchemaState, int], None] | None = None
) -> int:
    """Apply the migrations newer than the recorded version, in one transaction under
    the migration lock (a second hub waits, then finds nothing to do); define the SQLite
    functions the queries use. Returns the schema version."""
    conn.execute("BEGIN")
    try:
        conn.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL, "
            "applied_at DOUBLE PRECISION, program_version TEXT)"
        )
        applied = []
        for version, script in pending_migrations(schema_state_pg(conn), before):
            for statement in script:
                conn.raw.execute(schema_for_postgresql(statement))
            conn.execute(
                "INSERT INTO schema_version (version, applied_at, program_version) "
                "VALUES (?, ?, ?)",
                (version, time.time(), VERSION),
            )
            applied.append(version)
        for statement in (*COMPAT_FUNCTIONS, *FEED_ORDER):
            conn.raw.execute(statement)
        conn.execute("COMMIT")
    except BaseException:
        if not conn.broken:
            conn.execute("ROLLBACK")
        raise
    for version in applied:
        log.info("database.migrated", version=version, program_version=VERSION, engine="postgresql")
    return schema_state_pg(conn).version


class PostgresEngine:
    """A PostgreSQL database named by a `postgresql://` URL (libpq's, password and all)."""

    name = "postgresql"
    begin_sql = "BEGIN"
    errors: tuple[type[Exception], ...] = (psycopg.Error, PgIntegrityError)
    # Hubs sharing the database lock gateway rows in their own orders (a group commit
    # holds several jobs' locks): PostgreSQL breaks a cycle by failing one of them.
    transient_errors: tuple[type[Exception], ...] = (
        psycopg.errors.DeadlockDetected,
        psycopg.errors.SerializationFailure,
    )
    reader_threads = READER_POOL_MAX

    def __init__(self, url: str) -> None:
        self.url = url
        self.describe = redacted(url)
        self._pool: ConnectionPool[Any] | None = None
        self._pool_lock = threading.Lock()
        self._shared: frozenset[str] = frozenset()
        self._writer_pids: set[int] = set()  # whose NOTIFYs, heard back, are our own
        self._listener: threading.Thread | None = None
        self._stopping = threading.Event()

    def _open(self) -> PgConnection:
        try:
            conn = PgConnection(_connect(self.url))
            conn.shared = self._shared
            self._writer_pids.add(conn.raw.info.backend_pid)
            return conn
        except psycopg.Error as exc:
            raise DatabaseError(
                f"cannot connect to PostgreSQL at {self.describe}: {exc}".strip()
                + " (check --database, and that the server is running and accepts this user)"
            ) from exc

    def open_writer(
        self, secrets: SecretBox | None, before: Callable[[SchemaState, int], None] | None
    ) -> Connection:
        conn = self._open()
        conn.secrets = secrets
        try:
            migrate_pg(conn, before=before)
        except psycopg.Error as exc:
            conn.close()
            raise DatabaseError(f"cannot migrate PostgreSQL at {self.describe}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        return cast(Connection, conn)

    def recover(self, conn: Connection) -> Connection:
        """The writer's connection again after a failed commit: a new one if it broke
        (a server restart), else the same."""
        pg = cast(PgConnection, conn)
        if not pg.broken:
            return conn
        try:
            fresh = self._open()
        except DatabaseError as exc:
            log.error("database.reconnect.failed", error=str(exc))
            return conn
        fresh.secrets = pg.secrets
        fresh.shared = pg.shared
        log.warning("database.reconnected", database=self.describe)
        return cast(Connection, fresh)

    def read(self, fn: Callable[[Connection], Any], secrets: SecretBox | None) -> Any:
        with self._readers().connection() as raw:
            conn = PgConnection(raw)
            conn.secrets = secrets
            return fn(cast(Connection, conn))

    def _readers(self) -> ConnectionPool[Any]:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ConnectionPool(
                    self.url,
                    min_size=1,
                    max_size=READER_POOL_MAX,
                    kwargs={
                        "autocommit": True,
                        "cursor_factory": psycopg.ClientCursor,
                        "row_factory": _rows,
                        "connect_timeout": CONNECT_TIMEOUT_S,
                        "application_name": "mc-hub-read",
                        "options": "-c default_transaction_read_only=on",
                    },
                    configure=_configure,
                    check=ConnectionPool.check_connection,
                    open=True,
                    name="hub-db-read",
                )
            return self._pool

    def publish(self, conn: Connection, notices: Sequence[Notice]) -> None:
        """The committing jobs' notices on shared channels as NOTIFYs, all in one
        statement, in their order (one round trip per commit, not one per notice)."""
        shared = [
            (NOTIFY_PREFIX + channel, payload)
            for channel, payload in notices
            if channel in self._shared and isinstance(payload, str)
        ]
        if shared:
            conn.execute(
                "SELECT pg_notify(n.channel, n.payload) FROM unnest(?::text[], ?::text[]) "
                "WITH ORDINALITY AS n(channel, payload, position) ORDER BY n.position",
                ([channel for channel, _ in shared], [payload for _, payload in shared]),
            )

    def probe_writable(self, timeout_s: float) -> None:
        raw = psycopg.connect(self.url, autocommit=True, connect_timeout=max(1, int(timeout_s)))
        try:
            raw.execute("BEGIN")
            raw.execute(f"SET LOCAL lock_timeout = {int(timeout_s * 1000)}")
            raw.execute("UPDATE schema_version SET applied_at = applied_at WHERE false")
            raw.execute("ROLLBACK")
        finally:
            raw.close()

    def share_notices(self, channels: set[str], deliver: Callable[[str, str, bool], None]) -> None:
        self._shared = frozenset(channels)
        self._listener = threading.Thread(
            target=self._listen, args=(deliver,), name="hub-db-listen", daemon=True
        )
        self._listener.start()

    def _listen(self, deliver: Callable[[str, str, bool], None]) -> None:
        """LISTEN on the shared channels until the engine closes; reconnect on failure
        (a notice missed meanwhile only delays: the outbox is replayed on reconnect)."""
        while not self._stopping.is_set():
            try:
                with psycopg.connect(
                    self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
                ) as conn:
                    for channel in sorted(self._shared):
                        conn.execute(f'LISTEN "{NOTIFY_PREFIX}{channel}"')
                    log.info("database.listening", channels=sorted(self._shared))
                    while not self._stopping.is_set():
                        for notice in conn.notifies(timeout=LISTEN_POLL_S):
                            deliver(
                                notice.channel.removeprefix(NOTIFY_PREFIX),
                                notice.payload,
                                notice.pid in self._writer_pids,
                            )
            except psycopg.Error as exc:
                if self._stopping.is_set():
                    break
                log.error("database.listen.failed", error=str(exc), retry_s=LISTEN_RETRY_S)
                self._stopping.wait(LISTEN_RETRY_S)
            except Exception:
                log.exception("database.listen.failed")
                self._stopping.wait(LISTEN_RETRY_S)
        log.info("database.listen.stopped")

    def close(self) -> None:
        self._stopping.set()
        if self._listener is not None:
            self._listener.join(timeout=LISTEN_POLL_S * 4 + CONNECT_TIMEOUT_S)
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
