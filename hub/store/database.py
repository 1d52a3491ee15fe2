"""The hub's database: one writer that group-commits, readers, migrations, over an
engine (an SQLite file here; PostgreSQL in hub/store/postgres.py, `--database`).

Every write goes through `Database.write(fn)`: `fn(connection)` runs on the
writer thread inside a transaction shared with whatever else is queued. The
writer commits immediately when idle and about once per `commit_interval_s`
under load (a few back to back are allowed), so a burst of heartbeats, acks and
API writes costs one fsync.
Each job runs under its own savepoint: one failing job rolls back alone and its
caller gets the exception; the others commit.

A job may leave notices on its connection (`conn.notify(channel, payload)`,
`conn.after_commit(fn)`), as PostgreSQL's NOTIFY does: they are delivered on the
event loop once the commit is durable, before the job's caller resumes, and
dropped with the job if it rolls back. That is how a queued command reaches its
gateway's stream: whoever queues it needs to know nothing about streams.
"""

from __future__ import annotations

import asyncio
import functools
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from hub.pki.secrets_box import SecretBox
from hub.store.migrations import MIGRATIONS
from missioncontrol.log import get_logger
from missioncontrol.version import VERSION

T = TypeVar("T")
C = TypeVar("C")
log = get_logger("hub.store")

BUSY_TIMEOUT_MS = 5_000
COMMIT_BURST = 3  # commits allowed back to back before pacing sets in


class DatabaseError(RuntimeError):
    """The database cannot be opened, migrated or written."""


class DatabaseClosed(DatabaseError):
    """A write was submitted after the database was closed."""


class DatabaseNewerError(DatabaseError):
    """The database was migrated by a newer mc-hub; the message names the version to run."""


Notice = tuple[str | None, Any]  # (channel, payload); channel None: payload is a callable


class Notices:
    """What every engine's connection carries: on the writer, jobs leave notices for
    after their commit; `secrets` seals what the store keeps that no copy of the database
    may reveal; `dialect` names the engine, for the few statements written per engine."""

    notices: list[Notice] | None = None  # None: not inside a write job (a reader)
    secrets: SecretBox | None = None
    dialect = "sqlite"

    def notify(self, channel: str, payload: Any) -> None:
        """Deliver `payload` to the channel's listeners once this job's commit is durable."""
        self._notices().append((channel, payload))

    def after_commit(self, fn: Callable[[], None]) -> None:
        """Call `fn` on the event loop once this job's commit is durable."""
        self._notices().append((None, fn))

    def _notices(self) -> list[Notice]:
        if self.notices is None:
            raise DatabaseError("notices can only be left by a write job (Database.write)")
        return self.notices


class Connection(Notices, sqlite3.Connection):
    """A hub SQLite connection (the PostgreSQL engine's connection speaks the same
    subset: execute, executemany, rows by name and position; hub/store/postgres.py)."""


class Engine(Protocol):
    """Where a Database keeps its rows: the group-committing writer and the readers are
    the same for every engine; an engine opens their connections and migrates."""

    name: str  # "sqlite" | "postgresql"
    describe: str  # for messages and logs (never a password)
    begin_sql: str  # what opens a group commit's transaction
    errors: tuple[type[Exception], ...]  # what a failed statement raises
    # What a job may meet because of another writer (a deadlock between hubs): it is run
    # again in a later commit instead of failing.
    transient_errors: tuple[type[Exception], ...]
    reader_threads: int

    def open_writer(
        self, secrets: SecretBox | None, before: Callable[[SchemaState, int], None] | None
    ) -> Connection:
        """The writer's connection, with the schema migrated to this program's version."""
        ...

    def recover(self, conn: Connection) -> Connection:
        """The writer's connection to go on with after a failed commit."""
        ...

    def read(self, fn: Callable[[Connection], T], secrets: SecretBox | None) -> T:
        """Run `fn` on a reader connection (called on a reader thread)."""
        ...

    def probe_writable(self, timeout_s: float) -> None: ...

    def publish(self, conn: Connection, notices: Sequence[Notice]) -> None:
        """Tell the other hubs, in the transaction about to commit, its notices on the
        shared channels (`share_notices`)."""
        ...

    def share_notices(self, channels: set[str], deliver: Callable[[str, str, bool], None]) -> None:
        """Tell the other hubs on this database the notices on `channels` (str payloads)
        and call `deliver(channel, payload, own)`, from any thread, for each heard on
        the database, in commit order (`own`: this hub's writer left it)."""
        ...

    def close(self) -> None: ...


