from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from hub.store.database import (
    COMMIT_BURST,
    MIN_COMMIT_BUDGET_S,
    Connection,
    Database,
    DatabaseError,
)
from hub.store.engines import IntegrityError, engine_for
from hub.store.migrations import MIGRATIONS

OpenDatabase = Callable[..., Database]


@pytest.fixture
async def db(open_database: OpenDatabase):
    database = open_database(commit_interval_s=0.2)
    yield database
    await database.close()


def raw_connection(database: str, tmp_path: Path):
    """A plain connection of the engine's own driver, beside the hub's."""
    if database:
        return psycopg.connect(database, autocommit=True)
    return sqlite3.connect(tmp_path / "hub.sqlite3", isolation_level=None)


def insert_gateway(gateway_id: str):
    def op(conn: sqlite3.Connection) -> str:
        conn.execute(
            "INSERT INTO gateways (id, name, created_at, updated_at) VALUES (?, ?, 0, 0)",
            (gateway_id, gateway_id),
        )
        return gateway_id

    return op


async def test_a_burst_of_writes_shares_few_commits(db: Database) -> None:
    await db.write(insert_gateway("warmup"))  # idle: commits at once
    commits_before = db.stats.commits
    results = await asyncio.gather(*(db.write(insert_gateway(f"gw-{i}")) for i in range(500)))
    assert results == [f"gw-{i}" for i in range(500)]
    assert db.stats.commits - commits_before <= 2  # batched, not one commit per write
    count = await db.read(lambda conn: conn.execute("SELECT COUNT(*) FROM gateways").fetchone()[0])
    assert count == 501


async def test_a_backlog_commits_in_parts_and_the_first_part_is_answered_first(
    open_database: OpenDatabase,
) -> None:
    """A backlog longer than one commit's budget is not one transaction: the jobs done
    first are committed and answered while the rest still wait their turn."""
    db = open_database(commit_interval_s=0.05)
    try:
        started: dict[int, float] = {}

        def slow(index: int) -> Callable[[Connection], int]:
            def op(conn: Connection) -> int:
                started[index] = time.monotonic()
                time.sleep(MIN_COMMIT_BUDGET_S / 3)
                insert_gateway(f"slow-{index}")(conn)
                return index

            return op

        answered: dict[int, float] = {}

        async def write(index: int) -> None:
            await db.write(slow(index))
            answered[index] = time.monotonic()

        commits_before = db.stats.commits
        await asyncio.gather(*(write(i) for i in range(8)))
        assert db.stats.commits - commits_before >= 2
        assert answered[0] < started[7], "the first job waited for the whole backlog"
        count = await db.read(
            lambda conn: conn.execute("SELECT COUNT(*) FROM gateways").fetchone()[0]
        )
        assert count == 8  # each once, in whichever commit
    finally:
        await db.close()


async def test_a_first_write_goes_ahead_of_a_backlog(open_database: OpenDatabase) -> None:
    """A hub's liveness write queued behind a long backlog is done in the next commit,
    before the backlog's rest (else other hubs would think it dead and take its gateways)."""
    db = open_database(commit_interval_s=0.05)
    try:
        started: dict[str, float] = {}

        def job(name: str, seconds: float) -> Callable[[Connection], None]:
            def op(conn: Connection) -> None:
                started[name] = time.monotonic()
                time.sleep(seconds)
                insert_gateway(name)(conn)

            return op

        backlog = [
            asyncio.ensure_future(db.write(job(f"bulk-{i}", MIN_COMMIT_BUDGET_S / 3)))
            for i in range(8)
        ]
        await wait_for_started(started, "bulk-0")
        await db.write(job("alive", 0.0), urgent=True, first=True)
        await asyncio.gather(*backlog)
        assert started["alive"] < started["bulk-7"], started
    finally:
        await db.close()


async def test_an_abandoned_write_is_not_run_and_the_others_are(
    open_database: OpenDatabase,
) -> None:
    """Callers cancelled while their writes wait behind a slow job: the abandonable
    write is not run (a Hello whose sidecar gave up), the ordinary one still is."""
    db = open_database(commit_interval_s=0.05)
    try:
        started: dict[str, float] = {}

        def slow(conn: Connection) -> None:
            started["slow"] = time.monotonic()
            time.sleep(0.3)

        blocker = asyncio.ensure_future(db.write(slow))
        await wait_for_started(started, "slow")
        gave_up = asyncio.ensure_future(db.write(insert_gateway("gave-up"), abandonable=True))
        ordinary = asyncio.ensure_future(db.write(insert_gateway("ordinary")))
        waiting = asyncio.ensure_future(db.write(insert_gateway("waiting"), abandonable=True))
        await asyncio.sleep(0.05)
        gave_up.cancel()
        ordinary.cancel()
        await blocker
        assert await waiting == "waiting"
        ids = await db.read(lambda c: {r[0] for r in c.execute("SELECT id FROM gateways")})
        assert ids == {"ordinary", "waiting"}
        assert db.stats.abandoned == 1
    finally:
        await db.close()


