"""The dashboard's actions (POST forms): validate, call the hub's services, redirect.

A form is validated by the same pydantic model as the API request it stands for, so
the dashboard accepts exactly what the API accepts. Every answer is a redirect to a
page (post/redirect/get) with a message in the session: what was done, or the cause
of a refusal and its fix. The CSRF token and the request's origin were checked before
any handler here runs (app.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError

from hub.api.agents import agent_spec
from hub.api.boards import BoardCreate
from hub.api.core import validation_detail
from hub.api.gateways import join_token
from hub.api.schemas import AgentCreate, GatewayCreate, JoinTokenCreate, TokenRotate
from hub.api.template_sync import SyncQuery
from hub.boards import create_board
from hub.gateways import EnrollmentUnavailable
from hub.provisioning.template_sync import SyncOptions
from hub.store.errors import StoreError
from hub.ui import seams
from hub.ui.context import UiContext, safe_next, see_other, session_of
from hub.ui.sessions import CSRF_FIELD
from missioncontrol.log import get_logger

log = get_logger("hub.ui.actions")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FormInvalid(Exception):
    """A form the request model refuses; the message names the fields."""


def _fields(form: dict[str, str], names: tuple[str, ...]) -> dict[str, Any]:
    return {name: form[name] for name in names if form.get(name, "") != ""}


def _checked(form: dict[str, str], name: str) -> bool:
    return form.get(name) in ("on", "true", "1")


def validate(model: type[BaseModel], values: dict[str, Any]) -> Any:
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        detail = validation_detail(exc, model)
        raise FormInvalid(
            "; ".join(f"{'.'.join(str(p) for p in d['loc']) or 'form'}: {d['msg']}" for d in detail)
        ) from None


class Actions:
    def __init__(self, ui: UiContext) -> None:
        self.ui = ui

    def routes(self) -> list[web.RouteDef]:
        routes = [
            web.post("/gateways", self.create_gateway),
            web.post("/gateways/{gateway_id}/join-tokens", self.create_join_token),
            web.post("/gateways/{gateway_id}/templates/sync", self.template_sync),
            web.post("/gateways/{gateway_id}/delete", self.delete_gateway),
            web.post("/boards", self.create_board),
            web.post("/boards/{board_id}/delete", self.delete_board),
            web.post("/agents", self.create_agent),
            web.post("/agents/{agent_id}/token/rotate", self.rotate_token),
            web.post("/agents/{agent_id}/reprovision", self.reprovision),
            web.post("/agents/{agent_id}/delete", self.delete_agent),
            web.post("/agents/{agent_id}/pause", self.pause_agent),
            web.post("/agents/{agent_id}/resume", self.resume_agent),
            web.post("/boards/{board_id}/pause", self.pause_board),
            web.post("/boards/{board_id}/resume", self.resume_board),
        ]
        routes += [
            web.route(method, path, handler) for method, path, handler in seams.PAUSE_ACTIONS
        ]
        return routes

    async def _form(self, request: web.Request) -> dict[str, str]:
        data = await request.post()
        return {k: v for k, v in data.items() if isinstance(v, str) and k != CSRF_FIELD}

    async def _do(
        self,
        request: web.Request,
        back: str,
        act: Callable[[dict[str, str]], Awaitable[tuple[str, str]]],
    ) -> web.Response:
        """Run `act(form)` -> (message, where to go); a refusal goes `back` with its cause."""
        session = session_of(request)
        form = await self._form(request)
        back = safe_next(form.pop("back", None)) if form.get("back") else back
        try:
            message, location = await act(form)
        except FormInvalid as exc:
            session.flash("error", f"Not done: {exc}")
            return see_other(back)
        except (StoreError, EnrollmentUnavailable) as exc:
            session.flash("error", f"Not done: {exc}")
            return see_other(back)
        session.flash("ok", message, first=True)  # before what the action itself said
        log.info("ui.action.done", path=request.path)
        return see_other(location)

    # ------------------------------------------------------------------ gateways

    async def create_gateway(self, request: web.Request) -> web.Response:
        d = self.ui.deps

        async def act(form: dict[str, str]) -> tuple[str, str]:
            body = validate(GatewayCreate, _fields(form, ("name",)))
            created = await d.gateways.create(body.name)
            where = f"/ui/gateways/{created.gateway.id}"
            if created.token is None:
                command = (
                    f"mc-sidecar run --hub {d.link_address} --insecure-dev "
                    f"--gateway-id {created.gateway.id}"
                )
                session_of(request).flash(
                    "ok", "Connect its sidecar on the gateway host with:", secret=command
                )
            else:
                token = join_token(created.token, d)
                session_of(request).flash(
                    "ok",
                    "Enroll its sidecar with this command (the join token is shown once, "
                    f"valid until {token.expires_at}):",
                    secret=token.enroll_command or token.join_token,
                )
            return f"Gateway {body.name} created.", where

        return await self._do(request, "/ui/fleet", act)

    async def create_join_token(self, request: web.Request) -> web.Response:
        d = self.ui.deps
        gateway_id = request.match_info["gateway_id"]
        back = f"/ui/gateways/{gateway_id}"

        async def act(form: dict[str, str]) -> tuple[str, str]:
            body = validate(JoinTokenCreate, _fields(form, ("ttl_s", "uses")))
            if await d.store.get_gateway(gateway_id) is None:
                raise FormInvalid(f"gateway {gateway_id} does not exist")
            issued = await d.gateways.join_token(gateway_id, ttl_s=body.ttl_s, uses=body.uses)
            token = join_token(issued, d)
            session_of(request).flash(
                "ok",
                f"Join token {token.token_id} (shown once; {token.max_uses} use(s), valid until "
                f"{token.expires_at}):",
                secret=token.enroll_command or token.join_token,
            )
            return "Join token created.", back

        return await self._do(request, back, act)

    async def template_sync(self, request: web.Request) -> web.Response:
        d = self.ui.deps
        gateway_id = request.match_info["gateway_id"]
        back = f"/ui/gateways/{gateway_id}"

        async def act(form: dict[str, str]) -> tuple[str, str]:
            flags = ("include_main", "lead_only", "reset_sessions", "rotate_tokens", "overwrite")
            values: dict[str, Any] = {name: _checked(form, name) for name in flags}
            values["force_bootstrap"] = _checked(form, "force_bootstrap")
            query = validate(SyncQuery, values)
            if await d.store.get_gateway(gateway_id) is None:
                raise FormInvalid(f"gateway {gateway_id} does not exist")
            job = await d.template_sync.start_job(gateway_id, SyncOptions(**query.model_dump()))
            return "Template sync started.", f"/ui/gateways/{gateway_id}/sync/{job.id}"

        return await self._do(request, back, act)

    async def delete_gateway(self, request: web.Request) -> web.Response:
        d = self.ui.deps
        gateway_id = request.match_info["gateway_id"]

        async def act(form: dict[str, str]) -> tuple[str, str]:
            await d.gateways.delete(gateway_id)
            return "Gateway deleted; its certificates are revoked.", "/ui/fleet"

        return await self._do(request, f"/ui/gateways/{gateway_id}", act)

    # -------------------------------------------------------------------- boards

    async def create_board(self, request: web.Request) -> web.Response:
        d = self.ui.deps

        async def act(form: dict[str, str]) -> tuple[str, str]:
            body = validate(
                BoardCreate, _fields(form, ("name", "gateway_id", "objective", "description"))
            )
            if await d.store.get_gateway(body.gateway_id) is None:
                raise FormInvalid(f"gateway_id: no gateway {body.gateway_id}")
            values = body.model_dump(exclude_unset=True)
            gateway_id = values.pop("gateway_id")
            board = await d.db.write(lambda conn: create_board(conn, gateway_id, values))
            return f"Board {board['name']} created.", f"/ui/boards/{board['id']}"

        return await self._do(request, "/ui/boards", act)

    async def delete_board(self, request: web.Request) -> web.Response:
        d = self.ui.deps
        board_id = request.match_info["board_id"]

        async def act(form: dict[str, str]) -> tuple[str, str]:
            gone = await d.provisioning.delete_board(board_id)
            message = (
                "Board deleted."
                if gone
                else "Board deleting: its agents are removed through their sidecars first."
            )
            return message, "/ui/boards"

        return await self._do(request, f"/ui/boards/{board_id}", act)

    # -------------------------------------------------------------------- agents

    async def create_agent(self, request: web.Request) -> web.Response:
        d = self.ui.deps

        async def act(form: dict[str, str]) -> tuple[str, str]:
            values: dict[str, Any] = _fields(form, ("name", "board_id", "gateway_id"))
            values["is_board_lead"] = _checked(form, "is_board_lead")
            values["is_gateway_main"] = _checked(form, "is_gateway_main")
            if form.get("every"):
                values["heartbeat_config"] = {"every": form["every"]}
            if form.get("role"):
                values["identity_profile"] = {"role": form["role"]}
            body = validate(AgentCreate, values)
            agent = await d.provisioning.create_agent(agent_spec(body))
            return (
                f"Agent {agent.name} created: its sidecar writes its files and wakes it.",
                f"/ui/agents/{agent.id}",
            )

        return await self._do(request, "/ui/agents", act)

    async def rotate_token(self, request: web.Request) -> web.Response:
        d = self.ui.deps
        agent_id = request.match_info["agent_id"]
        back = f"/ui/agents/{agent_id}"

        async def act(form: dict[str, str]) -> tuple[str, str]:
            body = validate(TokenRotate, _fields(form, ("grace_s",)))
            await d.provisioning.rotate_token(agent_id, grace_s=body.grace_s)
            return (
                f"Token rotated: the sidecar writes the new one; the old one works for "
                f"{body.grace_s:g} s more.",
                back,
            )

        return await self._do(request, back, act)

    async def reprovision(self, request: web.Request) -> web.Response:
        d = self.ui.deps
        agent_id = request.match_info["agent_id"]
        back = f"/ui/agents/{agent_id}"

        async def act(form: dict[str, str]) -> tuple[str, str]:
            agent = await d.provisioning.reapply(agent_id)
            return f"Files re-rendered as generation {agent.lifecycle_generation}.", back

        return await self._do(request, back, act)

    async def delete_agent(self, request: web.Request) -> web.Response:
        d = self.ui.deps
        agent_id = request.match_info["agent_id"]

        async def act(form: dict[str, str]) -> tuple[str, str]:
            await d.provisioning.delete_agent(agent_id)
            where = form.get("then", "")
            where = where if where.startswith("/ui/boards/") else "/ui/agents"
            return "Agent deleting: its sidecar removes it, then the row goes.", where

        return await self._do(request, f"/ui/agents/{agent_id}", act)

    # ------------------------------------------------------------- pause, resume

    async def pause_agent(self, request: web.Request) -> web.Response:
        return await self._pause_agent(request, pause=True)

    async def resume_agent(self, request: web.Request) -> web.Response:
        return await self._pause_agent(request, pause=False)

    async def _pause_agent(self, request: web.Request, *, pause: bool) -> web.Response:
        d = self.ui.deps
        agent_id = request.match_info["agent_id"]
        back = f"/ui/agents/{agent_id}"

        async def act(form: dict[str, str]) -> tuple[str, str]:
            if pause:
                await d.provisioning.pause_agent(agent_id)
                return "Paused: its heartbeat job is off, and it is not woken.", back
            await d.provisioning.resume_agent(agent_id)
            return "Resumed: its heartbeat job is back, and it is woken.", back

        return await self._do(request, back, act)

    async def pause_board(self, request: web.Request) -> web.Response:
        return await self._pause_board(request, pause=True)

    async def resume_board(self, request: web.Request) -> web.Response:
        return await self._pause_board(request, pause=False)

    async def _pause_board(self, request: web.Request, *, pause: bool) -> web.Response:
        d = self.ui.deps
        board_id = request.match_info["board_id"]
        back = f"/ui/boards/{board_id}"

        async def act(form: dict[str, str]) -> tuple[str, str]:
            await d.provisioning.set_board_paused(board_id, pause)
            return ("Board paused with its agents." if pause else "Board resumed."), back

        return await self._do(request, back, act)