@dataclass
class _Job:
    fn: Callable[[Connection], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    urgent: bool = False
    first: bool = False
    abandonable: bool = False
    abandoned: bool = False  # its caller stopped waiting before it ran: it is not run
    attempts: int = 0


# A job that meets a transient error runs again at most this many times.
TRANSIENT_RETRIES = 3
# A group commit stops taking jobs once it has run this long (or the commit interval, if
# longer); the rest go first into the next one.
MIN_COMMIT_BUDGET_S = 1.0


@dataclass
class WriterStats:
    commits: int = 0
    jobs: int = 0
    abandoned: int = 0  # abandonable jobs not run: their callers had gone
    last_commit_at: float = 0.0
    last_error: str | None = None
    last_error_at: float = 0.0
    batch_sizes: list[int] = field(default_factory=list)


def connect(path: Path, *, readonly: bool = False) -> Connection:
    uri = f"file:{path}{'?mode=ro' if readonly else ''}"
    conn = sqlite3.connect(
        uri, uri=True, isolation_level=None, check_same_thread=False, factory=Connection
    )
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    if not readonly:
        conn.execute("PRAGMA journal_mode = WAL")
        # WAL + NORMAL never corrupts; a power cut may lose the last commit (see README).
        conn.execute("PRAGMA synchronous = NORMAL")
    return conn


@dataclass(frozen=True)
class SchemaState:
    """Where a database's schema stands, and which program last moved it."""

    version: int  # 0: a new, empty database
    program_version: str  # the mc-hub that applied `version` ("" if not recorded)


def ensure_schema_table(conn: sqlite3.Connection) -> None:
    """The bookkeeping table (not a migration): one row per applied schema version, with
    the program version that applied it, so a newer database can say what to run."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, applied_at REAL)"
    )
    columns = {row[1] for row in conn.execute("PRAGMA table_info(schema_version)")}
    if "program_version" not in columns:
        conn.execute("ALTER TABLE schema_version ADD COLUMN program_version TEXT")


def schema_state(conn: sqlite3.Connection) -> SchemaState:
    """Read-only: the schema version a database holds (0 when it holds none)."""
    tables = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if tables is None:
        return SchemaState(0, "")
    columns = {row[1] for row in conn.execute("PRAGMA table_info(schema_version)")}
    program = "program_version" if "program_version" in columns else "''"
    row = conn.execute(
        f"SELECT version, {program} FROM schema_version ORDER BY version DESC LIMIT 1"
    ).fetchone()
    return SchemaState(int(row[0]), row[1] or "") if row else SchemaState(0, "")


def newer_schema_message(state: SchemaState, what: str = "database") -> str:
    """Why this program refuses a database a newer mc-hub wrote, and which one to run."""
    known = len(MIGRATIONS)
    writer = f"mc-hub {state.program_version}" if state.program_version else "a newer mc-hub"
    run = (
        f"run mc-hub {state.program_version} or newer"
        if state.program_version
        else "run the mc-hub that wrote it"
    )
    return (
        f"{what} schema version {state.version} was written by {writer}; it is newer than "
        f"this hub understands (mc-hub {VERSION} knows schema {known}): {run}, or restore a "
        "backup made by this version with `mc-hub restore FILE`"
    )


def migrate(
    conn: sqlite3.Connection, *, before: Callable[[SchemaState, int], None] | None = None
) -> int:
    """Apply every migration newer than the recorded schema version; return the version.

    `before(state, target)` runs first when an existing database is about to move (the
    hub backs it up there); each applied version records this program's version."""
    ensure_schema_table(conn)
    for version, script in pending_migrations(schema_state(conn), before):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in script:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_version (version, applied_at, program_version) "
                "VALUES (?, ?, ?)",
                (version, time.time(), VERSION),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        log.info("database.migrated", version=version, program_version=VERSION)
    return len(MIGRATIONS)


def pending_migrations(
    state: SchemaState, before: Callable[[SchemaState, int], None] | None
) -> list[tuple[int, tuple[str, ...]]]:
    """The migrations a database at `state` needs, each with the version it reaches (the
    same decision on every engine): refuses a newer database; calls `before` when an
    existing one is about to move."""
    current, known = state.version, len(MIGRATIONS)
    if current > known:
        raise DatabaseNewerError(newer_schema_message(state))
    if before is not None and 0 < current < known:
        before(state, known)
    return list(enumerate(MIGRATIONS[current:], start=current + 1))


class SqliteEngine:
    """One SQLite file: WAL, so the reader is never blocked by the writer."""

    name = "sqlite"
    begin_sql = "BEGIN IMMEDIATE"
    errors: tuple[type[Exception], ...] = (sqlite3.Error,)
    transient_errors: tuple[type[Exception], ...] = ()  # one writer: nobody to deadlock with
    reader_threads = 1

    def __init__(self, path: Path) -> None:
        self.path = path
        self.describe = str(path)
        self._reader_local = threading.local()

    def open_writer(
        self, secrets: SecretBox | None, before: Callable[[SchemaState, int], None] | None
    ) -> Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            conn = connect(self.path)
        except sqlite3.Error as exc:
            raise DatabaseError(f"cannot open database {self.path}: {exc}") from exc
        conn.secrets = secrets
        try:
            migrate(conn, before=before)
        except sqlite3.Error as exc:
            conn.close()
            raise DatabaseError(f"cannot open database {self.path}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def recover(self, conn: Connection) -> Connection:
        return conn  # a failed SQLite commit leaves the connection usable

    def read(self, fn: Callable[[Connection], T], secrets: SecretBox | None) -> T:
        conn = getattr(self._reader_local, "conn", None)
        if conn is None:
            conn = connect(self.path)
            conn.execute("PRAGMA query_only = ON")
            conn.secrets = secrets
            self._reader_local.conn = conn
        return fn(conn)

    def probe_writable(self, timeout_s: float) -> None:
        conn = sqlite3.connect(self.path, timeout=timeout_s, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("UPDATE schema_version SET applied_at = applied_at WHERE 0")
            conn.execute("ROLLBACK")
        finally:
            conn.close()

    def publish(self, conn: Connection, notices: Sequence[Notice]) -> None:
        """One hub per file: there is no other hub to tell."""

    def share_notices(self, channels: set[str], deliver: Callable[[str, str, bool], None]) -> None:
        """One hub per file: there is no other hub to tell."""

    def close(self) -> None:
        """Nothing is shared between the connections to close."""


class Database:
    """The hub's database: a group-committing writer plus readers, over one engine
    (an SQLite file by default; PostgreSQL with `engine=`, see `open_store`)."""

    def __init__(
        self,
        path: Path | None = None,
        commit_interval_s: float = 1.0,
        *,
        engine: Engine | None = None,
        before_migration: Callable[[SchemaState, int], None] | None = None,
        on_commit: Callable[[int, float], None] | None = None,
        secrets: SecretBox | None = None,
    ) -> None:
        """`path` is an SQLite file, or `engine` another engine; `before_migration(state,
        target)` runs before an existing database's schema moves (the hub takes a backup
        there); `on_commit(jobs, seconds)` after each group commit, on the writer thread
        (metrics); `secrets` seals the secrets rows keep (agent token files in queued
        commands)."""
        if engine is None:
            if path is None:
                raise ValueError("Database needs an SQLite path or an engine")
            engine = SqliteEngine(path)
        self.engine = engine
        self.secrets = secrets
        # the SQLite file; None on another engine
        self.path = engine.path if isinstance(engine, SqliteEngine) else None
        self.commit_interval_s = commit_interval_s
        self.before_migration = before_migration
        self.on_commit = on_commit
        self.stats = WriterStats()
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._again: list[
            _Job
        ] = []  # met a transient error: first in the next commit (writer only)
        self._writer: threading.Thread | None = None
        self._reader = ThreadPoolExecutor(
            max_workers=engine.reader_threads, thread_name_prefix="hub-db-read"
        )
        self._listeners: dict[str, list[Callable[[Any], None]]] = {}
        self._every_hub: dict[str, list[Callable[[Any], None]]] = {}
        self._in_commit_order: dict[str, list[Callable[[], None]]] = {}
        self._closed = False

    @property
    def shared(self) -> bool:
        """Whether other hubs may use this database too (PostgreSQL; an SQLite file is
        one hub's)."""
        return not isinstance(self.engine, SqliteEngine)

    @property
    def backlog(self) -> int:
        """Write jobs waiting for a commit (about one per kind of bulk traffic when
        the writer keeps up)."""
        return self._jobs.qsize() + len(self._again)

    def listen(
        self, channel: str, listener: Callable[[Any], None], *, every_hub: bool = False
    ) -> None:
        """Call `listener(payload)` for every notice on `channel`, after its commit;
        `every_hub`: also for the notices other hubs on the same database leave there
        (PostgreSQL; their payloads are strings). Register before `open`."""
        self._listeners.setdefault(channel, []).append(listener)
        if every_hub:
            self._every_hub.setdefault(channel, []).append(listener)

    def listen_elsewhere(self, channel: str, listener: Callable[[str], None]) -> None:
        """Call `listener(payload)` for the notices only the other hubs on the same
        database leave on `channel` (PostgreSQL; str payloads), never this hub's own:
        what this hub already did after its commit, the others learn of from these.
        Register before `open`."""
        self._every_hub.setdefault(channel, []).append(listener)

    def listen_in_commit_order(self, channel: str, listener: Callable[[], None]) -> None:
        """Call `listener()` for each commit that left a notice on `channel` in the
        database, this hub's and the others', in the order they committed (PostgreSQL,
        where the database sends them: hub/store/postgres.py FEED_ORDER; never on
        SQLite). Register before `open`."""
        self._in_commit_order.setdefault(channel, []).append(listener)

    def open(self) -> None:
        channels = set(self._every_hub) | set(self._in_commit_order)
        if channels:  # first: the writer's connection carries the shared channels
            loop = asyncio.get_running_loop()

            def deliver(channel: str, payload: str, own: bool) -> None:  # engine's thread
                loop.call_soon_threadsafe(self._deliver_from_database, channel, payload, own)

            self.engine.share_notices(channels, deliver)
        try:
            conn = self.engine.open_writer(self.secrets, self.before_migration)
        except BaseException:
            self.engine.close()  # the listener, if it started
            raise
        self._writer = threading.Thread(
            target=self._run_writer, args=(conn,), name="hub-db-writer", daemon=True
        )
        self._writer.start()

    async def write(
        self,
        fn: Callable[[Connection], T],
        *,
        urgent: bool = False,
        first: bool = False,
        abandonable: bool = False,
    ) -> T:
        """Run `fn` in the next group commit; return its result once it is durable.

        `urgent` writes (a due deadline, an admin's request) commit without waiting
        for the pacing that keeps bulk traffic such as heartbeats to ~1 commit/s;
        whatever else is queued rides along in the same commit. A `first` write goes
        ahead of the jobs queued before it (a hub saying it is alive: behind a storm's
        backlog it would be late, and the other hubs would take its gateways). An
        `abandonable` write is not run at all if its caller is cancelled before it
        runs (a Hello whose sidecar gave up waiting: under a reconnect storm, writing
        it anyway would delay the Hellos still waiting, until they gave up too).
        """
        if self._closed:
            raise DatabaseClosed("database is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        job = _Job(fn, loop, future, urgent, first, abandonable)
        self._jobs.put(job)
        try:
            return await future
        except asyncio.CancelledError:
            job.abandoned = abandonable
            raise

    async def write_checked(
        self,
        check: Callable[[Connection], C],
        op: Callable[[Connection, C], T],
        *,
        urgent: bool = False,
    ) -> T:
        """Run `check` on the reader first, so a refusal never waits for a group commit;
        then `check` again and `op(conn, checked)` in one write, where the answer counts."""
        await self.read(check)
        return await self.write(lambda conn: op(conn, check(conn)), urgent=urgent)

    async def read(self, fn: Callable[[Connection], T]) -> T:
        """Run a read-only query on the reader thread (WAL: never blocked by the writer)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._reader, self._read_job, fn)

    def _read_job(self, fn: Callable[[Connection], T]) -> T:
        return self.engine.read(fn, self.secrets)

    def probe_writable(self, timeout_s: float = 1.0) -> None:
        """Take the write lock on a separate connection and release it; raise if impossible."""
        self.engine.probe_writable(timeout_s)

    async def close(self) -> None:
        """Commit what is queued, then stop the writer and the reader."""
        if self._closed:
            return
        self._closed = True
        self._jobs.put(None)
        if self._writer is not None:
            await asyncio.to_thread(self._writer.join)
        self._reader.shutdown(wait=True)
        await asyncio.to_thread(self.engine.close)

    # ------------------------------------------------------------- writer

    def _run_writer(self, conn: Connection) -> None:
        # Commits are paced by a token bucket: one per interval on average, with a small
        # burst so a few interactive writes in a row are not each held for an interval.
        # Under sustained load the bucket stays empty and batches grow instead.
        tokens, refilled_at = float(COMMIT_BURST), time.monotonic()
        stopping = False
        while not stopping:
            first = self._again.pop(0) if self._again else self._jobs.get()
            if first is None:
                break
            now = time.monotonic()
            tokens = min(COMMIT_BURST, tokens + (now - refilled_at) / self.commit_interval_s)
            refilled_at = now
            batch, self._again = [first, *self._again], []
            if tokens < 1 and not first.urgent:
                # Paced: collect until the bucket refills, or until an urgent job arrives.
                until = now + (1 - tokens) * self.commit_interval_s
                while (left := until - time.monotonic()) > 0:
                    try:
                        job = self._jobs.get(timeout=left)
                    except queue.Empty:
                        break
                    if job is None:
                        stopping = True
                        break
                    batch.append(job)
                    if job.urgent:
                        break
                tokens = min(
                    COMMIT_BURST, tokens + (time.monotonic() - refilled_at) / self.commit_interval_s
                )
                refilled_at = time.monotonic()
            tokens = max(tokens - 1, 0.0)
            while not stopping:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stopping = True
                    break
                batch.append(job)
            if not self._commit_batch(conn, batch):
                conn = self.engine.recover(conn)
        while self._again:  # jobs being retried are owed an answer before the writer ends
            batch, self._again = self._again, []
            if not self._commit_batch(conn, batch):
                conn = self.engine.recover(conn)
        conn.close()

    def _commit_batch(self, conn: Connection, batch: list[_Job]) -> bool:
        """Commit `batch` (False: the commit failed; every job's caller gets the error)."""
        outcomes: list[tuple[_Job, Any, BaseException | None, list[Notice]]] = []
        again: list[_Job] = []  # met another writer's locks: into a later commit
        later: list[_Job] = []  # past this commit's budget: first into the next one
        started = time.monotonic()
        budget_at = started + max(self.commit_interval_s, MIN_COMMIT_BUDGET_S)
        batch.sort(key=lambda job: not job.first)  # stable: the rest keep their order
        try:
            conn.execute(self.engine.begin_sql)
            for index, job in enumerate(batch):
                if index and time.monotonic() > budget_at:
                    # A storm's backlog as one transaction would hold every job's answer
                    # until the last is done (a Hello's past the sidecar's timeout);
                    # commits of about an interval's work each keep ~1 commit/s.
                    later = batch[index:]
                    break
                if job.abandoned:
                    self.stats.abandoned += 1
                    continue
                conn.execute("SAVEPOINT job")
                conn.notices = []
                try:
                    result = job.fn(conn)
                except Exception as exc:
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    if (
                        isinstance(exc, self.engine.transient_errors)
                        and job.attempts < TRANSIENT_RETRIES
                    ):
                        job.attempts += 1
                        log.warning("database.job.retried", error=str(exc), attempt=job.attempts)
                        again.append(job)
                    else:
                        outcomes.append((job, None, exc, []))
                else:
                    conn.execute("RELEASE job")
                    outcomes.append((job, result, None, conn.notices))
                finally:
                    conn.notices = None
            self.engine.publish(
                conn, [n for _, _, error, notices in outcomes if error is None for n in notices]
            )
            conn.execute("COMMIT")
        except self.engine.errors as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self.stats.last_error = str(exc)
            self.stats.last_error_at = time.monotonic()
            ran = batch[: len(batch) - len(later)]
            log.error("database.commit.failed", error=str(exc), jobs=len(ran))
            failure = DatabaseError(f"database write failed: {exc}")
            outcomes = [(job, None, failure, []) for job in ran]
            again = []
            committed = False
        else:
            committed = True
            self.stats.commits += 1
            self.stats.jobs += len(outcomes) + len(again)
            self.stats.last_error = None
            self.stats.batch_sizes.append(len(outcomes) + len(again))
            del self.stats.batch_sizes[:-64]
            if self.on_commit is not None:
                try:
                    self.on_commit(len(batch), time.monotonic() - started)
                except Exception:  # an observer's bug must not stop the writer
                    log.exception("database.commit.observer_failed")
        self.stats.last_commit_at = time.monotonic()
        # The next commit: this one released the locks they met; then those it had no
        # time for, in their order.
        self._again.extend(again + later)
        for job, result, error, notices in outcomes:
            # FIFO on the loop: notices are delivered before the caller resumes.
            if notices:
                job.loop.call_soon_threadsafe(self._deliver, notices)
            job.loop.call_soon_threadsafe(_settle, job.future, result, error)
        return committed

    def _deliver_from_database(self, channel: str, payload: str, own: bool) -> None:
        calls = [functools.partial(f) for f in self._in_commit_order.get(channel, ())]
        if not own:  # this hub's own were delivered locally after their commit
            calls += [functools.partial(f, payload) for f in self._every_hub.get(channel, ())]
        for call in calls:
            try:
                call()
            except Exception:  # one listener's bug must not cost the others their notice
                log.exception("database.notice.failed", channel=channel, own=own)

    def _deliver(self, notices: list[Notice]) -> None:
        for channel, payload in notices:
            calls: list[Callable[[], None]] = (
                [payload]
                if channel is None
                else [functools.partial(f, payload) for f in self._listeners.get(channel, ())]
            )
            for call in calls:
                try:
                    call()
                except Exception:  # one listener's bug must not cost the others their notice
                    log.exception("database.notice.failed", channel=channel)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller was cancelled; the write still happened
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
