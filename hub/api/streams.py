"""Server-sent event streams that resume by a durable id, as `EventSource` expects.

Each event carries its row's lasting id (`id:`). A client that reconnects sends the
last one it saw (`Last-Event-ID`, which browsers send by themselves, or
`?last_event_id=`): the stream replays the rows after it from the database, then goes
on live. The subscription starts before the replay, so no row falls between the two,
and a live row already replayed is dropped. Keep-alive comments every 15 s.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from hub.api.core import Call
from hub.feeds import FeedEnded, FeedSubscription, Row
from missioncontrol.http import ApiError

KEEPALIVE_S = 15.0
REPLAY_PAGE = 500
MAX_REPLAY = 10_000  # rows replayed on one reconnect; beyond that, page the list instead


def last_event_id(call: Call, query_value: int | None) -> int | None:
    """The id to resume after: the `Last-Event-ID` header, else the query's."""
    header = call.request.headers.get("Last-Event-ID", "").strip()
    if header:
        if not header.isdigit() or len(header) > 19:
            raise ApiError(
                422, "Last-Event-ID must be the id of an event this stream sent (digits)"
            )
        return int(header)
    return query_value


def sse_response(call: Call) -> web.StreamResponse:
    """An event stream's response, not yet prepared."""
    return web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Request-Id": call.request.get("request_id", ""),
        }
    )


async def durable_stream(
    call: Call,
    subscription: FeedSubscription,
    *,
    after: int | None,
    replay: Callable[[int, int], Awaitable[list[Row]]],
    frame: Callable[[Row], tuple[str, dict[str, Any]]],
    keepalive_s: float = KEEPALIVE_S,
) -> web.StreamResponse:
    """Serve `subscription` as SSE: rows after `after` first (`replay(after_id, limit)`,
    oldest first), then live ones. `frame(row)` is the event name and its data."""
    response = sse_response(call)
    sent = after or 0
    try:
        await response.prepare(call.request)
        await response.write(b"retry: 3000\n\n")
        if after is not None:
            replayed = 0
            while replayed < MAX_REPLAY:
                rows = await replay(sent, REPLAY_PAGE)
                for row in rows:
                    await response.write(_frame(row, frame))
                    sent = row["id"]
                replayed += len(rows)
                if len(rows) < REPLAY_PAGE:
                    break
            else:
                await response.write(
                    b": more events were missed than one reconnect replays; "
                    b"read them from the list endpoint\n\n"
                )
        while True:
            try:
                live = await subscription.next(keepalive_s)
            except FeedEnded as exc:
                await response.write(f": {exc}\n\n".encode())
                break
            if live is None:
                await response.write(b": keep-alive\n\n")
            elif live["id"] > sent:
                await response.write(_frame(live, frame))
                sent = live["id"]
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        subscription.close()
    return response


def _frame(row: Row, frame: Callable[[Row], tuple[str, dict[str, Any]]]) -> bytes:
    event, data = frame(row)
    return f"id: {row['id']}\nevent: {event}\ndata: {json.dumps(data, default=str)}\n\n".encode()
