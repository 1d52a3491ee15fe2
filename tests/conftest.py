from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hub.app import Hub
from hub.store.database import Database
from hub.store.engines import engine_for
from missioncontrol import log as logs
from tests.postgres_server import PostgresServer, PostgresUnavailable
from tests.support import SUMMARY, hub_config

logs.configure("warning", "json")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """For pytest-xdist (`make test` runs workers, `--dist loadgroup`): the tests on one
    OpenClaw version go to one worker, so each version's gateway boots once a run rather
    than once a worker; and the slow tests start first, so none is left running alone
    at the end. (Stable: otherwise the order stays as collected.)"""
    for item in items:
        callspec = getattr(item, "callspec", None)
        version = callspec.params.get("openclaw") if callspec is not None else None
        if version is not None:
            item.add_marker(pytest.mark.xdist_group(f"openclaw-{version}"))
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_sessionfinish(session: pytest.Session) -> None:
    output = getattr(session.config, "workeroutput", None)
    if output is not None:  # a pytest-xdist worker: the controller prints its summary
        output["summary"] = SUMMARY


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """pytest-xdist, on the controller: a worker is done; keep its summary lines."""
    for section, lines in getattr(node, "workeroutput", {}).get("summary", {}).items():
        SUMMARY.setdefault(section, []).extend(lines)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for section, lines in sorted(SUMMARY.items()):
        terminalreporter.section(section)
        for line in lines:
            terminalreporter.write_line(line)


ENGINES = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL on loopback for the session, started on first use."""
    try:
        server = PostgresServer().start()
    except PostgresUnavailable as exc:
        pytest.skip(f"PostgreSQL half skipped: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=ENGINES)
def database(request: pytest.FixtureRequest) -> Iterator[str]:
    """The --database of a test's hub, once per engine: "" (the SQLite file in the data
    directory) and a fresh database on the session's PostgreSQL."""
    if request.param == "sqlite":
        yield ""
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = server.create_database()
    yield server.url(name)
    server.drop_database(name)


@pytest.fixture
def shared_database(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh database on the session's PostgreSQL, for several hubs to share."""
    name = postgres_server.create_database()
    yield postgres_server.url(name)
    postgres_server.drop_database(name)


@pytest.fixture
def open_database(database: str, tmp_path: Path) -> Callable[..., Database]:
    """Opens a store on the test's engine (`database`); the caller closes it."""

    def make(commit_interval_s: float = 1.0, **options: object) -> Database:
        url = database or f"sqlite://{tmp_path / 'hub.sqlite3'}"
        db = Database(commit_interval_s=commit_interval_s, engine=engine_for(url), **options)  # type: ignore[arg-type]
        db.open()
        return db

    return make


@pytest.fixture
async def hub(tmp_path: Path, database: str) -> AsyncIterator[Hub]:
    """A real hub on loopback on each engine: gRPC link server, aiohttp API, and an
    SQLite file or a PostgreSQL database."""
    instance = Hub(hub_config(tmp_path / "hub", database=database))
    await instance.start()
    yield instance
    await instance.stop()


@pytest.fixture
def free_port() -> Callable[[], int]:
    import socket

    def pick() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    return pick
