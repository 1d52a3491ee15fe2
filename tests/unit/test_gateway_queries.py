"""The hub's side of gateway queries: one answer per question, from the gateway asked."""

from __future__ import annotations

import asyncio

import pytest

from hub.link.queries import GatewayQueries, QueryFailed
from hub.link.server import SessionRegistry, SidecarSession
from protos import link_pb2 as pb


def _registry(*gateway_ids: str) -> SessionRegistry:
    registry = SessionRegistry()
    for gateway_id in gateway_ids:
        registry.attach(
            SidecarSession(gateway_id=gateway_id, hello=pb.Hello(gateway_id=gateway_id))
        )
    return registry


async def _asked(registry: SessionRegistry, gateway_id: str) -> pb.GatewayQuery:
    session = registry.get(gateway_id)
    assert session is not None
    message = await session.outgoing.get()
    assert isinstance(message, pb.HubMessage)
    return message.gateway_query


async def test_the_answer_reaches_the_caller_and_another_gateways_answer_does_not() -> None:
    registry = _registry("gw-a", "gw-b")
    queries = GatewayQueries(registry, timeout_s=0.3)
    asking = asyncio.ensure_future(queries.ask("gw-a", pb.GatewayQuery.SESSIONS, agent_id="mc-1"))
    query = await _asked(registry, "gw-a")
    assert (query.kind, query.agent_id, query.limit) == (pb.GatewayQuery.SESSIONS, "mc-1", 200)
    # Query ids are hub-wide: gw-b cannot answer gw-a's question.
    queries.answer("gw-b", pb.GatewayQueryResult(query_id=query.query_id, sessions_total=99))
    await asyncio.sleep(0.05)
    assert not asking.done()
    queries.answer("gw-a", pb.GatewayQueryResult(query_id=query.query_id, sessions_total=3))
    assert (await asking).sessions_total == 3
    assert queries.in_flight == 0
    queries.answer("gw-a", pb.GatewayQueryResult(query_id=query.query_id))  # late: ignored


async def test_no_session_timeout_and_disconnect_each_fail_with_their_own_code() -> None:
    registry = _registry("gw-a")
    queries = GatewayQueries(registry, timeout_s=0.1)
    with pytest.raises(QueryFailed) as missing:
        await queries.ask("gw-x", pb.GatewayQuery.STATUS)
    assert missing.value.code == "sidecar_disconnected"
    with pytest.raises(QueryFailed) as slow:
        await queries.ask("gw-a", pb.GatewayQuery.STATUS)
    assert slow.value.code == "sidecar_timeout" and "0.1 s" in str(slow.value)

    queries.timeout_s = 10
    asking = asyncio.ensure_future(queries.ask("gw-a", pb.GatewayQuery.STATUS))
    await asyncio.sleep(0.01)
    queries.link_closed("gw-a")
    with pytest.raises(QueryFailed) as dropped:
        await asking
    assert dropped.value.code == "sidecar_disconnected" and queries.in_flight == 0
