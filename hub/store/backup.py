"""Backups of the hub's database: consistent online copies, their checks, restore, retention.

A backup is taken with SQLite's online backup API from its own read connection, all
pages in one step: that step holds one read transaction, so the copy is the database
as of one instant (every write committed before it began, none after), while the hub
keeps writing (WAL readers never block the writer). The copy is written beside its
destination, switched to a single-file journal, fsynced and renamed into place, mode
0600 (the database holds token digests and sealed webhook secrets).

Restore refuses while a hub runs on the data directory: a hub holds an exclusive
`flock` on `<data dir>/hub.lock` for its whole life (`DataDirLock`), and restore takes
the same lock. The database being replaced is kept beside it
(`hub.sqlite3.before-restore-<time>`), never deleted.

The keys in the data directory (`hub.key`, `ca/`) do not change after the first start
and are not in the database: agent token digests and webhook secrets are keyed by
`hub.key`, so a database restores only next to the key it was written with.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import fcntl
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hub.store.database import (
    BUSY_TIMEOUT_MS,
    SchemaState,
    newer_schema_message,
    schema_state,
)
from hub.store.migrations import MIGRATIONS
from missioncontrol.log import get_logger

log = get_logger("hub.backup")

LOCK_FILE = "hub.lock"
SCHEDULED_PREFIX = "hub-"
SUFFIX = ".sqlite3"
# Tables a database must hold to be a hub's (a stray SQLite file is refused by name).
REQUIRED_TABLES = ("gateways", "agents", "commands", "schema_version")
LOCK_WAIT_S = 1.0  # a doctor's probe holds the lock for microseconds; wait that out


class BackupError(Exception):
    """A backup or restore cannot be done; the message names the cause and the fix."""


class DataDirBusy(BackupError):
    """Another process (a running hub, a restore) holds the data directory's lock."""


@dataclass(frozen=True)
class BackupInfo:
    path: Path
    size_bytes: int
    schema: SchemaState
    integrity_checked: bool
    taken_at: float | None = None  # set when this process took it

    def describe(self) -> str:
        checked = "integrity ok, " if self.integrity_checked else ""
        writer = f" (mc-hub {self.schema.program_version})" if self.schema.program_version else ""
        return (
            f"{self.path}: {self.size_bytes} bytes, {checked}schema version "
            f"{self.schema.version}{writer}"
        )


def timestamp_name(prefix: str = SCHEDULED_PREFIX, at: float | None = None) -> str:
    """`hub-20261121T101500.123Z.sqlite3`: UTC, sortable by name."""
    moment = dt.datetime.fromtimestamp(time.time() if at is None else at, dt.UTC)
    stamp = moment.strftime("%Y%m%dT%H%M%S") + f".{moment.microsecond // 1000:03d}Z"
    return f"{prefix}{stamp}{SUFFIX}"


def take_backup(database: Path, dest: Path, *, verify: bool = False) -> BackupInfo:
    """Copy the live database at `database` to `dest` (a file, or a directory to put a
    timestamped file in); with `verify`, check the copy's integrity too. Blocking: the
    hub calls it in a thread."""
    if not database.exists():
        raise BackupError(
            f"there is no database at {database}; check --data-dir (the hub creates "
            "hub.sqlite3 there on its first start)"
        )
    if dest.is_dir():
        dest = dest / timestamp_name()
    if dest.exists():
        raise BackupError(f"{dest} already exists; name a new file or a directory")
    if not dest.parent.is_dir():
        raise BackupError(f"directory {dest.parent} does not exist; create it first")
    partial = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    started = time.time()
    try:
        _copy(database, partial)
        info = check_database(partial, integrity=verify)
        os.replace(partial, dest)
        _fsync_dir(dest.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        raise
    log.info(
        "backup.completed",
        path=str(dest),
        bytes=info.size_bytes,
        schema_version=info.schema.version,
        verified=verify,
        seconds=round(time.time() - started, 3),
    )
    return BackupInfo(dest, info.size_bytes, info.schema, verify, taken_at=started)


def _copy(source: Path, target: Path) -> None:
    """One-step online backup of `source` into the new file `target` (0600, fsynced)."""
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise BackupError(f"cannot create {target}: {exc.strerror or exc}") from None
    os.close(fd)  # SQLite takes an empty file as a new database; the mode stays 0600
    try:
        src = sqlite3.connect(source, timeout=BUSY_TIMEOUT_MS / 1000)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot open {source}: {exc}") from None
    try:
        src.execute("PRAGMA query_only = ON")
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)  # pages=-1: everything in one step, one read transaction
            # A single self-contained file (no -wal beside it); the hub turns WAL back on.
            dst.execute("PRAGMA journal_mode = DELETE")
        finally:
            dst.close()
    except sqlite3.Error as exc:
        raise BackupError(f"backup of {source} failed: {exc}") from None
    finally:
        src.close()
    with open(target, "rb+") as handle:
        os.fsync(handle.fileno())


