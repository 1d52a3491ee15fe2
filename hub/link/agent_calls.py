"""Agent API calls that sidecars forward over the link, answered by the hub's own API.

The call is replayed against the hub's HTTP listener on loopback, so it gets
exactly the validation, token check, rate limits and errors of a direct call; the
hub also checks that the calling agent belongs to the forwarding gateway.
"""

from __future__ import annotations

import aiohttp

from missioncontrol.agent_api import AGENT_API_PREFIX, TOKEN_HEADER
from missioncontrol.log import get_logger
from protos import link_pb2 as pb

log = get_logger("hub.link.agent_calls")

VIA_GATEWAY_HEADER = "X-MC-Via-Gateway"
MAX_RESULT_BYTES = 2 * 1024 * 1024
FORWARDED_HEADERS = ("Retry-After", "X-Request-Id")


class AgentCallForwarder:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url  # the hub's own HTTP listener, on loopback
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def handle(self, gateway_id: str, call: pb.AgentCall) -> pb.AgentCallResult:
        result = pb.AgentCallResult(call_id=call.call_id, content_type="application/json")
        if not call.path.startswith(AGENT_API_PREFIX + "/") or ".." in call.path:
            result.status = 404
            result.body = b'{"detail": "only the agent API can be reached through the link"}'
            return result
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        url = f"{self.base_url}{call.path}" + (f"?{call.query}" if call.query else "")
        headers = {TOKEN_HEADER: call.agent_token, VIA_GATEWAY_HEADER: gateway_id}
        if call.content_type:
            headers["Content-Type"] = call.content_type
        try:
            async with self._session.request(
                call.method, url, data=call.body or None, headers=headers
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
