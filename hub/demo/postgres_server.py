"""A PostgreSQL server on loopback, for the tests, the benchmarks and `make hubs`.

The distribution's server binaries (Debian: /usr/lib/postgresql/<N>/bin, from the
`postgresql` package; or `initdb` on PATH; or MC_TEST_POSTGRES_BIN), a cluster initdb'd
into a fresh temporary directory (or into `root`, kept and used again), a free port on
127.0.0.1 (or the one given), trust authentication for loopback only. PostgreSQL
refuses to run as root: when we do, the server runs as the unprivileged `postgres` user
(runuser). Stopped by the postmaster's PID; a temporary cluster is removed. Durability
settings are off: a cluster on one machine to try things on, not to keep data safe.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
SERVER_USER = "postgres"  # the unprivileged account when the tests run as root
INSTALL_HINT = (
    "install PostgreSQL's server (Debian/Ubuntu: apt-get install -y postgresql; "
    "macOS: brew install postgresql) or set MC_TEST_POSTGRES_BIN to the directory "
    "holding initdb and postgres"
)


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server can be started here; the message says what is missing."""


def server_bin_dir() -> Path:
    """Where initdb and postgres are, or PostgresUnavailable naming the fix."""
    given = os.environ.get("MC_TEST_POSTGRES_BIN")
    candidates = [Path(given)] if given else []
    candidates += sorted(
        (Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "postgres").is_file():
            return directory
    raise PostgresUnavailable(f"no PostgreSQL server binaries (initdb, postgres): {INSTALL_HINT}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """One throwaway cluster; `create_database()` hands each test a database of its own."""

    def __init__(self, root: Path | None = None, port: int = 0) -> None:
        """`root`: where the cluster lives and stays (default: a temporary directory,
        removed on stop); `port`: where it listens (default: a free one)."""
        self.bin_dir = server_bin_dir()
        self.keep = root is not None
        if root is not None:
            root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.root = root if root is not None else Path(tempfile.mkdtemp(prefix="mc-pg-"))
        self.data = self.root / "data"
        self.port = port
        self._as: list[str] = []
        if os.geteuid() == 0:
            try:
                account = pwd.getpwnam(SERVER_USER)
            except KeyError:
                raise PostgresUnavailable(
                    f"the tests run as root and PostgreSQL will not: no user {SERVER_USER!r} "
                    f"to run it as (create one, or run the tests unprivileged); {INSTALL_HINT}"
                ) from None
            os.chown(self.root, account.pw_uid, account.pw_gid)
            self._as = ["runuser", "-u", SERVER_USER, "--"]
        self._log = self.root / "server.log"

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> PostgresServer:
        initdb = [
            *self._as,
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]
        if not (self.data / "PG_VERSION").exists():
            done = subprocess.run(initdb, capture_output=True, text=True, timeout=120, check=False)
            if done.returncode != 0:
                raise PostgresUnavailable(f"initdb failed: {done.stderr.strip() or done.stdout}")
        self.port = self.port or _free_port()
        server = [
            *self._as,
            str(self.bin_dir / "postgres"),
            "-D",
            str(self.data),
            "-p",
            str(self.port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={self.root}",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=300",
            "-c",
            "logging_collector=off",
        ]
        with open(self._log, "ab") as log:
            self._process = subprocess.Popen(server, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                psycopg.connect(self.admin_url, connect_timeout=2).close()
                return self
            except psycopg.OperationalError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise PostgresUnavailable(
                        f"PostgreSQL did not start: {self._log.read_text()[-2000:]}"
                    ) from None
                time.sleep(0.1)

    def create_database(self, name: str | None = None) -> str:
        """A new database (named `name`, or a fresh name); an existing `name` is kept."""
        name = name or f"mc_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if found.fetchone() is None:
                conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        """Fast shutdown by the postmaster's own PID (runuser may stand between us), then
        remove the cluster (unless it lives in the `root` given)."""
        pid = self._postmaster_pid()
        process = getattr(self, "_process", None)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)
        if process is not None:
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                if pid is not None:
                    os.kill(pid, signal.SIGKILL)
                process.wait(timeout=STOP_TIMEOUT_S)
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)
