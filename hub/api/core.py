"""The hub API's plumbing: routes declared once, validated and documented from one source.

A route names its pydantic models for the query string, the body and the
response. The same models validate every request (unknown fields and wrong types
are a 422 naming the field) and generate `/openapi.json`, so the document cannot
drift from what the server accepts. Errors are always `{"detail", "request_id"}`
and every response carries `X-Request-Id`.
"""

from __future__ import annotations

import enum
import functools
import hmac
import re
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from hub.link.agent_calls import VIA_GATEWAY_HEADER
from hub.store.errors import Refusal, StoreError
from missioncontrol import http
from missioncontrol.agent_api import TOKEN_HEADER
from missioncontrol.http import ApiError, FailedAuthLimiter, RateLimiter
from missioncontrol.log import get_logger
from missioncontrol.netaddr import is_loopback_host
from missioncontrol.text import TextError, check_name, check_text, displayable, is_encodable

log = get_logger("hub.api")

MAX_BODY_BYTES = 1024 * 1024
MAX_PAGE = 200


# How a request field's text is checked (missioncontrol/text.py): every string is one
# line of printable text unless its Field says otherwise with one of these.
MULTILINE: dict[str, Any] = {"x-text": "multiline"}  # line breaks and tabs allowed
OPAQUE: dict[str, Any] = {"x-text": "opaque"}  # a secret: any valid Unicode


def _checked_strings(value: Any, kind: str | None) -> Any:
    if isinstance(value, str):
        if kind == "opaque":
            if not is_encodable(value):
                raise ValueError("is not valid UTF-8; send UTF-8 text")
            return value
        check = check_text if kind == "multiline" else check_name
        try:
            check(value)  # lengths are the Field's to bound
        except TextError as exc:
            raise ValueError(str(exc)) from None
        return value
    if isinstance(value, dict):
        return {_checked_strings(k, None): _checked_strings(v, kind) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_checked_strings(item, kind) for item in value)
    return value


