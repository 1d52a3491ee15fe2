"""The store's promises on both engines: one schema from one set of migrations, gapless
sequence numbers with several hubs writing, heartbeat presence in one statement."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from hub.alerts.store import due_deliveries_in
from hub.lifecycle.presence import touch_steady_in
from hub.store.database import Connection, Database, DatabaseError
from hub.store.engines import engine_for
from hub.store.migrations import MIGRATIONS
from hub.store.outbox import enqueue_command_in
from protos import link_pb2 as pb
from tests.postgres_server import PostgresServer

OpenDatabase = Callable[..., Database]


def sqlite_schema(path: Path) -> dict[str, dict[str, tuple[bool, bool]]]:
    """table -> column -> (not null, part of the primary key)."""
    conn = sqlite3.connect(path)
    try:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        return {
            table: {
                row[1]: (bool(row[3]) or row[5] > 0, row[5] > 0)
                for row in conn.execute(f"PRAGMA table_info({table})")
            }
            for table in tables
        }
    finally:
        conn.close()


def sqlite_indexes(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
            )
        }
    finally:
        conn.close()


def postgres_schema(url: str) -> dict[str, dict[str, tuple[bool, bool]]]:
    with psycopg.connect(url) as conn:
        keys = {
            (r[0], r[1])
            for r in conn.execute(
                """SELECT kcu.table_name, kcu.column_name
                   FROM information_schema.table_constraints tc
                   JOIN information_schema.key_column_usage kcu
                     ON tc.constraint_name = kcu.constraint_name
                    AND tc.table_schema = kcu.table_schema
                   WHERE tc.constraint_type = 'PRIMARY KEY' AND tc.table_schema = 'public'"""
            )
        }
        schema: dict[str, dict[str, tuple[bool, bool]]] = {}
        for table, column, nullable in conn.execute(
            """SELECT table_name, column_name, is_nullable FROM information_schema.columns
               WHERE table_schema = 'public'"""
        ):
            schema.setdefault(table, {})[column] = (
                nullable == "NO",
                (table, column) in keys,
            )
        return schema


def postgres_indexes(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {
            r[0]
            for r in conn.execute(
                # The indexes the migrations create: not those backing a key constraint
                # (SQLite's have no SQL either). Not by name: `_` is a LIKE wildcard, and
                # `gateway_labels_key` is a created index.
                "SELECT indexname FROM pg_indexes WHERE schemaname = 'public' "
                "AND indexname NOT IN (SELECT conname FROM pg_constraint)"
            )
        }


async def test_the_migrations_give_both_engines_the_same_schema(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    path = tmp_path / "hub.sqlite3"
    await _opened_and_closed(f"sqlite://{path}")
    name = postgres_server.create_database()
    try:
        url = postgres_server.url(name)
        await _opened_and_closed(url)
        lite, pg = sqlite_schema(path), postgres_schema(url)
        assert set(lite) == set(pg)
        for table in lite:
            assert lite[table] == pg[table], table
        assert sqlite_indexes(path) == postgres_indexes(url)
    finally:
        postgres_server.drop_database(name)


async def _opened_and_closed(url: str) -> None:
    db = Database(engine=engine_for(url))
    db.open()
    await db.close()


async def test_hubs_starting_together_migrate_a_new_database_once(
    postgres_server: PostgresServer,
) -> None:
    name = postgres_server.create_database()
    try:
        url = postgres_server.url(name)
        await asyncio.gather(*(asyncio.to_thread(_open_close_sync, url) for _ in range(4)))
        with psycopg.connect(url) as conn:
            versions = [r[0] for r in conn.execute("SELECT version FROM schema_version")]
        assert sorted(versions) == list(range(1, len(MIGRATIONS) + 1))
    finally:
        postgres_server.drop_database(name)


def _open_close_sync(url: str) -> None:
    engine = engine_for(url)
    conn = engine.open_writer(None, None)
    conn.close()
    engine.close()


def gateway(gateway_id: str) -> Callable[[Connection], None]:
    def op(conn: Connection) -> None:
        conn.execute(
            "INSERT INTO gateways (id, name, created_at, updated_at) VALUES (?, ?, 0, 0)",
            (gateway_id, gateway_id),
        )

    return op


def wake(agent: str) -> pb.Command:
    return pb.Command(wake_agent=pb.WakeAgent(agent_id=agent, message="m", attempt=1))


async def test_two_hubs_queueing_for_one_gateway_number_without_gaps_or_repeats(
    open_database: OpenDatabase,
) -> None:
    """Two stores on one database (two hubs), each with its own group-committing writer,
    queue for the same gateway at once: every command gets its own number, 1..N."""
    first = open_database(commit_interval_s=0.01)
    second = open_database(commit_interval_s=0.01)
    try:
        await first.write(gateway("gw"))
        per_hub = 60

        async def queue(db: Database, hub: str) -> list[int]:
            return list(
                await asyncio.gather(
                    *(
                        db.write(lambda c, i=i: enqueue_command_in(c, "gw", wake(f"{hub}-{i}")))
                        for i in range(per_hub)
                    )
                )
            )

        numbers = await asyncio.gather(queue(first, "a"), queue(second, "b"))
        issued = sorted(numbers[0] + numbers[1])
        assert issued == list(range(1, 2 * per_hub + 1))
        stored = await second.read(
            lambda c: [
                (r[0], r[1])
                for r in c.execute(
                    "SELECT sequence, agent_id FROM commands WHERE gateway_id = 'gw' "
                    "ORDER BY sequence"
                )
            ]
        )
        assert [s for s, _ in stored] == issued
        assert len({agent for _, agent in stored}) == 2 * per_hub  # none overwritten
        next_sequence = await first.read(
            lambda c: c.execute("SELECT next_sequence FROM gateways WHERE id = 'gw'").fetchone()[0]
        )
        assert next_sequence == 2 * per_hub + 1
    finally:
        await first.close()
        await second.close()


async def test_a_failed_job_takes_no_sequence_number(open_database: OpenDatabase) -> None:
    db = open_database(commit_interval_s=0.01)
    try:
        await db.write(gateway("gw"))

        def queue_then_fail(conn: Connection) -> None:
            enqueue_command_in(conn, "gw", wake("lost"))
            raise ValueError("refused after queueing")

        outcomes = await asyncio.gather(
            db.write(lambda c: enqueue_command_in(c, "gw", wake("one"))),
            db.write(queue_then_fail),
            db.write(lambda c: enqueue_command_in(c, "gw", wake("two"))),
            return_exceptions=True,
        )
        assert outcomes[0] == 1 and isinstance(outcomes[1], ValueError) and outcomes[2] == 2
    finally:
        await db.close()


async def test_a_heartbeat_batch_moves_presence_forward_only(open_database: OpenDatabase) -> None:
    db = open_database(commit_interval_s=0.01)
    try:
        for name in ("gw", "gw2"):
            await db.write(gateway(name))

        def seed(conn: Connection) -> None:
            for g, name in enumerate(("gw", "gw2")):
                for i in range(600):
                    conn.execute(
                        """INSERT INTO agents (id, gateway_id, kind, gateway_agent_id, name,
                               status, phase, last_seen_at, created_at, updated_at)
                           VALUES (?, ?, 'worker', ?, 'a', ?, 'idle', ?, 0, 0)""",
                        (f"a{g}-{i}", name, f"mc-{i}", "online" if i % 4 else "offline", 500.0),
                    )

        await db.write(seed)
        # Two gateways' beats in one statement; earlier than the stored time for the
        # first half of each: those must not move back.
        seen = {
            (name, f"mc-{i}"): (100.0 if i < 300 else 900.0)
            for name in ("gw", "gw2")
            for i in range(600)
        }
        seen["gw", "mc-unknown"] = 900.0
        unsettled = await db.write(lambda c: touch_steady_in(c, seen))
        not_steady = {key for key in seen if key[1] == "mc-unknown" or int(key[1][3:]) % 4 == 0}
        # Exactly the offline and the unknown ones; SQLite, less precise, names them all.
        assert unsettled == (not_steady if db.engine.name == "postgresql" else set(seen))
        rows = await db.read(
            lambda c: {
                (r[0], r[1]): r[2]
                for r in c.execute("SELECT gateway_id, gateway_agent_id, last_seen_at FROM agents")
            }
        )
        for (name, agent), at in seen.items():
            if agent == "mc-unknown":
                continue
            moved = at == 900.0 and (name, agent) not in not_steady
            assert rows[name, agent] == (900.0 if moved else 500.0), (name, agent)
    finally:
        await db.close()


async def test_an_unreachable_postgresql_is_a_clear_error(free_port: Callable[[], int]) -> None:
    url = f"postgresql://postgres:secret@127.0.0.1:{free_port()}/nothing"
    with pytest.raises(DatabaseError) as refused:
        Database(engine=engine_for(url)).open()
    message = str(refused.value)
    assert "cannot connect to PostgreSQL" in message and "--database" in message
    assert "secret" not in message  # the password is never repeated


async def test_the_writer_reconnects_after_the_server_restarts(
    postgres_server: PostgresServer,
) -> None:
    """A failed commit on a broken connection fails its jobs; the next batch reconnects."""
    name = postgres_server.create_database()
    db = Database(commit_interval_s=0.01, engine=engine_for(postgres_server.url(name)))
    db.open()
    try:
        await db.write(gateway("before"))
        with psycopg.connect(postgres_server.admin_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
        with pytest.raises(DatabaseError):
            await db.write(gateway("during"))
        await db.write(gateway("after"))
        ids = await db.read(lambda c: sorted(r[0] for r in c.execute("SELECT id FROM gateways")))
        assert ids == ["after", "before"]
    finally:
        await db.close()
        postgres_server.drop_database(name)


async def test_a_notice_left_on_one_hub_reaches_the_other_hubs_once_committed(
    postgres_server: PostgresServer,
) -> None:
    """Two stores on one PostgreSQL: an every-hub listener hears the other's committed
    notices (LISTEN/NOTIFY), its own once (not echoed back), and none rolled back."""
    name = postgres_server.create_database()
    url = postgres_server.url(name)
    heard: dict[str, list[str]] = {"a": [], "b": []}
    local_only: list[str] = []
    hubs = {}
    for hub in ("a", "b"):
        db = Database(commit_interval_s=0.01, engine=engine_for(url))
        db.listen("outbox", heard[hub].append, every_hub=True)
        if hub == "b":
            db.listen("outbox", local_only.append)  # this hub's notices only
        db.open()
        hubs[hub] = db
    try:
        await asyncio.sleep(0.5)  # both listening (a notice before that is only late)

        def rolled_back(conn: Connection) -> None:
            conn.notify("outbox", "gw-rolled-back")
            raise ValueError("refused")

        with pytest.raises(ValueError):
            await hubs["a"].write(rolled_back)
        await hubs["a"].write(lambda conn: conn.notify("outbox", "gw-1"))
        await hubs["b"].write(lambda conn: conn.notify("outbox", "gw-2"))
        for _ in range(100):
            if "gw-1" in heard["b"] and "gw-2" in heard["a"]:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # room for an echo or a duplicate to show up
        assert heard["a"] == ["gw-1", "gw-2"]
        assert heard["b"] == ["gw-1", "gw-2"] or heard["b"] == ["gw-2", "gw-1"]
        assert local_only == ["gw-2"]
    finally:
        for db in hubs.values():
            await db.close()
        postgres_server.drop_database(name)


async def test_due_alert_deliveries_are_read_with_none_under_way(
    open_database: OpenDatabase,
) -> None:
    """With nothing to exclude, the query's filter is still a truth value on both engines."""
    db = open_database()
    try:
        assert await db.read(lambda conn: due_deliveries_in(conn, 0.0, (), 10)) == []
    finally:
        await db.close()