async def test_a_commits_notices_reach_the_other_hubs_in_order_and_not_a_failed_jobs(
    shared_database: str,
) -> None:
    """The shared notices of a group commit's jobs go out with its transaction (one
    statement for them all): every other hub hears each once, in the jobs' order; a
    job that failed after leaving its notice is not heard of, nor is one whose notice
    PostgreSQL would refuse (that job alone fails); a hub never hears its own."""
    hubs = [Database(commit_interval_s=0.2, engine=engine_for(shared_database)) for _ in "ab"]
    heard: dict[int, list[str]] = {0: [], 1: []}
    for index, hub in enumerate(hubs):
        hub.listen_elsewhere("test.notice", heard[index].append)
        hub.open()
    try:
        await asyncio.sleep(1.0)  # both listening (LISTEN runs on its own thread)

        def job(index: int) -> Callable[[Connection], None]:
            def op(conn: Connection) -> None:
                conn.notify("test.notice", f"n{index}")
                insert_gateway(f"gw-{index}")(conn)
                if index == 7:
                    raise ValueError("refused after its notice")
                if index == 12:  # past PostgreSQL's limit: refused in this job alone
                    conn.notify("test.notice", "x" * 8000)

            return op

        await hubs[0].write(insert_gateway("warm"))  # the burst spent: the rest share a commit
        commits = hubs[0].stats.commits
        outcomes = await asyncio.gather(
            *(hubs[0].write(job(i)) for i in range(20)), return_exceptions=True
        )
        assert isinstance(outcomes[7], ValueError)
        assert isinstance(outcomes[12], DatabaseError) and "7999" in str(outcomes[12])
        assert hubs[0].stats.commits - commits <= 2
        expected = [f"n{i}" for i in range(20) if i not in (7, 12)]
        for _ in range(100):
            if len(heard[1]) >= len(expected):
                break
            await asyncio.sleep(0.05)
        assert heard[1] == expected
        assert heard[0] == []
    finally:
        for hub in hubs:
            await hub.close()


async def wait_for_started(started: dict[str, float], name: str) -> None:
    for _ in range(500):
        if name in started:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{name} never started")


async def test_sustained_writes_commit_about_once_per_interval(db: Database) -> None:
    """200 writes trickling in over ~1 s with a 0.2 s interval: a burst, then paced."""
    commits_before = db.stats.commits
    loop = asyncio.get_running_loop()
    started = loop.time()
    pending = []
    for i in range(200):
        pending.append(asyncio.ensure_future(db.write(insert_gateway(f"s-{i}"))))
        await asyncio.sleep(0.005)
    await asyncio.gather(*pending)
    elapsed = loop.time() - started
    commits = db.stats.commits - commits_before
    assert commits <= COMMIT_BURST + elapsed / db.commit_interval_s + 1, commits
    assert commits < 200 / 10


async def test_a_few_interactive_writes_in_a_row_are_not_held(open_database: OpenDatabase) -> None:
    database = open_database(commit_interval_s=5.0)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        for i in range(COMMIT_BURST):
            await database.write(insert_gateway(f"i-{i}"))
        assert loop.time() - started < 1.0  # not 5 s per write
    finally:
        await database.close()


async def test_an_idle_write_commits_immediately(open_database: OpenDatabase) -> None:
    database = open_database(commit_interval_s=5.0)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await database.write(insert_gateway("a"))
        assert loop.time() - started < 1.0
    finally:
        await database.close()


async def test_a_failing_job_rolls_back_alone(db: Database) -> None:
    def half_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO gateways (id, name, created_at, updated_at) VALUES ('half', 'half', 0, 0)"
        )
        raise ValueError("boom")

    outcomes = await asyncio.gather(
        db.write(insert_gateway("before")),
        db.write(half_then_fail),
        db.write(insert_gateway("after")),
        return_exceptions=True,
    )
    assert outcomes[0] == "before" and outcomes[2] == "after"
    assert isinstance(outcomes[1], ValueError)
    ids = await db.read(lambda c: [r[0] for r in c.execute("SELECT id FROM gateways ORDER BY id")])
    assert ids == ["after", "before"]


async def test_queued_writes_are_flushed_on_close(
    open_database: OpenDatabase, database: str, tmp_path: Path
) -> None:
    db = open_database(commit_interval_s=0.5)
    await db.write(insert_gateway("first"))
    pending = [asyncio.ensure_future(db.write(insert_gateway(f"q{i}"))) for i in range(20)]
    await asyncio.sleep(0)
    await db.close()
    await asyncio.gather(*pending)
    conn = raw_connection(database, tmp_path)
    assert conn.execute("SELECT COUNT(*) FROM gateways").fetchone()[0] == 21
    conn.close()