def check_database(path: Path, *, integrity: bool = True) -> BackupInfo:
    """A database file this hub can run on: a hub's tables, a schema it knows, and (with
    `integrity`) `PRAGMA integrity_check` ok. Raises BackupError naming what is wrong."""
    if not path.is_file():
        raise BackupError(f"{path} is not a file")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot open {path}: {exc}") from None
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        missing = [t for t in REQUIRED_TABLES if t not in tables]
        if missing:
            raise BackupError(
                f"{path} is not a mission-control hub database (no {', '.join(missing)} "
                "table); name a file made by `mc-hub backup`"
            )
        if integrity:
            problems = [r[0] for r in conn.execute("PRAGMA integrity_check(20)")]
            if problems != ["ok"]:
                raise BackupError(
                    f"{path} fails SQLite's integrity check ({'; '.join(problems[:3])}); "
                    "use an older backup"
                )
        state = schema_state(conn)
    except sqlite3.DatabaseError as exc:
        raise BackupError(
            f"{path} is not a readable SQLite database ({exc}); use another backup"
        ) from None
    finally:
        conn.close()
    if state.version > len(MIGRATIONS):
        raise BackupError(newer_schema_message(state, what=f"{path}:"))
    return BackupInfo(path, path.stat().st_size, state, integrity)


# ------------------------------------------------------------------ the data dir lock


