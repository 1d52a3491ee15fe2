"""Agents, admin side: list, read, create, update, delete, rotate token, live stream."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import Any

from aiohttp import web
from pydantic import Field

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
    HeartbeatConfig,
    TokenRotate,
)
from hub.api.streams import last_event_id, sse_response
from hub.events import StreamEnded
from hub.provisioning.agents import (
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
    board_id: str | None = Field(None, max_length=64)
    since: str | None = Field(None, max_length=64)
    last_event_id: int | None = Field(
        None, ge=0, le=2**63 - 1, description="resume after this id (or send Last-Event-ID)"
    )


STATUS_OWNED = (
    "status is controlled by the lifecycle (heartbeats, wakes); it cannot be set. An agent "
    "reports what it is doing with its heartbeat's status (work_state)"
)


def agent_spec(body: AgentCreate, *, created_by_lead: str | None = None) -> AgentSpec:
    """What a create request asks for (the API's, the dashboard's form, a lead's)."""
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
        heartbeat_config=body.heartbeat_config.config() if body.heartbeat_config else None,
        identity_template=body.identity_template,
        soul_template=body.soul_template,
        created_by_lead=created_by_lead,
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
        body: AgentCreate = call.body
        if body.status not in (None, "provisioning"):
            raise ApiError(403, STATUS_OWNED)
        agent = await deps(call.request).provisioning.create_agent(agent_spec(body))
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
        body: AgentUpdate = call.body
        if "status" in body.model_fields_set:
            raise ApiError(403, STATUS_OWNED)
        changes = {name: getattr(body, name) for name in body.model_fields_set}
        if isinstance(body.heartbeat_config, HeartbeatConfig):
            changes["heartbeat_config"] = body.heartbeat_config.config()
        agent = await deps(call.request).provisioning.update_agent(
            agent.id, changes, force=call.query.force
        )
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
        "/api/v1/agents/{agent_id}/pause",
        summary="Pause: its heartbeat job goes off; it is not woken or marked offline",
        tags=tags,
        response=AgentRead,
    )
    async def pause_agent(call: Call) -> AgentRead:
        agent = await agent_or_404(call)
        return agent_read(await deps(call.request).provisioning.pause_agent(agent.id))

    @api.route(
        "POST",
        "/api/v1/agents/{agent_id}/resume",
        summary="Resume: its heartbeat job comes back and it is woken",
        tags=tags,
        response=AgentRead,
    )
    async def resume_agent(call: Call) -> AgentRead:
        agent = await agent_or_404(call)
        return agent_read(await deps(call.request).provisioning.resume_agent(agent.id))

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


SNAPSHOT_LIMIT = 10_000  # agents sent as current state when a resume cannot replay


async def _stream(call: Call) -> web.StreamResponse:
    """`event: agent` / `data: {"agent": AgentRead}`; keep-alives. A client resuming with
    `Last-Event-ID` (or `?last_event_id=`) gets the changes it missed, or, when the hub
    no longer holds them (it restarted, or too much happened), every agent's current
    state. `since` (ISO time) replays what the hub still holds after that time."""
    d = deps(call.request)
    q: StreamQuery = call.query
    since = None
    if q.since:
        try:
            since = datetime.fromisoformat(q.since.replace("Z", "+00:00")).timestamp()
        except ValueError:
            raise ApiError(422, "since must be an ISO 8601 timestamp") from None
    resume = last_event_id(call, q.last_event_id)
    subscription = d.events.subscribe(q.board_id, AGENT_EVENTS)
    response = sse_response(call)
    await response.prepare(call.request)
    sent = 0
    try:
        if resume is not None:
            missed = d.events.after(resume, q.board_id, AGENT_EVENTS)
            if missed is None:
                snapshot_id = d.events.last_id
                rows, _ = await d.db.read(
                    lambda conn: list_agents_in(
                        conn,
                        board_id=q.board_id,
                        gateway_id=None,
                        managed=True,
                        limit=SNAPSHOT_LIMIT,
                        offset=0,
                    )
                )
                for row in rows:
                    await response.write(_frame(snapshot_id, agent_json(row)))
                sent = snapshot_id
            else:
                for event in missed:
                    await response.write(_frame(event.id, event.data))
                    sent = event.id
        elif since is not None:
            for event in d.events.since(since, q.board_id, AGENT_EVENTS):
                await response.write(_frame(event.id, event.data))
                sent = event.id
        while True:
            try:
                live = await subscription.next(KEEPALIVE_S)
            except StreamEnded as exc:
                await response.write(f": {exc}\n\n".encode())
                break
            if live is None:
                await response.write(b": keep-alive\n\n")
            elif live.id > sent:
                await response.write(_frame(live.id, live.data))
                sent = live.id
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        subscription.close()
    return response


def _frame(event_id: int, data: dict[str, Any]) -> bytes:
    return f"id: {event_id}\nevent: agent\ndata: {json.dumps({'agent': data})}\n\n".encode()
