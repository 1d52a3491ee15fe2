"""The local agent API: what agents on this host call over loopback (aiohttp).

Agents heartbeat here instead of to the hub: the sidecar checks the token locally
(sidecar/credentials.py), rate-limits per agent, and hands the beat to the relay
(sidecar/heartbeats.py), which coalesces it; no disk write, no hub round trip.

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
import math
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from missioncontrol.log import get_logger
from missioncontrol.netaddr import HostPort
from protos import link_pb2 as pb
from sidecar.credentials import CredentialError, CredentialIndex
from sidecar.hub_calls import HubCalls, HubUnavailable

log = get_logger("sidecar.agent_api")

AGENT_PREFIX = "/api/v1/agent"
HEARTBEAT_PATH = f"{AGENT_PREFIX}/heartbeat"
NAMED_HEARTBEAT_PATH = "/api/v1/agents/{agent_id}/heartbeat"
HEALTHZ_PATH = f"{AGENT_PREFIX}/healthz"
TOKEN_HEADER = "X-Agent-Token"
MAX_BODY_BYTES = 16 * 1024
MAX_STATUS_CHARS = 64
MAX_TASK_ID_CHARS = 128
_REQUEST_ID_SHAPE = re.compile(r"[A-Za-z0-9._:-]{1,64}")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HeartbeatSink(Protocol):
    """Where accepted heartbeats go (the relay)."""

    def record(self, agent_id: str, status: str = "", current_task_id: str = "") -> Any: ...


@dataclass(frozen=True)
class AgentApiLimits:
    rate_per_s: float = 10.0  # sustained requests per second, per agent
    burst: float = 20.0  # requests an idle agent may send at once
    max_body_bytes: int = MAX_BODY_BYTES
    max_tracked_agents: int = 10_000  # idle buckets are dropped beyond this


class ApiError(Exception):
    """An error answered as {"detail", "request_id"} with its HTTP status."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}


class InvalidBody(ValueError):
    """A heartbeat body that is not what the API takes; the message names the field."""


@dataclass(frozen=True)
class HeartbeatBody:
    status: str = ""
    current_task_id: str = ""


_BODY_FIELDS = {"status": MAX_STATUS_CHARS, "current_task_id": MAX_TASK_ID_CHARS}


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
    unknown = sorted(set(data) - set(_BODY_FIELDS))
    if unknown:
        raise InvalidBody(
            f"unknown field {unknown[0]!r}; a heartbeat takes only: {', '.join(_BODY_FIELDS)}"
        )
    values: dict[str, str] = {}
    for name, max_chars in _BODY_FIELDS.items():
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


class TokenBucket:
    """Classic token bucket: `burst` tokens, refilled at `rate_per_s`."""

    __slots__ = ("burst", "rate_per_s", "tokens", "updated_at")

    def __init__(self, rate_per_s: float, burst: float, now: float) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.tokens = burst
        self.updated_at = now

    def take(self, now: float) -> float:
        """0.0 if a request may pass now (and count it); else seconds until one may."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated_at) * self.rate_per_s)
        self.updated_at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate_per_s

    def full_at(self, now: float) -> bool:
        return self.tokens + (now - self.updated_at) * self.rate_per_s >= self.burst


class AgentRateLimiter:
    """One token bucket per agent (never per IP: every agent on a host shares 127.0.0.1)."""

    def __init__(self, limits: AgentApiLimits, clock: Callable[[], float] = time.monotonic):
        self.limits = limits
        self.clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def retry_after_s(self, agent_id: str) -> float:
        """0.0 if the agent's request may pass now; else how long it must wait."""
        now = self.clock()
        bucket = self._buckets.get(agent_id)
        if bucket is None:
            if len(self._buckets) >= self.limits.max_tracked_agents:
                # A full bucket is the same as a new one: forgetting idle agents is free.
                self._buckets = {a: b for a, b in self._buckets.items() if not b.full_at(now)}
            bucket = TokenBucket(self.limits.rate_per_s, self.limits.burst, now)
            self._buckets[agent_id] = bucket
        return bucket.take(now)


