"""The local agent API: what agents on this host call over loopback (aiohttp).

Agents heartbeat here instead of to the hub: the sidecar checks the token locally
(sidecar/credentials.py), rate-limits per agent, and hands the beat to the relay
(sidecar/link/heartbeats.py), which coalesces it; no disk write, no hub round trip.

Endpoints (the paths agents already use):
  POST /api/v1/agent/heartbeat         the calling agent's heartbeat
  POST /api/v1/agents/{id}/heartbeat   the same, naming the agent (must be the caller)
  GET  /api/v1/agent/healthz           token check and link state, for troubleshooting
  *    /api/v1/agent/...               anything else: forwarded to the hub over the link

Auth: `X-Agent-Token: <token>` or `Authorization: Bearer <token>`. Every response
carries X-Request-Id; every error is {"detail", "request_id"}.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from missioncontrol import http
from missioncontrol.agent_api import (
    AGENT_API_PREFIX,
    HEALTHZ_PATH,
    HEARTBEAT_FIELDS,
    HEARTBEAT_PATH,
    NAMED_HEARTBEAT_PATH,
    TOKEN_FILE_NAME,
    TOKEN_HEADER,
    token_from_headers,
)
from missioncontrol.http import REQUEST_ID, ApiError, RateLimiter
from missioncontrol.log import get_logger
from missioncontrol.netaddr import HostPort
from protos import link_pb2 as pb
from sidecar.credentials import CredentialError, CredentialIndex
from sidecar.link.hub_calls import HubCalls, HubUnavailable

log = get_logger("sidecar.agent_api")

MAX_BODY_BYTES = 16 * 1024


class HeartbeatSink(Protocol):
    """Where accepted heartbeats go (the relay)."""

    def record(self, agent_id: str, status: str = "", current_task_id: str = "") -> Any: ...


@dataclass(frozen=True)
class AgentApiLimits:
    rate_per_s: float = 10.0  # sustained requests per second, per agent
    burst: float = 20.0  # requests an idle agent may send at once
    max_body_bytes: int = MAX_BODY_BYTES
    max_tracked_agents: int = 10_000  # idle buckets are dropped beyond this


class InvalidBody(ValueError):
    """A heartbeat body that is not what the API takes; the message names the field."""


@dataclass(frozen=True)
class HeartbeatBody:
    status: str = ""
    current_task_id: str = ""


def parse_heartbeat_body(body: bytes) -> HeartbeatBody:
    """Validate a heartbeat body: empty, or a JSON object with optional bounded strings."""
    if not body.strip():
        return HeartbeatBody()
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InvalidBody(f"body is not valid JSON ({_json_error(exc)})") from None
    if not isinstance(data, dict):
        raise InvalidBody(
            f'body must be a JSON object like {{"status": "working"}}, not {type(data).__name__}'
        )
    unknown = sorted(set(data) - set(HEARTBEAT_FIELDS))
    if unknown:
        raise InvalidBody(
            f"unknown field {unknown[0]!r}; a heartbeat takes only: {', '.join(HEARTBEAT_FIELDS)}"
        )
    values: dict[str, str] = {}
    for name, max_chars in HEARTBEAT_FIELDS.items():
        value = data.get(name)
        if value is None:  # absent or null: not reported
            continue
        if not isinstance(value, str):
            raise InvalidBody(f"field {name!r} must be a string, not {type(value).__name__}")
        if len(value) > max_chars:
            raise InvalidBody(
                f"field {name!r} is {len(value)} characters; at most {max_chars} are allowed"
            )
        values[name] = value
    return HeartbeatBody(**values)


def _json_error(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return "not UTF-8"


class AgentRateLimiter(RateLimiter):
    """One token bucket per agent (never per IP: every agent on a host shares 127.0.0.1)."""

    def __init__(self, limits: AgentApiLimits, clock: Callable[[], float] = time.monotonic):
        super().__init__(
            limits.rate_per_s, limits.burst, max_keys=limits.max_tracked_agents, clock=clock
        )
        self.limits = limits


@dataclass(frozen=True)
class _Deps:
    credentials: CredentialIndex
    sink: HeartbeatSink
    limiter: AgentRateLimiter
    gateway_id: str
    hub_connected: Callable[[], bool]
    hub_calls: HubCalls | None = None
    on_heartbeat_refused: Callable[[int], None] = lambda status: None  # metrics


DEPS = web.AppKey("deps", _Deps)
AGENT_ID = web.RequestKey("agent_id", str)


def _log_rejection(request: web.Request, exc: ApiError) -> None:
    heartbeat = request.path.endswith("/heartbeat")
    if heartbeat:
        request.app[DEPS].on_heartbeat_refused(exc.status)
    event = "agent_api.heartbeat.rejected" if heartbeat else "agent_api.request.rejected"
    fields = {
        "status": exc.status,
        "detail": exc.detail,
        "path": request.path,
        "agent_id": request.get(AGENT_ID),
        "request_id": request[REQUEST_ID],
    }
    # 429s come in floods by nature; the first lines of one tell the story.
    if exc.status == 429:
        log.debug(event, **fields)
    elif exc.status in (401, 403):
        log.warning(event, **fields)
    else:
        log.info(event, **fields)


_request_context = http.request_context(
    log,
    failure_event="agent_api.request.failed",
    failure_detail="internal error; see the sidecar log",
    on_api_error=_log_rejection,
)


def _authenticate(request: web.Request) -> str:
    """The calling agent's id, from X-Agent-Token or Authorization: Bearer."""
    raw = token_from_headers(request.headers)
    if raw is None:
        raise ApiError(
            401,
            f"missing agent token: send {TOKEN_HEADER}: <content of the agent's "
            f"{TOKEN_FILE_NAME} file> (or Authorization: Bearer <token>)",
            {"WWW-Authenticate": "Bearer"},
        )
    deps = request.app[DEPS]
    try:
        agent_id = deps.credentials.verify(raw)
    except CredentialError as exc:
        raise ApiError(401, str(exc), {"WWW-Authenticate": "Bearer"}) from None
    request[AGENT_ID] = agent_id
    deps.limiter.check(agent_id, f"agent {agent_id}")
    return agent_id


