"""Agent API calls forwarded to the hub over the link, matched to their answers.

An agent only ever talks to 127.0.0.1: its calls to the hub's agent API travel as
AgentCall messages on the sidecar's one stream, and come back as AgentCallResult.
Calls are not queued across a disconnect: an agent gets a clear 503 and retries.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

from protos import link_pb2 as pb

CALL_TIMEOUT_S = 30.0


class HubUnavailable(Exception):
    """The link to the hub is down, or the hub did not answer in time."""


class HubCalls:
    def __init__(
        self, send: Callable[[pb.SidecarMessage], None], connected: Callable[[], bool]
    ) -> None:
        self.send = send
        self.connected = connected
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[pb.AgentCallResult]] = {}

    async def call(
        self, request: pb.AgentCall, timeout_s: float = CALL_TIMEOUT_S
    ) -> pb.AgentCallResult:
        if not self.connected():
            raise HubUnavailable(
                "the hub is unreachable from this sidecar right now; retry "
                "in a few seconds (heartbeats still work: they are queued)"
            )
        request.call_id = next(self._ids)
        future: asyncio.Future[pb.AgentCallResult] = asyncio.get_running_loop().create_future()
        self._pending[request.call_id] = future
        try:
            self.send(pb.SidecarMessage(agent_call=request))
            async with asyncio.timeout(timeout_s):
                return await future
        except TimeoutError:
            raise HubUnavailable(f"the hub did not answer within {timeout_s:g} s") from None
        finally:
            self._pending.pop(request.call_id, None)

    def on_result(self, result: pb.AgentCallResult) -> None:
        future = self._pending.get(result.call_id)
        if future is not None and not future.done():
            future.set_result(result)

    def on_link_down(self) -> None:
        """Answers on the old stream will never come: fail the waiting calls now."""
        for future in self._pending.values():
            if not future.done():
                future.set_exception(HubUnavailable("the link to the hub dropped mid-call; retry"))
