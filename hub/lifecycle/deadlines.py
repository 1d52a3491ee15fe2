"""The reconciler's schedule: each agent's next deadline, earliest first.

One deadline per agent (a newer one replaces it) in a heap with lazy deletion: a
replaced or cancelled entry stays in the heap until it surfaces and is skipped. The
rows hold the same deadlines, so a hub restart rebuilds the schedule from them.
Pure bookkeeping on a clock value the caller passes; only `wait` touches time.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
from collections.abc import Callable, Iterable
from typing import NamedTuple


class Due(NamedTuple):
    """Ordered by time first; a tuple, so the heap compares them in C (100,000 at a start)."""

    at: float
    agent_id: str
    generation: int


class DeadlineSchedule:
    def __init__(self) -> None:
        self._heap: list[Due] = []
        self._current: dict[str, Due] = {}
        self._changed = asyncio.Event()

    def __len__(self) -> int:
        return len(self._current)

    def set(self, agent_id: str, at: float | None, generation: int) -> None:
        """Schedule the agent's deadline at `at` (replacing any), or cancel it (None)."""
        if at is None:
            self._current.pop(agent_id, None)
            return
        due = Due(at, agent_id, generation)
        self._current[agent_id] = due
        heapq.heappush(self._heap, due)
        self._changed.set()

    def load(self, deadlines: Iterable[tuple[str, float, int]]) -> None:
        """`set` for many (agent id, at, generation) at once, in linear time: the rows'
        deadlines when the hub starts."""
        for agent_id, at, generation in deadlines:
            due = Due(at, agent_id, generation)
            self._current[agent_id] = due
            self._heap.append(due)
        heapq.heapify(self._heap)
        self._changed.set()

    def get(self, agent_id: str) -> Due | None:
        return self._current.get(agent_id)

    def next_at(self) -> float | None:
        """When the earliest live deadline is due (None: nothing scheduled)."""
        self._drop_superseded()
        return self._heap[0].at if self._heap else None

    def pop_due(self, now: float, limit: int) -> list[Due]:
        """Take up to `limit` deadlines due at `now`, earliest first; they leave the schedule."""
        due: list[Due] = []
        while len(due) < limit:
            self._drop_superseded()
            if not self._heap or self._heap[0].at > now:
                break
            entry = heapq.heappop(self._heap)
            del self._current[entry.agent_id]
            due.append(entry)
        return due

    async def wait(self, clock: Callable[[], float]) -> None:
        """Return when the earliest deadline is due or the schedule changed."""
        self._changed.clear()
        next_at = self.next_at()
        timeout = None if next_at is None else max(0.0, next_at - clock())
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._changed.wait()

    def _drop_superseded(self) -> None:
        while self._heap and self._current.get(self._heap[0].agent_id) != self._heap[0]:
            heapq.heappop(self._heap)