async def _read_body(request: web.Request) -> bytes:
    limit = request.app[DEPS].limiter.limits.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, f"body is {request.content_length} bytes; at most {limit} allowed")
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, f"body is larger than {limit} bytes") from None


async def _heartbeat(request: web.Request) -> web.Response:
    agent_id = _authenticate(request)
    named = request.match_info.get("agent_id")
    if named is not None and named != agent_id:
        raise ApiError(
            403,
            f"this token belongs to agent {agent_id}, not {named[:128]}; an agent may only "
            "heartbeat for itself",
        )
    try:
        body = parse_heartbeat_body(await _read_body(request))
    except InvalidBody as exc:
        raise ApiError(422, str(exc)) from None
    request.app[DEPS].sink.record(agent_id, body.status, body.current_task_id)
    return web.json_response({"ok": True, "agent_id": agent_id, "relayed": "queued"}, status=202)


async def _healthz(request: web.Request) -> web.Response:
    agent_id = _authenticate(request)
    deps = request.app[DEPS]
    return web.json_response(
        {
            "ok": True,
            "agent_id": agent_id,
            "gateway_id": deps.gateway_id,
            "hub_connected": deps.hub_connected(),
        }
    )


async def _forward(request: web.Request) -> web.Response:
    """The hub's agent API, reached through the link (the token is checked here first)."""
    if request.path in (HEARTBEAT_PATH, HEALTHZ_PATH):  # ours, with the wrong method
        allowed = "POST" if request.path == HEARTBEAT_PATH else "GET"
        raise web.HTTPMethodNotAllowed(request.method, [allowed])
    _authenticate(request)
    hub_calls = request.app[DEPS].hub_calls
    if hub_calls is None:
        raise ApiError(404, "not found")
    call = pb.AgentCall(
        method=request.method,
        path=request.path,
        query=request.query_string,
        body=await _read_body(request),
        agent_token=token_from_headers(request.headers) or "",
        content_type=request.headers.get("Content-Type", ""),
    )
    try:
        result = await hub_calls.call(call)
    except HubUnavailable as exc:
        raise ApiError(503, str(exc), {"Retry-After": "5"}) from None
    response = web.Response(
        status=result.status,
        body=result.body,
        content_type=(result.content_type or "application/json").split(";")[0],
    )
    for name, value in result.headers.items():
        response.headers[name] = value
    return response


def build_app(deps: _Deps, max_body_bytes: int) -> web.Application:
    app = web.Application(middlewares=[_request_context], client_max_size=max_body_bytes)
    app[DEPS] = deps
    app.router.add_post(HEARTBEAT_PATH, _heartbeat)
    app.router.add_post(NAMED_HEARTBEAT_PATH, _heartbeat)
    app.router.add_get(HEALTHZ_PATH, _healthz)
    app.router.add_route("*", AGENT_API_PREFIX + "/{tail:.+}", _forward)  # after the local ones
    return app


class AgentApiError(RuntimeError):
    """The agent API could not start (address in use, not loopback)."""


class AgentApi:
    """Runs the agent API on a loopback address; `address` is where it actually listens."""

    def __init__(
        self,
        listen: HostPort,
        credentials: CredentialIndex,
        sink: HeartbeatSink,
        *,
        gateway_id: str,
        hub_connected: Callable[[], bool],
        limits: AgentApiLimits | None = None,
        hub_calls: HubCalls | None = None,
        on_heartbeat_refused: Callable[[int], None] = lambda status: None,
    ) -> None:
        self.listen = listen
        self.credentials = credentials
        self.sink = sink
        self.gateway_id = gateway_id
        self.hub_connected = hub_connected
        self.limits = limits or AgentApiLimits()
        self.hub_calls = hub_calls
        self.on_heartbeat_refused = on_heartbeat_refused
        self.address: HostPort | None = None
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address or self.listen}"

    async def start(self) -> HostPort:
        if not self.listen.is_loopback:
            raise AgentApiError(
                f"agent API address {self.listen} is not loopback; agents call it from the "
                "same host, so use 127.0.0.1:PORT"
            )
        deps = _Deps(
            self.credentials,
            self.sink,
            AgentRateLimiter(self.limits),
            self.gateway_id,
            self.hub_connected,
            self.hub_calls,
            self.on_heartbeat_refused,
        )
        runner = web.AppRunner(
            build_app(deps, self.limits.max_body_bytes), access_log=None, shutdown_timeout=2.0
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, self.listen.host, self.listen.port).start()
        except OSError as exc:
            await runner.cleanup()
            raise AgentApiError(
                f"agent API cannot listen on {self.listen}: {exc.strerror or exc}; "
                "free the port or choose another with --agent-api-listen"
            ) from exc
        self._runner = runner
        host, port = runner.addresses[0][:2]
        self.address = HostPort(host, port)
        log.info("agent_api.started", address=str(self.address))
        return self.address

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish, close."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            log.info("agent_api.stopped")
