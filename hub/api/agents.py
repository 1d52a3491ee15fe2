"""Agents, admin side: list, read, create, update, delete, rotate token, live stream."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import Any

from aiohttp import web

from hub.api.core import Api, Call, Query
from hub.api.deps import deps
from hub.api.schemas import (
    Accepted,
    AdminHeartbeat,
    AgentCreate,
    AgentFilter,
    AgentPage,
    AgentRead,
    AgentUpdate,
    ForceQuery,
    TokenRotate,
)
from hub.events import StreamEnded
from hub.provisioning.agents import (
    AgentConflict,
    AgentError,
    AgentRow,
    agent_json,
    list_agents_in,
    load_agent,
)
from hub.provisioning.rendering import AgentKind
from hub.provisioning.service import AgentSpec
from missioncontrol.http import ApiError
from protos import link_pb2 as pb
from protos.contract import timestamp

KEEPALIVE_S = 15.0
AGENT_EVENTS = frozenset({"agent"})  # the bus carries other kinds too


class StreamQuery(Query):
    board_id: str | None = None
    since: str | None = None


def agent_spec(body: AgentCreate) -> AgentSpec:
    """What a create request asks for (the API's and the dashboard's form alike)."""
    kind = (
        AgentKind.MAIN
        if body.is_gateway_main
        else AgentKind.LEAD
        if body.is_board_lead
        else AgentKind.WORKER
    )
    return AgentSpec(
        name=body.name,
        board_id=body.board_id,
        gateway_id=body.gateway_id,
        kind=kind,
        identity_profile=body.identity_profile,
        heartbeat_config=body.heartbeat_config.model_dump() if body.heartbeat_config else None,
    )


def agent_read(agent: AgentRow) -> AgentRead:
    return AgentRead(**agent_json(agent))


async def agent_or_404(call: Call) -> AgentRow:
    agent_id = call.request.match_info["agent_id"]
    agent = await deps(call.request).db.read(lambda conn: load_agent(conn, agent_id))
    if agent is None:
        raise ApiError(404, "agent not found")
    return agent


def register(api: Api) -> None:
    tags = ("agents",)

    @api.route(
        "GET",
        "/api/v1/agents",
        summary="List agents",
        tags=tags,
        query=AgentFilter,
        response=AgentPage,
    )
    async def list_agents(call: Call) -> AgentPage:
        q = call.query
        agents, total = await deps(call.request).db.read(
            lambda conn: list_agents_in(
                conn,
                board_id=q.board_id,
                gateway_id=q.gateway_id,
                managed=q.is_mc_agent is not False,
                limit=q.limit,
                offset=q.offset,
            )
        )
        return AgentPage(
            items=[agent_read(a) for a in agents], total=total, limit=q.limit, offset=q.offset
        )

    @api.route(
        "POST",
        "/api/v1/agents",
        summary="Create and provision an agent",
        tags=tags,
        body=AgentCreate,
        response=AgentRead,
        status=201,
    )
    async def create_agent(call: Call) -> AgentRead:
        try:
            agent = await deps(call.request).provisioning.create_agent(agent_spec(call.body))
        except AgentConflict as exc:
            raise ApiError(409, str(exc)) from None
        except AgentError as exc:
            raise ApiError(422, str(exc)) from None
        return agent_read(agent)

    @api.route(
        "GET",
        "/api/v1/agents/stream",
        summary="Server-sent events: agent changes as they happen",
        tags=tags,
        query=StreamQuery,
    )
    async def stream_agents(call: Call) -> web.StreamResponse:
        return await _stream(call)

    @api.route(
        "GET",
        "/api/v1/agents/{agent_id}",
        summary="Read an agent with every lifecycle field",
        tags=tags,
        response=AgentRead,
    )
    async def get_agent(call: Call) -> AgentRead:
        return agent_read(await agent_or_404(call))

    @api.route(
        "PATCH",
        "/api/v1/agents/{agent_id}",
        summary="Update an agent; ?force=true reprovisions",
        tags=tags,
        query=ForceQuery,
        body=AgentUpdate,
        response=AgentRead,
    )
    async def patch_agent(call: Call) -> AgentRead:
        agent = await agent_or_404(call)
        if call.body.status is not None:
            raise ApiError(
                403, "status is controlled by the lifecycle (heartbeats, wakes); it cannot be set"
            )
        if call.query.force:
            agent = await deps(call.request).provisioning.reapply(agent.id)
        return agent_read(agent)

    @api.route(
        "POST",
        "/api/v1/agents/{agent_id}/heartbeat",
        summary="Record a heartbeat for an agent on its behalf (operators, scripts)",
        tags=tags,
        body=AdminHeartbeat,
        response=AgentRead,
    )
    async def admin_heartbeat(call: Call) -> AgentRead:
        agent = await agent_or_404(call)
        d = deps(call.request)
        await d.reconciler.heartbeats(
            agent.gateway_id,
            pb.HeartbeatBatch(
                beats=[
                    pb.AgentHeartbeat(
                        agent_id=agent.gateway_agent_id,
                        observed_at=timestamp(),
                        status=call.body.status or "",
                    )
                ]
            ),
        )
        return agent_read(await agent_or_404(call))

    @api.route(
        "DELETE",
        "/api/v1/agents/{agent_id}",
        summary="Delete an agent (through its sidecar; never fails because a gateway is down)",
        tags=tags,
        response=Accepted,
        status=202,
    )
    async def delete_agent(call: Call) -> Accepted:
        agent = await agent_or_404(call)
        await deps(call.request).provisioning.delete_agent(agent.id)
        return Accepted(status="deleting")

    @api.route(
        "POST",
        "/api/v1/agents/{agent_id}/token/rotate",
        summary="Rotate the agent's token; the previous one stays valid for grace_s",
        tags=tags,
        body=TokenRotate,
        response=Accepted,
        status=202,
    )
    async def rotate_agent_token(call: Call) -> Accepted:
        agent = await agent_or_404(call)
        try:
            await deps(call.request).provisioning.rotate_token(agent.id, grace_s=call.body.grace_s)
        except AgentError as exc:
            raise ApiError(422, str(exc)) from None
        return Accepted(status="rotating")


async def _stream(call: Call) -> web.StreamResponse:
    """`event: agent` / `data: {"agent": AgentRead}`; replays from `since`; keep-alives."""
    d = deps(call.request)
    since = None
    if call.query.since:
        try:
            since = datetime.fromisoformat(call.query.since.replace("Z", "+00:00")).timestamp()
        except ValueError:
            raise ApiError(422, "since must be an ISO 8601 timestamp") from None
    subscription = d.events.subscribe(call.query.board_id, AGENT_EVENTS)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Request-Id": call.request.get("request_id", ""),
        }
    )
    await response.prepare(call.request)
    try:
        if since is not None:
            for missed in d.events.since(since, call.query.board_id, AGENT_EVENTS):
                await response.write(_frame(missed.id, missed.data))
        while True:
            try:
                event = await subscription.next(KEEPALIVE_S)
            except StreamEnded as exc:
                await response.write(f": {exc}\n\n".encode())
                break
            if event is None:
                await response.write(b": keep-alive\n\n")
            else:
                await response.write(_frame(event.id, event.data))
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        subscription.close()
    return response


def _frame(event_id: int, data: dict[str, Any]) -> bytes:
    return f"id: {event_id}\nevent: agent\ndata: {json.dumps({'agent': data})}\n\n".encode()
