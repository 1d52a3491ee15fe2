"""Durable feeds: rows with lasting ids (events, board memory) pushed to live streams.

A feed hears of each row once its commit is durable (a database notice) and hands it
to every subscriber whose filter wants it. Ids are the rows' own, so a client that
reconnects with `Last-Event-ID` resumes where it left off, across hub restarts too:
its stream replays the rows after that id from the database, then goes on live, and
drops a live row it already replayed. A subscriber that falls behind is ended (its
queue is bounded) and told to reconnect; nothing grows without bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

SUBSCRIBER_QUEUE = 1_000

Row = dict[str, Any]  # a row with an integer "id"


class FeedEnded(Exception):
    """The subscription is over; the message says why and what the client should do."""


_TOO_SLOW = FeedEnded("stream fell behind; reconnect (Last-Event-ID resumes it)")
_CLOSED = FeedEnded("the hub is shutting down; reconnect in a few seconds")


class FeedSubscription:
    def __init__(self, feed: Feed, wants: Callable[[Row], bool]) -> None:
        self.feed = feed
        self.wants = wants
        self.queue: asyncio.Queue[Row | FeedEnded] = asyncio.Queue(maxsize=SUBSCRIBER_QUEUE)

    async def next(self, timeout_s: float) -> Row | None:
        """The next row, or None after `timeout_s` of quiet (time for a keep-alive)."""
        try:
            async with asyncio.timeout(timeout_s):  # not wait_for: it can swallow a cancel
                item = await self.queue.get()
        except TimeoutError:
            return None
        if isinstance(item, FeedEnded):
            raise item
        return item

    def end(self, why: FeedEnded) -> None:
        self.close()
        if self.queue.full():
            self.queue.get_nowait()
        self.queue.put_nowait(why)

    def close(self) -> None:
        self.feed._subscribers.discard(self)


class Feed:
    """Fan-out of committed rows to live subscribers (the database listener calls `publish`)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._subscribers: set[FeedSubscription] = set()
        self._closed = False

    def publish(self, row: Row) -> None:
        for subscriber in list(self._subscribers):
            if not subscriber.wants(row):
                continue
            try:
                subscriber.queue.put_nowait(row)
            except asyncio.QueueFull:
                subscriber.end(_TOO_SLOW)

    def subscribe(self, wants: Callable[[Row], bool]) -> FeedSubscription:
        subscription = FeedSubscription(self, wants)
        self._subscribers.add(subscription)
        if self._closed:
            subscription.end(_CLOSED)
        return subscription

    def close(self) -> None:
        """End every subscription now and any made later (hub shutdown)."""
        self._closed = True
        for subscriber in list(self._subscribers):
            subscriber.end(_CLOSED)

    def __len__(self) -> int:
        return len(self._subscribers)
