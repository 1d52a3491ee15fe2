"""Agent API calls that sidecars forward over the link, answered by the hub's own API.

The call is replayed against the hub's HTTP listener on loopback, so it gets
exactly the validation, token check, rate limits and errors of a direct call; the
hub also checks that the calling agent belongs to the forwarding gateway.

Only routes that declare themselves agent routes are reached, and only by a plain
path: no percent-escapes, dot segments, empty segments or backslashes, so no
decoding or normalising on the way can turn it into another route.
"""

from __future__ import annotations

from collections.abc import Callable

import aiohttp
import yarl

from missioncontrol.agent_api import TOKEN_HEADER, plain_agent_path
from missioncontrol.log import get_logger
from protos import link_pb2 as pb

log = get_logger("hub.link.agent_calls")

VIA_GATEWAY_HEADER = "X-MC-Via-Gateway"
MAX_RESULT_BYTES = 2 * 1024 * 1024
FORWARDED_HEADERS = ("Retry-After", "X-Request-Id")


class AgentCallForwarder:
    def __init__(self, base_url: str, is_agent_route: Callable[[str, str], bool]) -> None:
        self.base_url = yarl.URL(base_url)  # the hub's own HTTP listener, on loopback
        self.is_agent_route = is_agent_route  # (method, path) -> whether agents may call it
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def handle(self, gateway_id: str, call: pb.AgentCall) -> pb.AgentCallResult:
        result = pb.AgentCallResult(call_id=call.call_id, content_type="application/json")
        method = call.method.upper()
        if not plain_agent_path(call.path) or not self.is_agent_route(method, call.path):
            log.warning(
                "agent_call.refused", gateway_id=gateway_id, method=method, path=call.path[:200]
            )
            result.status = 404
            result.body = (
                b'{"detail": "only the agent API can be reached through the link: '
                b'no such agent route"}'
            )
            return result
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        url = self.base_url.with_path(call.path, encoded=True).with_query(call.query or None)
        headers = {TOKEN_HEADER: call.agent_token, VIA_GATEWAY_HEADER: gateway_id}
        if call.content_type:
            headers["Content-Type"] = call.content_type
        try:
            # The hub's own listener on loopback: over TLS its certificate names the hub, not
            # necessarily 127.0.0.1, and nothing else can sit on the port we bound.
            async with self._session.request(
                method,
                url,
                data=call.body or None,
                headers=headers,
                ssl=self.base_url.scheme != "https",
            ) as response:
                body = await response.content.read(MAX_RESULT_BYTES + 1)
                if len(body) > MAX_RESULT_BYTES:
                    result.status = 502
                    result.body = b'{"detail": "the hub answer is too large for the link"}'
                    return result
                result.status = response.status
                result.body = body
                result.content_type = response.headers.get("Content-Type", "application/json")
                for name in FORWARDED_HEADERS:
                    if name in response.headers:
                        result.headers[name] = response.headers[name]
        except aiohttp.ClientError as exc:
            log.error("agent_call.failed", gateway_id=gateway_id, path=call.path, error=str(exc))
            result.status = 502
            result.body = b'{"detail": "the hub could not answer this call; retry"}'
        return result
