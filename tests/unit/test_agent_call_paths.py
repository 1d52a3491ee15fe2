"""A forwarded agent call reaches only a declared agent route, by a plain path.

The forwarder refuses before any request is made: its base URL points at a closed
port, so a call it did send would come back 502, not 404."""

from __future__ import annotations

import re

import pytest

from hub.api import build_api
from hub.link.agent_calls import AgentCallForwarder
from missioncontrol.agent_api import plain_agent_path
from protos import link_pb2 as pb

API = build_api()
BOARD = "7b1f8c2e-2d4b-4a8e-9d0a-3c5e6f7a8b9c"

HOSTILE = [
    "/api/v1/agent/%252e%252e/openapi.json",  # double-encoded dot segments (from an agent)
    "/api/v1/agent/%2e%2e/openapi.json",  # single-encoded (what a sidecar passes on)
    "/api/v1/agent/%2E%2E/%2E%2E/readyz",
    "/api/v1/agent/../../api/v1/gateways",  # plain dot segments
    "/api/v1/agent/./boards",
    "/api/v1/agent/boards/..%2f..%2fgateways",
    "/api/v1/agent/boards%2f..%2f..%2fgateways",  # an encoded slash
    "/api/v1/agent/boards\\..\\..\\gateways",
    "/api/v1/agent//boards",
    "/api/v1/agent/boards/",
    "/api/v1/agentX/boards",
    "/api/v1/gateways",  # an admin route
    "/openapi.json",
    "/readyz",
    f"/api/v1/boards/{BOARD}/webhooks/{BOARD}",  # a public route, but no agent route
    "/api/v1/agent/heartbeat\x00",
    "/api/v1/agent/" + "a" * 5000,
]


@pytest.mark.parametrize("path", HOSTILE)
async def test_a_path_that_is_not_a_plain_agent_route_is_refused_unsent(path: str) -> None:
    forwarder = AgentCallForwarder("http://127.0.0.1:9", API.is_agent_route)
    try:
        result = await forwarder.handle("gw-1", pb.AgentCall(call_id=7, method="GET", path=path))
    finally:
        await forwarder.close()
    assert (result.call_id, result.status) == (7, 404)
    assert b"only the agent API" in result.body


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", f"/api/v1/boards/{BOARD}/webhooks/{BOARD}"),  # public ingest: not for agents
        ("DELETE", f"/api/v1/agent/boards/{BOARD}"),  # an agent route's path, not its method
        ("PATCH", "/api/v1/agent/boards"),
    ],
)
async def test_only_the_declared_method_of_an_agent_route_is_forwarded(
    method: str, path: str
) -> None:
    forwarder = AgentCallForwarder("http://127.0.0.1:9", API.is_agent_route)
    try:
        result = await forwarder.handle("gw-1", pb.AgentCall(method=method, path=path))
    finally:
        await forwarder.close()
    assert result.status == 404


def test_every_agent_route_of_the_api_is_reachable_by_its_plain_path() -> None:
    agent_routes = [r for r in API.routes if r.auth.value == "agent"]
    assert len(agent_routes) >= 5
    for route in agent_routes:
        path = re.sub(r"\{[^}]+\}", BOARD, route.path)  # every path parameter
        assert plain_agent_path(path), path
        assert API.is_agent_route(route.method, path), (route.method, path)
