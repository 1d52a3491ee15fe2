"""Live gateway reads through the sidecar: GET /api/v1/gateway/status and /gateway/sessions.

Mission Control's paths, answered from the gateway's own `status` and `sessions.list`
by way of the sidecar's stream, not by the hub dialing a gateway URL (the old
endpoint took any URL and token in its query string). The gateway is named by
`gateway_id`, `board_id` (its board's gateway; sessions narrowed to the board's
agents) or `agent_id` (that agent's sessions).
"""

from __future__ import annotations

from pydantic import Field

from hub.api.core import Api, Call, Query
from hub.api.deps import HttpDeps, deps
from hub.api.schemas import (
    GatewayAgentRuntime,
    GatewaySessionRead,
    GatewaySessionsRead,
    GatewayStatusRead,
)
from hub.link.queries import QueryFailed, Target, live_target_in
from hub.store.gateways import GatewayRow
from missioncontrol.http import ApiError
from missioncontrol.timefmt import iso
from protos import link_pb2 as pb
from protos.contract import MAX_QUERY_SESSIONS, GatewayGeneration, epoch_s

# How each failure reads over HTTP: the sidecar is away or busy (503, retry), it or the
# gateway behind it did not answer in time (504), or the gateway failed (502).
FAILURE_STATUS = {
    "sidecar_disconnected": 503,
    "busy": 503,
    "sidecar_timeout": 504,
    "gateway_timeout": 504,
}


class GatewayTarget(Query):
    gateway_id: str | None = None
    board_id: str | None = None
    agent_id: str | None = None  # the hub's agent id


class SessionsQuery(GatewayTarget):
    limit: int = Field(100, ge=1, le=MAX_QUERY_SESSIONS)


async def resolve(d: HttpDeps, q: GatewayTarget) -> Target:
    if not (q.gateway_id or q.board_id or q.agent_id):
        raise ApiError(422, "name the gateway: gateway_id, board_id or agent_id")
    return await d.db.read(
        lambda conn: live_target_in(
            conn, gateway_id=q.gateway_id, board_id=q.board_id, agent_id=q.agent_id
        )
    )


def session_read(session: pb.GatewaySession, target: Target) -> GatewaySessionRead:
    agent = target.agents.get(session.agent_id)
    return GatewaySessionRead(
        key=session.key,
        gateway_agent_id=session.agent_id,
        agent_id=agent.id if agent else None,
        board_id=agent.board_id if agent else None,
        kind=session.kind or None,
        is_main=session.is_main,
        status=session.status or None,
        has_active_run=session.has_active_run,
        updated_at=iso(epoch_s(session.updated_at)) if session.HasField("updated_at") else None,
        last_run_error=session.last_run_error or None,
        model=session.model or None,
        total_tokens=session.total_tokens,
    )


def sessions_of(
    result: pb.GatewayQueryResult, target: Target
) -> tuple[list[GatewaySessionRead], GatewaySessionRead | None]:
    """The sessions the caller asked for (board-narrowed), and the main agent's main session."""
    every = [session_read(s, target) for s in result.sessions]
    main_agent = target.main_agent_id()
    main = next((s for s in every if s.is_main and s.gateway_agent_id == main_agent), None)
    if target.board_id:
        every = [s for s in every if s.board_id == target.board_id]
    return every, main


