"""The dashboard, served by the hub on its HTTP port at `/` and `/ui/...`.

`Dashboard` is built by the composition root with the parts handlers may use
(`HttpDeps`) and mounted on the hub's aiohttp application as a sub-application, so
its own middleware wraps only its pages:

1. every answer carries a strict Content-Security-Policy (scripts and styles only
   from /ui/static, no inline script, style or event handler), refuses framing, and
   is not cached;
2. a page needs a session (else: the login page); a POST needs the session's CSRF
   token and must come from this origin;
3. errors are pages that name the cause and the fix, not JSON.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from hub.api.core import caller_of
from hub.api.deps import HttpDeps
from hub.store.errors import Refusal, StoreError
from hub.ui import live
from hub.ui.actions import Actions
from hub.ui.context import SESSION, UiContext, safe_next, see_other, with_query
from hub.ui.rendering import build_environment, load_static, precompile
from hub.ui.sessions import (
    CSRF_FIELD,
    LOGIN_CSRF_LIFETIME_S,
    CookieNames,
    Sessions,
    login_csrf_ok,
    new_login_csrf,
    token_matches,
)
from hub.ui.trends import FleetSampler
from hub.ui.views import Pages
from missioncontrol.http import REQUEST_ID, ApiError, FailedAuthLimiter
from missioncontrol.log import get_logger

log = get_logger("hub.ui")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}
PUBLIC_PATHS = ("/ui/login",)
ERROR_STATUS = {Refusal.INVALID: 422, Refusal.NOT_FOUND: 404, Refusal.FORBIDDEN: 403}


class Dashboard:
    def __init__(
        self,
        deps: HttpDeps,
        *,
        failed_auth: FailedAuthLimiter,
        secure_cookies: bool,
        clock: Callable[[], float] = time.time,
        sessions: Sessions | None = None,
    ) -> None:
        static = load_static()
        env = build_environment(static)
        precompile(env)
        self.ui = UiContext(
            deps=deps,
            sessions=sessions or Sessions(clock=clock),
            env=env,
            static=static,
            failed_auth=failed_auth,
            cookies=CookieNames.for_transport(secure_cookies),
            secure_cookies=secure_cookies,
            clock=clock,
        )
        self.pages = Pages(self.ui)
        self.actions = Actions(self.ui)
        self.sampler = FleetSampler(deps.db, clock=clock)

    def start(self) -> None:
        """Start sampling the fleet's counts (the overview's trends and charts)."""
        self.sampler.start()

    async def stop(self) -> None:
        await self.sampler.stop()

    def mount(self, app: web.Application) -> None:
        """`/` and `/ui` lead to the overview; everything else lives under `/ui/`."""
        sub = web.Application(middlewares=[self._middleware])
        sub.add_routes(
            [
                web.get("/login", self.login_page),
                web.post("/login", self.login),
                web.post("/logout", self.logout),
                web.get("/events", self.events),
                web.get("/static/{name}", self.static_file),
                *self.pages.routes(),
                *self.actions.routes(),
            ]
        )
        app.router.add_get("/", self.to_overview)
        app.router.add_get("/ui", self.to_overview)
        app.add_subapp("/ui", sub)

    # ---------------------------------------------------------------- middleware

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await self._guarded(request, handler)
        except web.HTTPException as exc:
            if exc.status < 400:
                response = web.Response(status=exc.status, headers=exc.headers)
            else:
                response = self._error(request, exc.status, exc.reason)
        except StoreError as exc:
            response = self._error(request, ERROR_STATUS.get(exc.refusal, 409), str(exc))
        except Exception:
            request_id = request.get(REQUEST_ID, "")
            log.exception("ui.request.failed", path=request.path, request_id=request_id)
            response = self._error(
                request, 500, f"internal error; see the hub log (request id {request_id})"
            )
        if not response.prepared:
            _secure(response, static=request.path.startswith("/ui/static/"))
        return response

    async def _guarded(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path.startswith("/ui/static/"):
            return await handler(request)
        if request.method == "POST" and not _same_origin(request):
            return self._error(
                request,
                403,
                "this form came from another site (its Origin is not this dashboard's); "
                "use the dashboard's own pages",
            )
        if path in PUBLIC_PATHS:
            return await handler(request)
        session = self.ui.sessions.get(request.cookies.get(self.ui.cookies.session))
        if session is None:
            if request.method == "GET" and path != "/ui/events":
                return see_other(with_query("/ui/login", {"next": request.path_qs}))
            return self._error(request, 401, "not logged in, or the session ended; log in again")
        request[SESSION] = session
        if request.method == "POST":
            form = await request.post()
            offered = form.get(CSRF_FIELD)
            if not session.csrf_ok(offered if isinstance(offered, str) else None):
                log.warning("ui.csrf.refused", path=path, caller=caller_of(request))
                return self._error(
                    request,
                    403,
                    "this form's CSRF token is missing or wrong (a stale page, or a form "
                    "from another site); reload the page and send it again",
                )
        return await handler(request)

    def _error(self, request: web.Request, status: int, detail: str) -> web.Response:
        return self.ui.render(
            request, "error.html", status=status, title=f"Error {status}", detail=detail
        )

    # ------------------------------------------------------------------- login

    async def to_overview(self, request: web.Request) -> web.StreamResponse:
        response = see_other("/ui/")
        _secure(response, static=False)
        return response

    async def login_page(
        self, request: web.Request, *, error: str = "", status: int = 200
    ) -> web.Response:
        if self.ui.sessions.get(request.cookies.get(self.ui.cookies.session)) and not error:
            return see_other(safe_next(request.query.get("next")))
        token = new_login_csrf()
        response = self.ui.render(
            request,
            "login.html",
            status=status,
            title="Log in",
            login_csrf=token,
            next=safe_next(request.query.get("next")),
            error=error,
        )
        response.set_cookie(
            self.ui.cookies.login_csrf,
            token,
            max_age=int(LOGIN_CSRF_LIFETIME_S),
            path="/",
            secure=self.ui.secure_cookies,
            httponly=True,
            samesite="Strict",
        )
        return response

    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        caller = caller_of(request)
        if not login_csrf_ok(
            request.cookies.get(self.ui.cookies.login_csrf), _text(form.get(CSRF_FIELD))
        ):
            return await self.login_page(
                request,
                error="The login form expired or came from another site; send it again.",
                status=403,
            )
        try:
            self.ui.failed_auth.before_check(caller)
        except ApiError as exc:
            response = await self.login_page(request, error=str(exc.detail), status=429)
            response.headers.update(exc.headers)
            return response
        if not token_matches(_text(form.get("token")) or "", self.ui.deps.admin_token):
            self.ui.failed_auth.failed(caller)
            log.warning("ui.login.refused", caller=caller)
            return await self.login_page(
                request,
                error="That is not the admin token. It is in the hub's data directory "
                "(admin-token), or in $MC_ADMIN_TOKEN where the hub was started.",
                status=401,
            )
        session_id, session = self.ui.sessions.create()
        log.info("ui.login.accepted", caller=caller)
        response = see_other(safe_next(_text(form.get("next"))))
        response.set_cookie(
            self.ui.cookies.session,
            session_id,
            max_age=int(session.expires_at - session.created_at),
            path="/",
            secure=self.ui.secure_cookies,
            httponly=True,
            samesite="Strict",
        )
        response.del_cookie(self.ui.cookies.login_csrf, path="/")
        return response

    async def logout(self, request: web.Request) -> web.Response:
        self.ui.sessions.end(request[SESSION])
        response = see_other("/ui/login")
        response.del_cookie(
            self.ui.cookies.session,
            path="/",
            secure=self.ui.secure_cookies,
            httponly=True,
            samesite="Strict",
        )
        return response

    # -------------------------------------------------------------- live, static

    async def events(self, request: web.Request) -> web.StreamResponse:
        response = await live.stream(request, self.ui.deps.events)
        return response

    async def static_file(self, request: web.Request) -> web.StreamResponse:
        item = self.ui.static.get(request.match_info["name"])
        if item is None:
            raise web.HTTPNotFound(reason="no such file")
        response = web.Response(body=item.body, content_type=item.content_type.split(";")[0])
        response.charset = "utf-8" if "charset" in item.content_type else None
        if request.query.get("v") == item.version:
            response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
        else:
            response.headers["Cache-Control"] = "no-cache"
        response.headers["ETag"] = f'"{item.version}"'
        return response


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _same_origin(request: web.Request) -> bool:
    """A POST from this dashboard: its Origin (or Sec-Fetch-Site) says so, when sent."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        return origin is None
    host = origin.split("://", 1)[-1]
    return host == request.host


def _secure(response: web.StreamResponse, *, static: bool) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if not static:
        response.headers.setdefault("Cache-Control", "no-store")
