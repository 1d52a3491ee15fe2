"""Live updates for the dashboard: the hub's event bus as a server-sent event stream.

The browser's EventSource cannot send a bearer token, so the dashboard has its own
stream on the session cookie, fed by the same in-process bus as
`/api/v1/agents/stream`. It carries what changed, not the page: `agent` events (an
agent's lifecycle moved) and `gateway` events (a sidecar's stream opened or closed),
each with the ids a page needs to decide whether to refresh itself.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from hub.events import Event, EventBus, StreamEnded

KEEPALIVE_S = 15.0
RETRY_MS = 3000  # how soon a browser reconnects after the stream ends


def frame(event: Event) -> bytes:
    data: dict[str, Any] = {
        "kind": event.kind,
        "board_id": event.board_id,
        "gateway_id": event.gateway_id,
    }
    if event.kind == "agent":
        data["id"] = event.data.get("id")
        data["status"] = event.data.get("status")
    elif event.kind == "gateway":
        data["id"] = event.gateway_id
        data["connected"] = bool(event.data.get("connected"))
    return f"id: {event.id}\nevent: {event.kind}\ndata: {json.dumps(data)}\n\n".encode()


async def stream(request: web.Request, bus: EventBus) -> web.StreamResponse:
    subscription = bus.subscribe(None)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",  # a proxy in front must not hold events back
        }
    )
    try:
        await response.prepare(request)
        await response.write(f"retry: {RETRY_MS}\n\n".encode())
        while True:
            try:
                event = await subscription.next(KEEPALIVE_S)
            except StreamEnded as exc:
                await response.write(f": {exc}\n\n".encode())
                break
            await response.write(b": keep-alive\n\n" if event is None else frame(event))
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        subscription.close()
    return response


class LinkNotices:
    """Tells the dashboard's streams when a gateway's sidecar connects or disconnects."""

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus

    def link_changed(self, gateway_id: str, up: bool) -> None:
        self.bus.publish(
            "gateway", {"id": gateway_id, "connected": up}, board_id=None, gateway_id=gateway_id
        )