class _CheckedText(BaseModel):
    """Every string a request carries is valid UTF-8 without control characters, and a
    name (any string not marked MULTILINE or OPAQUE) is one line: such text reaches
    prompt files, logs and the dashboard."""

    @field_validator("*", mode="after")
    @classmethod
    def _text(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None or info.field_name is None:
            return value
        extra = cls.model_fields[info.field_name].json_schema_extra
        kind = extra.get("x-text") if isinstance(extra, dict) else None
        if kind == "multiline" and isinstance(value, str) and not value.strip():
            return value  # empty text is allowed where the Field allows it
        if kind is None and isinstance(value, str) and not value:
            return value  # an empty name is the Field's min_length to refuse
        return _checked_strings(value, kind if isinstance(kind, str) else None)


class Strict(_CheckedText):
    """Request models: unknown fields are refused, not ignored; text is checked."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Query(_CheckedText):
    """Query strings: values are validated, unknown parameters ignored (cache busters)."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


class Page(Query):
    limit: int = Field(MAX_PAGE, ge=1, le=MAX_PAGE)
    offset: int = Field(0, ge=0, le=1_000_000_000)


REFUSAL_STATUS = {
    Refusal.INVALID: 422,
    Refusal.NOT_FOUND: 404,
    Refusal.FORBIDDEN: 403,
    Refusal.CONFLICT: 409,
}


def refused(exc: StoreError) -> ApiError:
    """A refusal from the store as its HTTP answer; an invalid field is named like a
    validation error."""
    status = REFUSAL_STATUS[exc.refusal]
    field = getattr(exc, "field", None)
    if status == 422 and field is not None:
        kind = getattr(exc, "error_type", "value_error")
        return ApiError(422, [{"loc": [field], "msg": str(exc), "type": kind}])
    return ApiError(status, str(exc))


def validation_detail(exc: ValidationError, model: type[BaseModel]) -> list[dict[str, Any]]:
    """Pydantic's errors as the API's detail; an unknown field's says which fields are taken."""
    detail = []
    for error in exc.errors():
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            allowed = _fields_at(model, error["loc"][:-1])
            if allowed:
                message = f"unknown field {error['loc'][-1]!r}; this request takes: " + ", ".join(
                    allowed
                )
        detail.append({"loc": list(error["loc"]), "msg": message, "type": error["type"]})
    return detail


def _fields_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The field names of the (nested) model that `loc` leads to, if it leads to one."""
    current: Any = model
    for step in loc:
        field = current.model_fields.get(step) if isinstance(step, str) else None
        if field is None:
            return []
        nested = [
            arg
            for arg in (field.annotation, *typing.get_args(field.annotation))
            if isinstance(arg, type) and issubclass(arg, BaseModel)
        ]
        if not nested:
            return []
        current = nested[0]
    return sorted(current.model_fields)


request_context = http.request_context(
    log, failure_event="http.request.failed", failure_detail="internal error; see the hub log"
)


def cors(origins: tuple[str, ...]) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Allow browser calls from the configured origins only (none by default)."""
    allowed = set(origins)

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is None or origin not in allowed:
            return await handler(request)
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            response: web.StreamResponse = web.Response(status=204)
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, PATCH, DELETE"
            response.headers["Access-Control-Allow-Headers"] = (
                f"Authorization, Content-Type, {TOKEN_HEADER}, X-Request-Id"
            )
            response.headers["Access-Control-Max-Age"] = "600"
        else:
            response = await handler(request)
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
        return response

    return middleware


class Auth(enum.Enum):
    NONE = "none"
    ADMIN = "admin"
    AGENT = "agent"


@dataclass
class Call:
    """What a handler receives besides the request."""

    request: web.Request
    query: Any = None
    body: Any = None
    principal: Any = None  # the authenticated agent for AGENT routes


Handler = Callable[[Call], Awaitable[Any]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    tags: tuple[str, ...]
    auth: Auth
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    extra: dict[str, Any] = field(default_factory=dict)


AgentAuthenticator = Callable[[web.Request], Awaitable[Any]]


@dataclass(frozen=True)
class Guards:
    """Who may call a route, and how often: credentials first, then rate limits.

    A caller whose credential checks keep failing is refused before its next check
    (`failed_auth`); valid credentials are limited per admin token and per agent.
    """

    admin_token: Callable[[], str]
    agent_auth: AgentAuthenticator
    admin_limit: RateLimiter
    agent_limit: RateLimiter
    failed_auth: FailedAuthLimiter

    async def authenticate(self, request: web.Request, auth: Auth) -> Any:
        """The route's principal: the admin token, or the agent the request acts as."""
        caller = caller_of(request)
        self.failed_auth.before_check(caller)
        try:
            if auth is Auth.ADMIN:
                principal: Any = require_admin(request, self.admin_token())
            else:
                principal = await self.agent_auth(request)
        except ApiError as exc:
            if exc.status == 401:
                self.failed_auth.failed(caller)
            raise
        if auth is Auth.ADMIN:
            self.admin_limit.check("admin:" + principal[:16], "this admin token")
        else:
            agent = str(getattr(principal, "id", principal))
            self.agent_limit.check("agent:" + agent, f"agent {agent}")
        return principal


def caller_of(request: web.Request) -> str:
    """Whose failures these are: the peer's address, or for a call a sidecar forwarded
    (the hub's own loopback forwarder), the gateway it came through."""
    remote = request.remote or "unknown"
    via = request.headers.get(VIA_GATEWAY_HEADER)
    if via and is_loopback_host(remote):
        return f"gateway {displayable(via, max_chars=64)}"
    return remote


class Api:
    """Route registry: mounts routes on an aiohttp app and renders their OpenAPI document."""

    def __init__(self, title: str, version: str) -> None:
        self.title = title
        self.version = version
        self.routes: list[Route] = []

    def route(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        tags: tuple[str, ...] = (),
        auth: Auth = Auth.ADMIN,
        query: type[BaseModel] | None = None,
        body: type[BaseModel] | None = None,
        response: type[BaseModel] | None = None,
        status: int = 200,
        **extra: Any,
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.routes.append(
                Route(
                    method, path, handler, summary, tags, auth, query, body, response, status, extra
                )
            )
            return handler

        return register

    def is_agent_route(self, method: str, path: str) -> bool:
        """Whether (method, path) is a route that declares agents its callers."""
        return any(
            route.auth is Auth.AGENT
            and route.method == method
            and _route_pattern(route.path).fullmatch(path) is not None
            for route in self.routes
        )

    def mount(self, app: web.Application, guards: Guards) -> None:
        for route in self.routes:
            app.router.add_route(route.method, route.path, self._wrap(route, guards))

    def _wrap(
        self, route: Route, guards: Guards
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            call = Call(request)
            if route.auth is not Auth.NONE:
                call.principal = await guards.authenticate(request, route.auth)
            if route.query is not None:
                try:
                    call.query = route.query.model_validate(dict(request.query))
                except ValidationError as exc:
                    raise ApiError(422, validation_detail(exc, route.query)) from None
            if route.body is not None:
                call.body = await read_body(request, route.body)
            try:
                result = await route.handler(call)
            except StoreError as exc:
                raise refused(exc) from None
            if isinstance(result, web.StreamResponse):
                return result
            if isinstance(result, BaseModel):
                result = result.model_dump(mode="json")
            return web.json_response(result, status=route.status)

        return handle

    def openapi(self) -> dict[str, Any]:
        """The OpenAPI 3.1 document, generated from the routes' own models."""
        schemas: dict[str, Any] = {
            "Error": {
                "type": "object",
                "required": ["detail", "request_id"],
                "properties": {"detail": {}, "request_id": {"type": "string"}},
            }
        }
        paths: dict[str, dict[str, Any]] = {}

        def ref(model: type[BaseModel]) -> dict[str, str]:
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, sub in schema.pop("$defs", {}).items():
                schemas[name] = sub
            schemas[model.__name__] = schema
            return {"$ref": f"#/components/schemas/{model.__name__}"}

        for route in self.routes:
            operation: dict[str, Any] = {
                "summary": route.summary,
                "tags": list(route.tags),
                "operationId": route.handler.__name__,
                "responses": {
                    str(route.status): {
                        "description": "OK",
                        **(
                            {"content": {"application/json": {"schema": ref(route.response)}}}
                            if route.response
                            else {}
                        ),
                    }
                },
                **route.extra,
            }
            errors = {"422": "invalid input", "429": "rate limited"}
            if route.auth is not Auth.NONE:
                errors["401"] = "missing or wrong credentials"
                operation["security"] = [
                    {"admin": []} if route.auth is Auth.ADMIN else {"agent": []}
                ]
            if "{" in route.path:
                errors["404"] = "not found"
            for code, text in errors.items():
                operation["responses"][code] = {
                    "description": text,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    },
                }
            parameters = [
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                for name in _path_params(route.path)
            ]
            if route.query is not None:
                for name, prop in route.query.model_json_schema().get("properties", {}).items():
                    parameters.append(
                        {"name": name, "in": "query", "required": False, "schema": prop}
                    )
            if parameters:
                operation["parameters"] = parameters
            if route.body is not None:
                operation["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": ref(route.body)}},
                }
            paths.setdefault(route.path, {})[route.method.lower()] = operation
        return {
            "openapi": "3.1.0",
            "info": {"title": self.title, "version": self.version},
            "paths": paths,
            "components": {
                "schemas": schemas,
                "securitySchemes": {
                    "admin": {"type": "http", "scheme": "bearer"},
                    "agent": {"type": "apiKey", "in": "header", "name": TOKEN_HEADER},
                },
            },
        }


@functools.cache
def _route_pattern(path: str) -> re.Pattern[str]:
    """A route's path template ("/boards/{board_id}") as a pattern of plain segments."""
    parts = ["[^/]+" if part.startswith("{") else re.escape(part) for part in path.split("/")]
    return re.compile("/".join(parts))


def _path_params(path: str) -> list[str]:
    return [part[1:-1].split(":")[0] for part in path.split("/") if part.startswith("{")]


def require_admin(request: web.Request, expected: str) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(
            401,
            "missing admin token: send Authorization: Bearer <token>",
            {"WWW-Authenticate": "Bearer"},
        )
    # A header with bytes that are not ASCII cannot be the token (and must not be a 500).
    if not token.isascii() or not hmac.compare_digest(token.encode(), expected.encode()):
        raise ApiError(401, "invalid admin token", {"WWW-Authenticate": "Bearer"})
    return token


async def read_body(request: web.Request, model: type[BaseModel]) -> Any:
    """Read a JSON body with a hard size cap (also for bodies without Content-Length)."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise ApiError(413, f"request body is over {MAX_BODY_BYTES} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(413, f"request body is over {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks) or b"{}"
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise ApiError(422, "request body is not valid JSON") from None
        raise ApiError(422, validation_detail(exc, model)) from None
