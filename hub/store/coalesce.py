"""Many small writes of one kind as one job per group commit.

A thousand sidecars' heartbeat batches each queued as its own job cost the writer a
thousand savepoints and statements per commit (on PostgreSQL, a thousand round trips
each). A `Coalescer` queues one job for everything submitted until that job runs: the
job takes all of it and writes it in a few statements; each submitter gets its answer
once that commit is durable. If the combined job fails, each item is written again in
a job of its own, so one bad item fails only its own submitter.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from missioncontrol.log import get_logger

log = get_logger("hub.store")

Item = TypeVar("Item")
X = TypeVar("X")  # what a write job is given: a connection, or a Transition


class Coalescer(Generic[Item, X]):
    """`write(job)` runs `job(x)` in a group commit (Database.write, Reconciler.write);
    `apply(x, items)` writes `items`, in the order submitted."""

    def __init__(
        self,
        name: str,
        write: Callable[[Callable[[X], None]], Awaitable[None]],
        apply: Callable[[X, list[Item]], None],
    ) -> None:
        self.name = name
        self._write = write
        self._apply = apply
        # Submissions are added on the event loop and taken on the writer's thread.
        self._lock = threading.Lock()
        self._pending: list[tuple[Item, asyncio.Future[None]]] = []
        self._queued = False  # a job is queued that will take what is pending
        self._flushes: set[asyncio.Task[None]] = set()

    async def submit(self, item: Item) -> None:
        """Write `item` in the next group commit; return once it is durable."""
        await self.offer(item)  # a cancelled submitter's item is still written

    def offer(self, item: Item) -> asyncio.Future[None]:
        """`submit` without a coroutine: the future is done once `item` is durable (for
        a caller on the hot path that answers in a callback)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._lock:
            self._pending.append((item, future))
            queue_job = not self._queued
            self._queued = True
        if queue_job:
            flush = asyncio.ensure_future(self._flush())
            self._flushes.add(flush)  # held until done: a task nobody holds may vanish
            flush.add_done_callback(self._flushes.discard)
        return future

    def _take(self) -> list[tuple[Item, asyncio.Future[None]]]:
        with self._lock:
            taken, self._pending, self._queued = self._pending, [], False
        return taken

    async def _flush(self) -> None:
        taken: list[tuple[Item, asyncio.Future[None]]] | None = None

        def job(x: X) -> None:
            nonlocal taken
            if taken is None:  # a retried job (another writer's lock) writes the same items
                taken = self._take()
            self._apply(x, [item for item, _ in taken])

        try:
            await self._write(job)
        except Exception as exc:
            if taken is None:  # never ran (the database closed): nobody else will answer
                _answer(self._take(), exc)
            elif len(taken) == 1:
                _answer(taken, exc)
            else:
                log.warning(
                    "database.coalesced.split", name=self.name, items=len(taken), error=str(exc)
                )
                await asyncio.gather(*(self._alone(item, future) for item, future in taken))
            return
        _answer(taken or [], None)

    async def _alone(self, item: Item, future: asyncio.Future[None]) -> None:
        try:
            await self._write(lambda x: self._apply(x, [item]))
        except Exception as exc:
            _answer([(item, future)], exc)
        else:
            _answer([(item, future)], None)


def _answer(taken: list[tuple[Item, asyncio.Future[None]]], error: BaseException | None) -> None:
    for _, future in taken:
        if future.done():  # its submitter was cancelled
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