class DataDirLock:
    """An exclusive `flock` on `<data dir>/hub.lock`, held by a running hub (and by a
    restore) for its whole life. The kernel drops it when the process dies, so a crashed
    hub never leaves a stale lock."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self, purpose: str, *, wait_s: float = LOCK_WAIT_S) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    holder = _read_holder(fd)
                    os.close(fd)
                    raise DataDirBusy(
                        f"{self.data_dir} is in use by {holder or 'another process'}; stop "
                        "that hub first (`systemctl stop mc-hub`, or Ctrl-C where it runs) "
                        "and run this again"
                    ) from None
                time.sleep(0.02)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} ({purpose})\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> DataDirLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_holder(data_dir: Path) -> str | None:
    """Who holds the data directory's lock ("pid 123 (mc-hub serve)"), or None when no
    process does. Probes with a shared lock held for an instant."""
    path = data_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _read_holder(fd) or "another process"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read_holder(fd: int) -> str:
    with contextlib.suppress(OSError):
        return os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    return ""


# ------------------------------------------------------------------ restore


@dataclass(frozen=True)
class Restored:
    backup: BackupInfo
    database: Path
    previous: Path | None  # the replaced database, kept beside it


def restore_backup(source: Path, data_dir: Path, database: Path) -> Restored:
    """Put the backup `source` in place as `database`, refusing while a hub runs on
    `data_dir`. The replaced database (and its WAL) is kept as
    `<name>.before-restore-<time>`."""
    with DataDirLock(data_dir) as lock:
        lock.acquire("mc-hub restore", wait_s=0)
        info = check_database(source, integrity=True)
        if not (data_dir / "hub.key").exists():
            log.warning(
                "backup.restore.no_key",
                detail=f"{data_dir / 'hub.key'} is missing: agent tokens and webhook secrets in "
                "the backup were keyed by the hub key it was written with",
            )
        staged = database.with_name(database.name + ".restoring")
        with contextlib.suppress(FileNotFoundError):
            staged.unlink()
        _copy(source, staged)
        previous: Path | None = None
        if database.exists():
            _checkpoint(database)
            stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
            previous = database.with_name(f"{database.name}.before-restore-{stamp}")
            os.replace(database, previous)
            for suffix in ("-wal", "-shm"):
                side = database.with_name(database.name + suffix)
                if side.exists():  # never let a stale WAL be replayed into the restored file
                    os.replace(side, previous.with_name(previous.name + suffix))
        os.replace(staged, database)
        _fsync_dir(database.parent)
    log.info(
        "backup.restored",
        source=str(source),
        database=str(database),
        schema_version=info.schema.version,
        previous=str(previous) if previous else None,
    )
    return Restored(info, database, previous)


def _checkpoint(database: Path) -> None:
    """Fold the replaced database's WAL into it, so the kept copy is one whole file."""
    try:
        conn = sqlite3.connect(database, timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
    except sqlite3.Error as exc:  # a broken database is exactly what gets restored over
        log.warning("backup.restore.checkpoint_failed", database=str(database), error=str(exc))


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------ schedule and retention


def scheduled_backups(backup_dir: Path) -> list[Path]:
    """The scheduled backups in `backup_dir`, oldest first (by their sortable names)."""
    if not backup_dir.is_dir():
        return []
    return sorted(
        p
        for p in backup_dir.iterdir()
        if p.name.startswith(SCHEDULED_PREFIX) and p.name.endswith(SUFFIX) and p.is_file()
    )


def prune(backup_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` scheduled backups; return what was deleted.
    Pre-migration and hand-made backups are never pruned."""
    doomed = scheduled_backups(backup_dir)[:-keep] if keep > 0 else []
    for path in doomed:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    if doomed:
        log.info("backup.pruned", deleted=[p.name for p in doomed], kept=keep)
    return doomed


def pre_migration_backup(database: Path, backup_dir: Path) -> Callable[[SchemaState, int], None]:
    """Database.before_migration: a verified copy of the database as it was, taken before
    its schema moves (`pre-migration-v6-to-v7-<time>.sqlite3`); a failed copy stops the
    migration, so no schema moves without a way back."""

    def backup(state: SchemaState, target: int) -> None:
        backup_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        name = timestamp_name(f"pre-migration-v{state.version}-to-v{target}-")
        try:
            take_backup(database, backup_dir / name, verify=True)
        except BackupError as exc:
            raise BackupError(
                f"the schema migration from version {state.version} to {target} needs a backup "
                f"first, and it failed: {exc}; free space in {backup_dir} (or set --backup-dir) "
                "and start again"
            ) from None

    return backup


class BackupScheduler:
    """Takes a verified backup every `interval_s` into `backup_dir` and keeps the newest
    `keep`; the copy runs in a thread, never on the event loop."""

    def __init__(
        self,
        database: Path,
        backup_dir: Path,
        *,
        interval_s: float,
        keep: int,
        on_backup: Callable[[BackupInfo | None], None] = lambda info: None,
    ) -> None:
        self.database = database
        self.backup_dir = backup_dir
        self.interval_s = interval_s
        self.keep = keep
        self.on_backup = on_backup
        self.failures = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.interval_s > 0 and self._task is None:
            self._task = asyncio.create_task(self._loop(), name="hub-backups")
            log.info(
                "backup.schedule.started",
                directory=str(self.backup_dir),
                interval_s=self.interval_s,
                keep=self.keep,
            )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def run_once(self) -> BackupInfo:
        self.backup_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            info = await asyncio.to_thread(
                take_backup, self.database, self.backup_dir / timestamp_name(), verify=True
            )
        except BackupError:
            self.on_backup(None)
            raise
        await asyncio.to_thread(prune, self.backup_dir, self.keep)
        self.on_backup(info)
        return info

    def _next_delay(self) -> float:
        """Due one interval after the newest scheduled backup (now, if that has passed)."""
        existing = scheduled_backups(self.backup_dir)
        if not existing:
            return 0.0
        age = time.time() - existing[-1].stat().st_mtime
        return max(0.0, self.interval_s - age)

    async def _loop(self) -> None:
        try:
            while True:
                await asyncio.sleep(self._next_delay())
                try:
                    await self.run_once()
                    self.failures = 0
                except Exception as exc:  # a failed backup must not end the schedule
                    self.failures += 1
                    log.error("backup.scheduled.failed", error=str(exc), failures=self.failures)
                    await asyncio.sleep(min(self.interval_s, 60.0))
        finally:
            log.info("backup.schedule.stopped")
