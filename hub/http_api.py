"""The hub's HTTP surface (aiohttp): health, readiness and the admin REST API."""

from __future__ import annotations

import asyncio
import hmac
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from hub.agents import AgentError, AgentRow, agent_json, load_agent
from hub.database import Database
from hub.enrollment import IssuedToken
from hub.gateways import EnrollmentUnavailable, GatewayService
from hub.link_server import SessionRegistry
from hub.reconciler import AgentSpec, Reconciler
from hub.rendering import AgentKind
from hub.store import GatewayInUse, GatewayRow, Store, UnknownGateway
from missioncontrol.log import get_logger

log = get_logger("hub.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_PAGE = 200


@dataclass(frozen=True)
class HttpDeps:
    store: Store
    db: Database
    registry: SessionRegistry
    admin_token: str
    link_serving: Callable[[], bool]
    gateways: GatewayService
    reconciler: Reconciler
    enroll_address: str | None  # HOST:PORT sidecars enroll at; None in --insecure-dev mode
    link_address: str


DEPS = web.AppKey("deps", HttpDeps)
REQUEST_ID = web.RequestKey("request_id", str)


def iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def error_response(request: web.Request, status: int, detail: Any) -> web.Response:
    return web.json_response(
        {"detail": detail, "request_id": request.get(REQUEST_ID)}, status=status
    )


class ApiError(Exception):
    """An error answered as {"detail", "request_id"} with its HTTP status."""

    def __init__(self, status: int, detail: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give every request an id, and every error the {"detail", "request_id"} shape."""
    request[REQUEST_ID] = request.headers.get("X-Request-Id", "")[:64] or uuid.uuid4().hex
    try:
        response = await handler(request)
    except ApiError as exc:
        response = error_response(request, exc.status, exc.detail)
        response.headers.update(exc.headers)
    except web.HTTPException as exc:  # aiohttp's own: unknown route, wrong method, too large
        response = error_response(request, exc.status, exc.reason)
        for header in ("Allow", "Retry-After"):
            if header in exc.headers:
                response.headers[header] = exc.headers[header]
    except Exception:
        log.exception("http.request.failed", path=request.path, request_id=request[REQUEST_ID])
        response = error_response(request, 500, "internal error; see the hub log")
    response.headers["X-Request-Id"] = request[REQUEST_ID]
    return response


def require_admin(request: web.Request) -> None:
    expected = request.app[DEPS].admin_token
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ApiError(
            401,
            "missing admin token: send Authorization: Bearer <token>",
            {"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise ApiError(401, "invalid admin token", {"WWW-Authenticate": "Bearer"})


def page_params(request: web.Request) -> tuple[int, int]:
    try:
        limit = int(request.query.get("limit", MAX_PAGE))
        offset = int(request.query.get("offset", 0))
    except ValueError:
        raise ApiError(422, "limit and offset must be integers") from None
    if not 1 <= limit <= MAX_PAGE or offset < 0:
        raise ApiError(422, f"limit must be 1..{MAX_PAGE} and offset >= 0")
    return limit, offset


def gateway_json(row: GatewayRow, registry: SessionRegistry) -> dict[str, Any]:
    session = registry.get(row.id)
    generation = {0: None, 1: "legacy-2026.3", 2: "current"}.get(row.gateway_generation)
    return {
        "id": row.id,
        "name": row.name,
        "connected": session is not None,
        "sidecar_version": row.sidecar_version,
        "openclaw_version": row.openclaw_version,
        "openclaw_protocol": row.openclaw_protocol,
        "gateway_generation": generation,
        "gateway_reachable": row.reachable,
        "gateway_unreachable_reason": row.unreachable_reason,
        "config_valid": row.config_valid,
        "config_error": row.config_error,
        "workspace_root": row.workspace_root,
        "agent_api_url": row.agent_api_url,
        "hostname": row.hostname,
        "last_seen_at": iso(session.last_message_at if session else row.last_seen_at),
        "connected_at": iso(row.connected_at) if session else None,
        "disconnected_at": iso(row.disconnected_at),
        "command_sequence": row.next_sequence - 1,
        "acked_sequence": row.acked_sequence,
        "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
    }


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True, "status": "live"})


async def readyz(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    failing: list[dict[str, str]] = []
    try:
        await asyncio.wait_for(asyncio.to_thread(deps.db.probe_writable, 1.0), timeout=2.0)
    except TimeoutError:
        failing.append({"check": "database", "detail": "write probe timed out after 2 s"})
    except Exception as exc:
        failing.append({"check": "database", "detail": f"database is not writable: {exc}"})
    if deps.db.stats.last_error:
        failing.append(
            {
                "check": "database_writer",
                "detail": f"last group commit failed: {deps.db.stats.last_error}",
            }
        )
    if not deps.link_serving():
        failing.append({"check": "link", "detail": "the gRPC link server is not serving"})
    body = {"ready": not failing, "failing": failing}
    return web.json_response(body, status=200 if not failing else 503)


async def list_gateways(request: web.Request) -> web.Response:
    require_admin(request)
    limit, offset = page_params(request)
    deps = request.app[DEPS]
    rows, total = await deps.store.list_gateways(limit, offset)
    return web.json_response(
        {
            "items": [gateway_json(r, deps.registry) for r in rows],
            "total": total,
            "limit": limit,
            "offset": offset,
        }
    )


async def get_gateway(request: web.Request) -> web.Response:
    require_admin(request)
    deps = request.app[DEPS]
    row = await deps.store.get_gateway(request.match_info["gateway_id"])
    if row is None:
        raise ApiError(404, "gateway not found")
    return web.json_response(gateway_json(row, deps.registry))


async def read_json(
    request: web.Request, fields: dict[str, type | tuple[type, ...]], required: tuple[str, ...] = ()
) -> dict[str, Any]:
    """A JSON object with only `fields`, each of its type; 422 naming the field otherwise."""
    try:
        body = await request.json()
    except ValueError:
        raise ApiError(422, "request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(422, "request body must be a JSON object")
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise ApiError(422, f"unknown field(s): {', '.join(unknown)}")
    for name in required:
        if name not in body:
            raise ApiError(422, f"field {name!r} is required")
    for name, value in body.items():
        types = fields[name] if isinstance(fields[name], tuple) else (fields[name],)
        # JSON true/false are Python bools, which are also ints: refuse them for numbers.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise ApiError(422, f"field {name!r} has the wrong type")
    return body


def token_json(token: IssuedToken, deps: HttpDeps) -> dict[str, Any]:
    command = (
        f"mc-sidecar enroll --hub {deps.enroll_address} --token '{token.join_string}'"
        if deps.enroll_address
        else None
    )
    return {
        "join_token": token.join_string,
        "token_id": token.token_id,
        "expires_at": iso(token.expires_at),
        "max_uses": token.max_uses,
        "enroll_command": command,
    }


async def create_gateway(request: web.Request) -> web.Response:
    require_admin(request)
    deps = request.app[DEPS]
    body = await read_json(request, {"name": str}, required=("name",))
    name = body["name"].strip()
    if not 1 <= len(name) <= 200:
        raise ApiError(422, "field 'name' must be 1 to 200 characters")
    created = await deps.gateways.create(name)
    result = gateway_json(created.gateway, deps.registry)
    if created.token is not None:
        result.update(token_json(created.token, deps))
    else:
        result["enroll_command"] = (
            f"mc-sidecar run --hub {deps.link_address} --insecure-dev "
            f"--gateway-id {created.gateway.id}"
        )
    return web.json_response(result, status=201)


async def create_join_token(request: web.Request) -> web.Response:
    require_admin(request)
    deps = request.app[DEPS]
    gateway_id = request.match_info["gateway_id"]
    body = await read_json(request, {"ttl_s": (int, float), "uses": int})
    ttl_s = float(body.get("ttl_s", 1800))
    uses = body.get("uses", 1)
    if await deps.store.get_gateway(gateway_id) is None:
        raise ApiError(404, "gateway not found")
    try:
        token = await deps.gateways.join_token(gateway_id, ttl_s=ttl_s, uses=uses)
    except EnrollmentUnavailable as exc:
        raise ApiError(409, str(exc)) from None
    except ValueError as exc:
        raise ApiError(422, str(exc)) from None
    return web.json_response(token_json(token, deps), status=201)


async def delete_gateway(request: web.Request) -> web.Response:
    require_admin(request)
    try:
        await request.app[DEPS].gateways.delete(request.match_info["gateway_id"])
    except UnknownGateway:
        raise ApiError(404, "gateway not found") from None
    except GatewayInUse as exc:
        raise ApiError(409, str(exc)) from None
    return web.json_response({"ok": True})


async def create_board(request: web.Request) -> web.Response:
    require_admin(request)
    deps = request.app[DEPS]
    body = await read_json(
        request,
        {"name": str, "gateway_id": str, "description": str},
        required=("name", "gateway_id"),
    )
    if await deps.store.get_gateway(body["gateway_id"]) is None:
        raise ApiError(422, "field 'gateway_id': no such gateway")
    board = await deps.store.create_board(
        body["gateway_id"], body["name"].strip(), body.get("description", "")
    )
    return web.json_response(board, status=201)


def _agent_response(agent: AgentRow, status: int = 200) -> web.Response:
    return web.json_response(agent_json(agent, iso), status=status)


async def create_agent(request: web.Request) -> web.Response:
    require_admin(request)
    deps = request.app[DEPS]
    body = await read_json(
        request,
        {
            "name": str,
            "board_id": str,
            "gateway_id": str,
            "is_board_lead": bool,
            "is_gateway_main": bool,
            "identity_profile": dict,
            "heartbeat_config": dict,
        },
        required=("name",),
    )
    kind = (
        AgentKind.MAIN
        if body.get("is_gateway_main")
        else AgentKind.LEAD
        if body.get("is_board_lead")
        else AgentKind.WORKER
    )
    spec = AgentSpec(
        name=body["name"].strip(),
        board_id=body.get("board_id"),
        gateway_id=body.get("gateway_id"),
        kind=kind,
        identity_profile=body.get("identity_profile"),
        heartbeat_config=body.get("heartbeat_config"),
    )
    try:
        agent = await deps.reconciler.create_agent(spec)
    except AgentError as exc:
        raise ApiError(409 if "already has" in str(exc) else 422, str(exc)) from None
    return _agent_response(agent, 201)


async def _agent_or_404(request: web.Request) -> AgentRow:
    agent_id = request.match_info["agent_id"]
    agent = await request.app[DEPS].db.read(lambda conn: load_agent(conn, agent_id))
    if agent is None:
        raise ApiError(404, "agent not found")
    return agent


async def get_agent(request: web.Request) -> web.Response:
    require_admin(request)
    return _agent_response(await _agent_or_404(request))


async def list_agents(request: web.Request) -> web.Response:
    require_admin(request)
    limit, offset = page_params(request)
    board_id = request.query.get("board_id")
    gateway_id = request.query.get("gateway_id")

    def query(conn: Any) -> tuple[list[AgentRow], int]:
        where = "WHERE (? IS NULL OR board_id = ?) AND (? IS NULL OR gateway_id = ?)"
        args = (board_id, board_id, gateway_id, gateway_id)
        total = conn.execute(f"SELECT COUNT(*) FROM agents {where}", args).fetchone()[0]
        rows = conn.execute(
            f"SELECT * FROM agents {where} ORDER BY created_at, id LIMIT ? OFFSET ?",
            (*args, limit, offset),
        ).fetchall()
        return [AgentRow.from_row(r) for r in rows], total

    agents, total = await request.app[DEPS].db.read(query)
    return web.json_response(
        {
            "items": [agent_json(a, iso) for a in agents],
            "total": total,
            "limit": limit,
            "offset": offset,
        }
    )


async def patch_agent(request: web.Request) -> web.Response:
    require_admin(request)
    agent = await _agent_or_404(request)
    body = await read_json(request, {"status": str})
    if "status" in body:
        raise ApiError(
            403, "status is controlled by the lifecycle (heartbeats, wakes); it cannot be set"
        )
    if request.query.get("force", "false").lower() in ("1", "true", "yes"):
        agent = await request.app[DEPS].reconciler.reapply(agent.id)
    return _agent_response(agent)


async def rotate_agent_token(request: web.Request) -> web.Response:
    require_admin(request)
    agent = await _agent_or_404(request)
    body = await read_json(request, {"grace_s": (int, float)}) if request.can_read_body else {}
    try:
        await request.app[DEPS].reconciler.rotate_token(agent.id, grace_s=body.get("grace_s", 600))
    except AgentError as exc:
        raise ApiError(422, str(exc)) from None
    return web.json_response(
        {"ok": True, "agent_id": agent.id, "grace_s": body.get("grace_s", 600)}, status=202
    )


async def delete_agent(request: web.Request) -> web.Response:
    require_admin(request)
    agent = await _agent_or_404(request)
    await request.app[DEPS].reconciler.delete_agent(agent.id)
    return web.json_response({"ok": True, "status": "deleting"}, status=202)


def build_app(deps: HttpDeps, *, client_max_size: int = 1024 * 1024) -> web.Application:
    app = web.Application(middlewares=[request_context], client_max_size=client_max_size)
    app[DEPS] = deps
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/health", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/api/v1/gateways", list_gateways)
    app.router.add_post("/api/v1/gateways", create_gateway)
    app.router.add_get("/api/v1/gateways/{gateway_id}", get_gateway)
    app.router.add_delete("/api/v1/gateways/{gateway_id}", delete_gateway)
    app.router.add_post("/api/v1/gateways/{gateway_id}/join-tokens", create_join_token)
    app.router.add_post("/api/v1/boards", create_board)
    app.router.add_get("/api/v1/agents", list_agents)
    app.router.add_post("/api/v1/agents", create_agent)
    app.router.add_get("/api/v1/agents/{agent_id}", get_agent)
    app.router.add_patch("/api/v1/agents/{agent_id}", patch_agent)
    app.router.add_delete("/api/v1/agents/{agent_id}", delete_agent)
    app.router.add_post("/api/v1/agents/{agent_id}/token/rotate", rotate_agent_token)
    return app
