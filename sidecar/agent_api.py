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

Who may call: only a program on this host talking to it directly. A request addressed
to any name but a loopback one (`Host`), or carrying a browser's headers (`Origin`,
`Sec-Fetch-*`), is refused before anything else: a web page on this host's browser
must not reach it, not even by rebinding a DNS name to 127.0.0.1.

Guessing tokens costs the guesser: failed token checks are limited per presented
token id (ids of unknown tokens share one budget, malformed tokens another, so no
flood of junk can lock out an agent with a valid token), and rejection log lines are
bounded, with the number held back said in the next one.

Everything a request carries is outside text: headers, path, query and body fields
are checked before use (valid UTF-8, no control characters, bounded, as the hub checks
them), so no request can reach code that raises; none is answered 500.
"""

from __future__ import annotations

import json
import re
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
    MAX_PATH_CHARS,
    NAMED_HEARTBEAT_PATH,
    TOKEN_FILE_NAME,
    TOKEN_HEADER,
    plain_agent_path,
    token_from_headers,
)
from missioncontrol.http import REQUEST_ID, ApiError, FailedAuthLimiter, RateLimiter, TokenBucket
from missioncontrol.log import get_logger
from missioncontrol.netaddr import HostPort, is_loopback_host
from missioncontrol.text import TextError, check_name, displayable
from protos import link_pb2 as pb
from sidecar.credentials import MALFORMED_TOKENS, CredentialError, CredentialIndex
from sidecar.link.hub_calls import HubCalls, HubUnavailable

log = get_logger("sidecar.agent_api")

MAX_BODY_BYTES = 16 * 1024
MAX_QUERY_CHARS = 4096
MAX_CONTENT_TYPE_CHARS = 256
# Headers only a browser sends; a program an agent runs does not.
BROWSER_HEADERS = ("Origin", "Sec-Fetch-Site", "Sec-Fetch-Mode", "Sec-Fetch-Dest")
_TOKEN = r"[A-Za-z0-9!#$%&'*+.^_`|~-]"  # RFC 9110 token characters
_MEDIA_TYPE = re.compile(rf"{_TOKEN}{{1,127}}/{_TOKEN}{{1,127}}")
_HEADER_NAME = re.compile(rf"{_TOKEN}{{1,64}}")


class HeartbeatSink(Protocol):
    """Where accepted heartbeats go (the relay)."""

    def record(self, agent_id: str, status: str = "", current_task_id: str = "") -> Any: ...


@dataclass(frozen=True)
class AgentApiLimits:
    rate_per_s: float = 10.0  # sustained requests per second, per agent
    burst: float = 20.0  # requests an idle agent may send at once
    max_body_bytes: int = MAX_BODY_BYTES
    max_tracked_agents: int = 10_000  # idle buckets are dropped beyond this
    failed_auth_rate_per_s: float = 2.0  # failed token checks per token id, sustained
    failed_auth_burst: float = 20.0
    rejection_log_rate_per_s: float = 1.0  # rejection log lines, sustained (then counted)
    rejection_log_burst: float = 20.0


class InvalidBody(ValueError):
    """A heartbeat body that is not what the API takes; the message names the field."""


@dataclass(frozen=True)
class HeartbeatBody:
    status: str = ""
    current_task_id: str = ""


def parse_heartbeat_body(body: bytes) -> HeartbeatBody:
    """Validate a heartbeat body: empty, or a JSON object with optional bounded strings.

    The strings follow the hub's rules for a name (missioncontrol/text.py): valid UTF-8,
    one line without control characters, surrounding spaces dropped, an empty one the
    same as none, at most HEARTBEAT_FIELDS[name] characters."""
    if not body.strip():
        return HeartbeatBody()
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:  # ValueError: also a number too long to read
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
        value = value.strip()
        if not value:
            continue
        try:
            check_name(value, max_chars=max_chars)
        except TextError as exc:
            raise InvalidBody(f"field {name!r} {exc}") from None
        values[name] = value
    return HeartbeatBody(**values)


def _json_error(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8"
    return "a number too long to read"


class AgentRateLimiter(RateLimiter):
    """One token bucket per agent (never per IP: every agent on a host shares 127.0.0.1)."""

    def __init__(self, limits: AgentApiLimits, clock: Callable[[], float] = time.monotonic):
        super().__init__(
            limits.rate_per_s, limits.burst, max_keys=limits.max_tracked_agents, clock=clock
        )
        self.limits = limits


class LogBudget:
    """At most `burst` lines at once and `rate_per_s` after that; counts what it held back,
    so a flood of rejections costs a few log lines, and the next line says how many."""

    def __init__(
        self, rate_per_s: float, burst: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self._bucket = TokenBucket(rate_per_s, burst, clock())
        self.held_back = 0

    def take(self) -> int | None:
        """None: do not log this one. Otherwise log it, with this many held back before."""
        if self._bucket.take(self._clock()) > 0:
            self.held_back += 1
            return None
        held, self.held_back = self.held_back, 0
        return held


@dataclass(frozen=True)
class _Deps:
    credentials: CredentialIndex
    sink: HeartbeatSink
    limiter: AgentRateLimiter
    gateway_id: str
    hub_connected: Callable[[], bool]
    hub_calls: HubCalls | None
    failed_auth: FailedAuthLimiter
    rejection_log: LogBudget
    on_heartbeat_refused: Callable[[int], None] = lambda status: None  # metrics


DEPS = web.AppKey("deps", _Deps)
AGENT_ID = web.RequestKey("agent_id", str)


def _shown(value: str, max_chars: int = 200) -> str:
    """Outside text as it may appear in a log line or an error (one line, bounded)."""
    return displayable(value, max_chars=max_chars).replace("\n", "\ufffd").replace("\t", " ")


def _log_rejection(request: web.Request, exc: ApiError) -> None:
    heartbeat = request.path.endswith("/heartbeat")
    if heartbeat:
        request.app[DEPS].on_heartbeat_refused(exc.status)  # counted, logged or not
    event = "agent_api.heartbeat.rejected" if heartbeat else "agent_api.request.rejected"
    if exc.status == 429:
        # 429s come in floods by nature; the rejections that led to them were logged.
        log.debug(event, status=exc.status, path=_shown(request.path))
        return
    held_back = request.app[DEPS].rejection_log.take()
    if held_back is None:
        return
    fields = {
        "status": exc.status,
        "detail": exc.detail,
        "path": _shown(request.path),
        "agent_id": request.get(AGENT_ID),
        "request_id": request[REQUEST_ID],
    }
    if held_back:
        fields["held_back"] = held_back  # rejections not logged since the last line
    if exc.status in (401, 403):
        log.warning(event, **fields)
    else:
        log.info(event, **fields)


_request_context = http.request_context(
    log,
    failure_event="agent_api.request.failed",
    failure_detail="internal error; see the sidecar log",
    on_api_error=_log_rejection,
)


@web.middleware
async def _local_callers_only(request: web.Request, handler: http.Handler) -> web.StreamResponse:
    """Refuse what a browser sends, and any request addressed to a non-loopback name."""
    for name in BROWSER_HEADERS:
        if name in request.headers:
            raise ApiError(
                403,
                f"requests from a web browser are refused (the request carries {name}): the "
                "agent API is for programs on this host; call it with curl or an HTTP library",
            )
    hosts = request.headers.getall("Host", [])
    if hosts and not _is_loopback_authority(hosts[0]):
        raise ApiError(
            403,
            f"the agent API answers only requests addressed to this host's loopback address, "
            f"not {_shown(hosts[0], 80)!r} (which may be a DNS name rebound to 127.0.0.1); "
            "call http://127.0.0.1:PORT/ (or localhost, [::1]) directly",
        )
    return await handler(request)


def _is_loopback_authority(value: str) -> bool:
    """Whether a Host header names a loopback host: 127.0.0.1, [::1], localhost (a port
    may follow). A name that only resolves to loopback (DNS rebinding) is not one."""
    host = value.strip().lower()
    if host.startswith("["):
        inner, sep, rest = host[1:].partition("]")
        if not sep or (rest and not _is_port(rest)):
            return False
        return ":" in inner and is_loopback_host(inner)
    name, sep, port = host.rpartition(":")
    if sep and _is_port(":" + port):
        host = name
    return ":" not in host and is_loopback_host(host)


def _is_port(text: str) -> bool:
    return text.startswith(":") and text[1:].isascii() and text[1:].isdigit() and len(text) <= 6


def _authenticate(request: web.Request) -> str:
    """The calling agent's id, from X-Agent-Token or Authorization: Bearer."""
    deps = request.app[DEPS]
    raw = token_from_headers(request.headers)
    # Whose failures these are: the token id when it is one this gateway knows (only
    # that token can be held back), else one shared key for unknown and one for
    # malformed tokens (a guesser inventing ids gets no fresh budget per id).
    caller = deps.credentials.failure_key(raw) if raw is not None else MALFORMED_TOKENS
    deps.failed_auth.before_check(caller)
    if raw is None:
        deps.failed_auth.failed(caller)
        raise ApiError(
            401,
            f"missing agent token: send {TOKEN_HEADER}: <content of the agent's "
            f"{TOKEN_FILE_NAME} file> (or Authorization: Bearer <token>)",
            {"WWW-Authenticate": "Bearer"},
        )
    try:
        agent_id = deps.credentials.verify(raw)
    except CredentialError as exc:
        deps.failed_auth.failed(caller)
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
            f"this token belongs to agent {agent_id}, not {_shown(named, 128)}; an agent may "
            "only heartbeat for itself",
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
    """The hub's agent API, reached through the link (the token is checked here first).

    Only what the hub answers is forwarded: a plain path (`plain_agent_path`, checked on
    the path as sent, before any decoding), the query as sent, a Content-Type that is
    text. Anything else is refused here, saying why."""
    if request.path in (HEARTBEAT_PATH, HEALTHZ_PATH):  # ours, with the wrong method
        allowed = "POST" if request.path == HEARTBEAT_PATH else "GET"
        raise web.HTTPMethodNotAllowed(request.method, [allowed])
    raw_path = request.rel_url.raw_path
    if not plain_agent_path(raw_path):
        raise ApiError(
            404,
            f"{_shown(raw_path)} is not a path of the agent API: a forwarded path is "
            f"{AGENT_API_PREFIX}/ and then plain segments (letters, digits, - _ ~ and the "
            "like; no %-escapes, '.' or '..' segments, empty segments or backslashes, at "
            f"most {MAX_PATH_CHARS} characters); the hub answers no other",
        )
    query = request.rel_url.raw_query_string
    if len(query) > MAX_QUERY_CHARS or not _is_line(query):
        raise ApiError(
            400,
            f"the query string is not {MAX_QUERY_CHARS} characters or fewer of printable "
            "text; percent-encode what it carries",
        )
    content_type = request.headers.get("Content-Type", "")
    if len(content_type) > MAX_CONTENT_TYPE_CHARS or not _is_line(content_type):
        raise ApiError(
            400,
            "the Content-Type header is not a media type (printable text, at most "
            f"{MAX_CONTENT_TYPE_CHARS} characters); send Content-Type: application/json",
        )
    _authenticate(request)
    hub_calls = request.app[DEPS].hub_calls
    if hub_calls is None:
        raise ApiError(404, "not found")
    call = pb.AgentCall(
        method=request.method,
        path=raw_path,
        query=query,
        body=await _read_body(request),
        agent_token=token_from_headers(request.headers) or "",
        content_type=content_type,
    )
    try:
        result = await hub_calls.call(call)
    except HubUnavailable as exc:
        raise ApiError(503, str(exc), {"Retry-After": "5"}) from None
    return _hub_answer(result)


def _is_line(value: str) -> bool:
    """Printable one-line text (empty allowed): what may go into a header or a URL."""
    if not value:
        return True
    try:
        check_name(value)
    except TextError:
        return False
    return True


def _hub_answer(result: pb.AgentCallResult) -> web.Response:
    """The hub's answer as this API's response; what cannot be one is a 502."""
    if not 200 <= result.status <= 599:
        raise ApiError(502, f"the hub answered with status {result.status}; retry")
    media_type = (result.content_type or "application/json").split(";")[0].strip()
    if not _MEDIA_TYPE.fullmatch(media_type):
        media_type = "application/octet-stream"
    response = web.Response(status=result.status, body=result.body, content_type=media_type)
    for name, value in result.headers.items():
        if _HEADER_NAME.fullmatch(name) and _is_line(value):
            response.headers[name] = value
    return response


def build_app(deps: _Deps, max_body_bytes: int) -> web.Application:
    app = web.Application(
        middlewares=[_request_context, _local_callers_only], client_max_size=max_body_bytes
    )
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
            FailedAuthLimiter(self.limits.failed_auth_rate_per_s, self.limits.failed_auth_burst),
            LogBudget(self.limits.rejection_log_rate_per_s, self.limits.rejection_log_burst),
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
