"""What every dashboard handler shares: the hub's parts, sessions, templates, and helpers
to render a page, redirect after a form, and read paging and filters."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from jinja2 import Environment

from hub.api.deps import HttpDeps
from hub.ui.rendering import StaticFile
from hub.ui.sessions import CookieNames, Session, Sessions
from missioncontrol.http import FailedAuthLimiter

SESSION = web.RequestKey("ui_session", Session)
PAGE_ROWS = 50
MAX_OFFSET = 1_000_000


@dataclass(frozen=True)
class UiContext:
    deps: HttpDeps
    sessions: Sessions
    env: Environment
    static: dict[str, StaticFile]
    failed_auth: FailedAuthLimiter
    cookies: CookieNames
    secure_cookies: bool
    clock: Callable[[], float]

    def render(
        self, request: web.Request, template: str, *, status: int = 200, **context: Any
    ) -> web.Response:
        session = request.get(SESSION)
        values = {
            "title": "Mission Control",
            "live_scope": "",
            "nav": "",
            "now": self.clock(),
            "session": session,
            "csrf_token": session.csrf_token if session else "",
            "flashes": session.take_flashes() if session else [],
            "path": request.path_qs,
            **context,
        }
        body = self.env.get_template(template).render(values)
        return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")


def see_other(location: str) -> web.Response:
    """The answer to a form: go to `location` (POST, redirect, GET)."""
    return web.Response(status=303, headers={"Location": location})


def session_of(request: web.Request) -> Session:
    return request[SESSION]


def offset_of(request: web.Request) -> int:
    try:
        offset = int(request.query.get("offset", "0"))
    except ValueError:
        return 0
    return min(max(offset, 0), MAX_OFFSET)


def choice(request: web.Request, name: str, allowed: tuple[str, ...]) -> str | None:
    value = request.query.get(name, "")
    return value if value in allowed else None


def text_param(request: web.Request, name: str, max_chars: int = 200) -> str | None:
    value = request.query.get(name, "").strip()
    if not value or len(value) > max_chars or not value.isprintable():
        return None
    return value


def with_query(path: str, params: Mapping[str, Any]) -> str:
    kept = {k: v for k, v in params.items() if v not in (None, "")}
    return f"{path}?{urlencode(kept)}" if kept else path


def safe_next(value: str | None) -> str:
    """Where to go after login: a dashboard path on this host, never another site."""
    if value and value.startswith("/ui/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/ui/"
