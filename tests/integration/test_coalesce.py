"""Coalesced writes on both engines: everything submitted before the job runs rides in
it; each submitter hears once its item is durable; a bad item fails only itself."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from hub.store.coalesce import Coalescer
from hub.store.database import Connection, Database, DatabaseClosed

OpenDatabase = Callable[..., Database]


class Written:
    """Each item is a gateway row; `calls` holds the items of every `apply`."""

    def __init__(self, db: Database, bad: str = "") -> None:
        self.db = db
        self.bad = bad
        self.calls: list[list[str]] = []
        self.coalescer: Coalescer[str, Connection] = Coalescer("test", db.write, self.apply)

    def apply(self, conn: Connection, items: list[str]) -> None:
        self.calls.append(list(items))
        for item in items:
            if item == self.bad:
                raise ValueError(f"{item} refused")
            conn.execute(
                "INSERT INTO gateways (id, name, created_at, updated_at) VALUES (?, ?, 0, 0)",
                (item, item),
            )

    async def rows(self) -> set[str]:
        return await self.db.read(
            lambda c: {r[0] for r in c.execute("SELECT id FROM gateways").fetchall()}
        )


async def test_submissions_waiting_for_a_commit_are_one_job(open_database: OpenDatabase) -> None:
    db = open_database(commit_interval_s=0.2)
    try:
        written = Written(db)
        names = [f"gw-{i}" for i in range(50)]

        async def submit(name: str) -> bool:
            await written.coalescer.submit(name)
            return name in await written.rows()  # durable (a reader sees it) on return

        assert all(await asyncio.gather(*(submit(n) for n in names)))
        assert len(written.calls) == 1 and written.calls[0] == names  # in submission order
        # Later submissions make a new job.
        await written.coalescer.submit("late")
        assert written.calls[-1] == ["late"]
    finally:
        await db.close()


async def test_a_bad_item_fails_only_its_submitter(open_database: OpenDatabase) -> None:
    db = open_database(commit_interval_s=0.2)
    try:
        written = Written(db, bad="gw-3")
        names = [f"gw-{i}" for i in range(8)]
        outcomes = await asyncio.gather(
            *(written.coalescer.submit(n) for n in names), return_exceptions=True
        )
        assert isinstance(outcomes[3], ValueError) and "gw-3 refused" in str(outcomes[3])
        assert [o for i, o in enumerate(outcomes) if i != 3] == [None] * 7
        assert await written.rows() == set(names) - {"gw-3"}
        assert written.calls[0] == names  # together first, then each alone
        assert sorted(map(tuple, written.calls[1:])) == sorted((n,) for n in names)
    finally:
        await db.close()


async def test_a_retried_job_writes_the_same_items_once(
    open_database: OpenDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job that met another writer's lock runs again in a later commit: with the items
    it took, not those submitted meanwhile (those are the next job's)."""

    class Deadlocked(Exception):
        pass

    db = open_database(commit_interval_s=0.05)
    monkeypatch.setattr(db.engine, "transient_errors", (Deadlocked,))
    try:
        written = Written(db)
        inner = written.apply
        failed = False

        def apply_once_deadlocked(conn: Connection, items: list[str]) -> None:
            nonlocal failed
            inner(conn, items)
            if not failed:
                failed = True
                raise Deadlocked("deadlock detected")

        written.coalescer = Coalescer("test", db.write, apply_once_deadlocked)
        first = [f"gw-{i}" for i in range(5)]
        await asyncio.gather(*(written.coalescer.submit(n) for n in first))
        await written.coalescer.submit("next")
        assert written.calls[:2] == [first, first] and written.calls[2] == ["next"]
        assert await written.rows() == {*first, "next"}
    finally:
        await db.close()


async def test_a_cancelled_submitters_item_is_still_written(open_database: OpenDatabase) -> None:
    db = open_database(commit_interval_s=0.5)
    try:
        written = Written(db)
        await written.coalescer.submit("warm")  # the next commit is paced
        cancelled = asyncio.ensure_future(written.coalescer.submit("cancelled"))
        await asyncio.sleep(0.05)
        cancelled.cancel()
        await written.coalescer.submit("after")
        assert {"cancelled", "after"} <= await written.rows()
    finally:
        await db.close()


async def test_a_closed_database_answers_every_submitter(open_database: OpenDatabase) -> None:
    db = open_database()
    await db.close()
    written = Written(db)
    outcomes = await asyncio.wait_for(
        asyncio.gather(
            *(written.coalescer.submit(f"gw-{i}") for i in range(3)), return_exceptions=True
        ),
        timeout=10,
    )
    assert all(isinstance(o, DatabaseClosed) for o in outcomes)
