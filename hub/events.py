"""In-process event bus: agent changes pushed to dashboards the moment they commit.

Publishers call `publish` after a change is durable; each subscriber has a
bounded queue (a subscriber that falls behind is disconnected rather than
letting memory grow). A ring of recent events serves `since` replays.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass
from typing import Any

RING_SIZE = 10_000
SUBSCRIBER_QUEUE = 1_000


@dataclass(frozen=True)
class Event:
    id: int
    at: float
    kind: str  # "agent"; "gateway" (its link opened or closed)
    board_id: str | None
    gateway_id: str | None
    data: dict[str, Any]


class StreamEnded(Exception):
    """A subscription is over; the message says why and what the client should do."""


class SubscriberTooSlow(StreamEnded):
    pass


class BusClosed(StreamEnded):
    pass


# What ends a subscription, in its queue: the exception its reader raises.
_TOO_SLOW = SubscriberTooSlow("event stream fell behind; reconnect with ?since=")
_CLOSED = BusClosed("the hub is shutting down; reconnect in a few seconds")


class Subscription:
    def __init__(
        self, bus: EventBus, board_id: str | None, kinds: frozenset[str] | None = None
    ) -> None:
        self.bus = bus
        self.board_id = board_id
        self.kinds = kinds  # None: every kind
        self.queue: asyncio.Queue[Event | StreamEnded] = asyncio.Queue(maxsize=SUBSCRIBER_QUEUE)

    def wants(self, event: Event) -> bool:
        return _matches(event, self.board_id, self.kinds)

    async def next(self, timeout_s: float) -> Event | None:
        """The next event, or None after `timeout_s` of quiet (time for a keep-alive)."""
        try:
            async with asyncio.timeout(timeout_s):  # not wait_for: it can swallow a cancel
                event = await self.queue.get()
        except TimeoutError:
            return None
        if isinstance(event, StreamEnded):
            raise event
        return event

    def end(self, why: StreamEnded) -> None:
        """Stop delivering; the reader gets `why` next (its queue makes room for it)."""
        self.close()
        if self.queue.full():
            self.queue.get_nowait()
        self.queue.put_nowait(why)

    def close(self) -> None:
        self.bus._subscribers.discard(self)


def first_event_id(started_at: float) -> int:
    """Ids start at a thousand per millisecond of the hub's start time, so they keep
    increasing across restarts (a run would have to publish more than a thousand events
    per millisecond it ran to reach the next run's) and a client's Last-Event-ID from an
    earlier run is older than every id of this one. Below 2**53: exact in JavaScript."""
    return int(started_at * 1000) * 1000 + 1


class EventBus:
    def __init__(self, started_at: float | None = None) -> None:
        self.first_id = first_event_id(time.time() if started_at is None else started_at)
        self.last_id = self.first_id - 1  # the id of the latest event published
        self._ring: collections.deque[Event] = collections.deque(maxlen=RING_SIZE)
        self._subscribers: set[Subscription] = set()
        self._closed = False

    def publish(
        self, kind: str, data: dict[str, Any], *, board_id: str | None, gateway_id: str | None
    ) -> None:
        self.last_id += 1
        event = Event(self.last_id, time.time(), kind, board_id, gateway_id, data)
        self._ring.append(event)
        for subscriber in list(self._subscribers):
            if not subscriber.wants(event):
                continue
            try:
                subscriber.queue.put_nowait(event)
            except asyncio.QueueFull:
                subscriber.end(_TOO_SLOW)

    def close(self) -> None:
        """End every subscription now, and any made later (hub shutdown): streams finish
        at once instead of holding the HTTP server's stop."""
        self._closed = True
        for subscriber in list(self._subscribers):
            subscriber.end(_CLOSED)

    def __len__(self) -> int:
        """How many subscribers listen now."""
        return len(self._subscribers)

    def subscribe(self, board_id: str | None, kinds: frozenset[str] | None = None) -> Subscription:
        subscription = Subscription(self, board_id, kinds)
        self._subscribers.add(subscription)
        if self._closed:
            subscription.end(_CLOSED)
        return subscription

    def since(
        self, at: float, board_id: str | None, kinds: frozenset[str] | None = None
    ) -> list[Event]:
        return [e for e in self._ring if e.at > at and _matches(e, board_id, kinds)]

    def after(
        self, event_id: int, board_id: str | None, kinds: frozenset[str] | None = None
    ) -> list[Event] | None:
        """The events after `event_id` (a Last-Event-ID), or None when the ring no longer
        holds them all (an earlier run's id, or too long ago): then send current state."""
        oldest = self._ring[0].id if self._ring else self.last_id + 1
        if event_id + 1 < oldest or event_id > self.last_id:
            return None
        return [e for e in self._ring if e.id > event_id and _matches(e, board_id, kinds)]


def _matches(event: Event, board_id: str | None, kinds: frozenset[str] | None) -> bool:
    return (board_id is None or event.board_id == board_id) and (
        kinds is None or event.kind in kinds
    )