@dataclass(frozen=True)
class _Deps:
    credentials: CredentialIndex
    sink: HeartbeatSink
    limiter: AgentRateLimiter
    gateway_id: str
    hub_connected: Callable[[], bool]
    hub_calls: HubCalls | None = None


DEPS = web.AppKey("deps", _Deps)
REQUEST_ID = web.RequestKey("request_id", str)
AGENT_ID = web.RequestKey("agent_id", str)


def _error(request: web.Request, status: int, detail: str) -> web.Response:
    return web.json_response(
        {"detail": detail, "request_id": request.get(REQUEST_ID)}, status=status
    )


@web.middleware
async def _request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give every request an id, and every error the {"detail", "request_id"} shape."""
    offered = request.headers.get("X-Request-Id", "")
    request[REQUEST_ID] = offered if _REQUEST_ID_SHAPE.fullmatch(offered) else uuid.uuid4().hex
    try:
        response = await handler(request)
    except ApiError as exc:
        response = _error(request, exc.status, exc.detail)
        response.headers.update(exc.headers)
        _log_rejection(request, exc)
    except web.HTTPException as exc:  # aiohttp's own: unknown route, wrong method
        response = _error(request, exc.status, exc.reason)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
    except Exception:
        log.exception("agent_api.request.failed", path=request.path, request_id=request[REQUEST_ID])
        response = _error(request, 500, "internal error; see the sidecar log")
    response.headers["X-Request-Id"] = request[REQUEST_ID]
    return response


def _log_rejection(request: web.Request, exc: ApiError) -> None:
    event = (
        "agent_api.heartbeat.rejected"
        if request.path.endswith("/heartbeat")
        else "agent_api.request.rejected"
    )
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


def _authenticate(request: web.Request) -> str:
    """The calling agent's id, from X-Agent-Token or Authorization: Bearer."""
    raw = request.headers.get(TOKEN_HEADER)
    if raw is None:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        raw = value if scheme.lower() == "bearer" else None
    if not raw or not raw.strip():
        raise ApiError(
            401,
            f"missing agent token: send {TOKEN_HEADER}: <content of the agent's "
            ".mc-agent-token file> (or Authorization: Bearer <token>)",
            {"WWW-Authenticate": "Bearer"},
        )
    deps = request.app[DEPS]
    try:
        agent_id = deps.credentials.verify(raw.strip())
    except CredentialError as exc:
        raise ApiError(401, str(exc), {"WWW-Authenticate": "Bearer"}) from None
    request[AGENT_ID] = agent_id
    retry_after_s = deps.limiter.retry_after_s(agent_id)
    if retry_after_s > 0:
        raise ApiError(
            429,
            f"agent {agent_id} is over its rate limit of {deps.limiter.limits.rate_per_s:g} "
            f"requests/s (burst {deps.limiter.limits.burst:g}); retry after "
            f"{retry_after_s:.2f} s",
            {"Retry-After": str(max(1, math.ceil(retry_after_s)))},
        )
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
        agent_token=_raw_token(request),
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


def _raw_token(request: web.Request) -> str:
    raw = request.headers.get(TOKEN_HEADER)
    if raw is None:
        raw = request.headers.get("Authorization", "").partition(" ")[2]
    return raw.strip()


def build_app(deps: _Deps, max_body_bytes: int) -> web.Application:
    app = web.Application(middlewares=[_request_context], client_max_size=max_body_bytes)
    app[DEPS] = deps
    app.router.add_post(HEARTBEAT_PATH, _heartbeat)
    app.router.add_post(NAMED_HEARTBEAT_PATH, _heartbeat)
    app.router.add_get(HEALTHZ_PATH, _healthz)
    app.router.add_route("*", "/api/v1/agent/{tail:.+}", _forward)  # after the local ones
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
    ) -> None:
        self.listen = listen
        self.credentials = credentials
        self.sink = sink
        self.gateway_id = gateway_id
        self.hub_connected = hub_connected
        self.limits = limits or AgentApiLimits()
        self.hub_calls = hub_calls
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