async def live_status(d: HttpDeps, target: Target) -> GatewayStatusRead:
    """The gateway's status asked through its sidecar; when it cannot be asked, what the
    store last heard, with the reason (the dashboard's gateway page shows the same)."""
    row = target.gateway
    read = GatewayStatusRead(
        gateway_id=row.id,
        gateway_name=row.name,
        connected=d.registry.connected(row.id, row.connected),
        live_read=False,
        gateway_reachable=row.reachable,
        gateway_unreachable_reason=row.unreachable_reason,
        sidecar_version=row.sidecar_version,
        openclaw_version=row.openclaw_version,
        openclaw_protocol=row.openclaw_protocol,
        gateway_generation=GatewayGeneration.of(row.gateway_generation).label,
        config_valid=row.config_valid,
        config_error=row.config_error,
        pid=None,
        rss_bytes=None,
        agents=[],
        sessions_count=None,
        sessions=[],
        main_session=None,
        main_session_error=None,
        error=None,
        error_code=None,
        observed_at=None,
    )
    try:
        result = await d.queries.ask(row.id, pb.GatewayQuery.STATUS)
    except QueryFailed as exc:
        read.error, read.error_code = _explain(exc.code, str(exc), row), exc.code
        return read
    state = result.state
    read.connected = True
    read.gateway_reachable = state.reachable
    read.gateway_unreachable_reason = state.unreachable_reason or None
    read.openclaw_version = state.openclaw_version or read.openclaw_version
    read.openclaw_protocol = state.openclaw_protocol or read.openclaw_protocol
    read.gateway_generation = (
        GatewayGeneration.of(state.generation).label or read.gateway_generation
    )
    read.config_valid = state.config_valid
    read.config_error = state.config_error or None
    read.observed_at = iso(epoch_s(state.observed_at))
    if result.error_code:
        read.error, read.error_code = result.error, result.error_code
        return read
    read.live_read = True
    read.pid = result.runtime.pid or None
    read.rss_bytes = result.runtime.rss_bytes or None
    read.agents = [
        GatewayAgentRuntime(
            gateway_agent_id=a.agent_id,
            agent_id=target.agents[a.agent_id].id if a.agent_id in target.agents else None,
            heartbeat_enabled=a.heartbeat_enabled,
            heartbeat_every_s=a.heartbeat_every_s or None,
        )
        for a in result.runtime.agents
    ]
    read.sessions_count = result.sessions_total
    read.sessions, read.main_session = sessions_of(result, target)
    if read.main_session is None and target.main_agent_id():
        read.main_session_error = "the gateway's main agent has no main session yet"
    return read


def register(api: Api) -> None:
    tags = ("gateways",)

    @api.route(
        "GET",
        "/api/v1/gateway/status",
        summary="Live gateway status through its sidecar: versions, agents' heartbeat, "
        "sessions (200 with live_read=false and the reason when it cannot be read)",
        tags=tags,
        query=GatewayTarget,
        response=GatewayStatusRead,
    )
    async def gateway_status(call: Call) -> GatewayStatusRead:
        d = deps(call.request)
        return await live_status(d, await resolve(d, call.query))

    @api.route(
        "GET",
        "/api/v1/gateway/sessions",
        summary="The gateway's sessions, live through its sidecar "
        "(503 sidecar not connected or busy, 504 no answer in time, 502 gateway error)",
        tags=tags,
        query=SessionsQuery,
        response=GatewaySessionsRead,
    )
    async def gateway_sessions(call: Call) -> GatewaySessionsRead:
        d = deps(call.request)
        q: SessionsQuery = call.query
        target = await resolve(d, q)
        try:
            result = await d.queries.ask(
                target.gateway.id,
                pb.GatewayQuery.SESSIONS,
                agent_id=target.gateway_agent_id,
                limit=q.limit,
            )
        except QueryFailed as exc:
            raise _failure(exc.code, _explain(exc.code, str(exc), target.gateway)) from None
        if result.error_code:
            raise _failure(result.error_code, f"the gateway's sessions: {result.error}")
        sessions, main = sessions_of(result, target)
        return GatewaySessionsRead(
            gateway_id=target.gateway.id,
            sessions=sessions,
            total=len(sessions) if target.board_id else result.sessions_total,
            main_session=main,
        )


def _failure(code: str, detail: str) -> ApiError:
    status = FAILURE_STATUS.get(code, 502)
    return ApiError(status, detail, {"Retry-After": "5"} if status == 503 else None)


def _explain(code: str, message: str, row: GatewayRow) -> str:
    if code == "sidecar_disconnected":
        since = f" since {iso(row.disconnected_at)}" if row.disconnected_at else ""
        return (
            f"{message}{since}; check that mc-sidecar runs on {row.hostname or 'its host'} "
            "and can reach the hub's link port"
        )
    return message