async def test_schema_is_versioned_and_a_newer_database_is_refused(
    open_database: OpenDatabase, database: str, tmp_path: Path
) -> None:
    await open_database().close()
    conn = raw_connection(database, tmp_path)
    assert conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == len(MIGRATIONS)
    if not database:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    mark = "%s" if database else "?"
    conn.execute(
        "INSERT INTO schema_version (version, applied_at, program_version) "
        f"VALUES ({mark}, 0, {mark})",
        (len(MIGRATIONS) + 1, "9.4.2"),
    )
    conn.close()
    with pytest.raises(DatabaseError, match="newer than this hub") as refused:
        open_database()
    # It names the program that wrote it, so the operator knows what to run.
    assert "written by mc-hub 9.4.2" in str(refused.value)
    assert "run mc-hub 9.4.2 or newer" in str(refused.value)


async def test_opening_again_applies_nothing_and_keeps_the_rows(
    open_database: OpenDatabase, database: str, tmp_path: Path
) -> None:
    db = open_database()
    await db.write(insert_gateway("kept"))
    await db.close()
    db = open_database()
    try:
        ids = await db.read(lambda c: [r[0] for r in c.execute("SELECT id FROM gateways")])
        versions = await db.read(
            lambda c: [r[0] for r in c.execute("SELECT version FROM schema_version")]
        )
    finally:
        await db.close()
    assert ids == ["kept"]
    assert versions == list(range(1, len(MIGRATIONS) + 1))  # each applied once, in order


async def test_database_enforces_one_lead_per_board_and_one_main_per_gateway(
    open_database: OpenDatabase, database: str, tmp_path: Path
) -> None:
    await open_database().close()
    conn = raw_connection(database, tmp_path)
    if database:  # the same statements through the hub's dialect
        from hub.store.postgres import PgConnection

        conn = PgConnection(conn)
    conn.execute("INSERT INTO gateways (id, name, created_at, updated_at) VALUES ('g', 'g', 0, 0)")
    conn.execute(
        "INSERT INTO boards (id, gateway_id, name, slug, created_at, updated_at) "
        "VALUES ('b', 'g', 'b', 'b', 0, 0)"
    )

    def agent(agent_id: str, kind: str, board: str | None) -> None:
        conn.execute(
            "INSERT INTO agents (id, gateway_id, board_id, kind, gateway_agent_id, name, "
            "created_at, updated_at) VALUES (?, 'g', ?, ?, ?, ?, 0, 0)",
            (agent_id, board, kind, agent_id, agent_id),
        )

    agent("lead-1", "lead", "b")
    agent("main-1", "main", None)
    with pytest.raises(IntegrityError):
        agent("lead-2", "lead", "b")
    with pytest.raises(IntegrityError):
        agent("main-2", "main", None)
    conn.close()


async def test_notices_arrive_after_the_commit_and_before_the_writer_resumes(
    db: Database, database: str, tmp_path: Path
) -> None:
    heard: list[tuple[str, bool]] = []

    def committed(gateway_id: str) -> bool:
        conn = raw_connection(database, tmp_path)  # sees only committed rows
        try:
            found = conn.execute(
                f"SELECT 1 FROM gateways WHERE id = {'%s' if database else '?'}", (gateway_id,)
            ).fetchone()
        finally:
            conn.close()
        return found is not None

    db.listen("outbox", lambda gateway_id: heard.append((gateway_id, committed(gateway_id))))

    def op(conn: Connection) -> None:
        insert_gateway("gw-notice")(conn)
        conn.notify("outbox", "gw-notice")
        assert heard == []  # not inside the transaction

    await db.write(op)
    assert heard == [("gw-notice", True)]


async def test_a_job_that_fails_leaves_no_notice_and_others_keep_theirs(db: Database) -> None:
    heard: list[str] = []
    db.listen("outbox", heard.append)
    after: list[str] = []

    def failing(conn: Connection) -> None:
        conn.notify("outbox", "rolled-back")
        conn.after_commit(lambda: after.append("rolled-back"))
        raise ValueError("refused")

    def fine(conn: Connection) -> None:
        conn.notify("outbox", "kept")
        conn.after_commit(lambda: after.append("kept"))

    results = await asyncio.gather(db.write(failing), db.write(fine), return_exceptions=True)
    assert isinstance(results[0], ValueError) and results[1] is None
    assert heard == ["kept"] and after == ["kept"]


async def test_a_failing_listener_does_not_cost_the_others_their_notice(db: Database) -> None:
    heard: list[str] = []

    def broken(payload: str) -> None:
        raise RuntimeError("listener bug")

    db.listen("outbox", broken)
    db.listen("outbox", heard.append)
    await db.write(lambda conn: conn.notify("outbox", "gw"))
    assert heard == ["gw"]


async def test_notices_cannot_be_left_by_a_read(db: Database) -> None:
    with pytest.raises(DatabaseError, match="write job"):
        await db.read(lambda conn: conn.notify("outbox", "gw"))
