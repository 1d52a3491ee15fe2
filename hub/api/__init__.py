"""The hub's HTTP API (aiohttp): health, admin REST, live streams, OpenAPI."""

from __future__ import annotations

from aiohttp import web

from hub.api import (
    activity,
    agent_facing,
    agent_messages,
    agents,
    alerts,
    approvals,
    board_groups,
    boards,
    fleet,
    gateway_live,
    gateways,
    governor,
    health,
    identity,
    memory,
    metrics,
    tasks,
    template_sync,
    usage,
)
from hub.api import webhooks as board_webhooks
from hub.api.agent_auth import AgentAuthenticator
from hub.api.core import MAX_BODY_BYTES, Api, Guards, cors, request_context
from hub.api.deps import DEPS, HttpDeps
from missioncontrol.http import FailedAuthLimiter, RateLimiter
from missioncontrol.version import VERSION

__all__ = ["HttpDeps", "build_api", "build_app"]

ADMIN_RATE = (50.0, 200)  # requests per second, burst, per admin token
AGENT_RATE = (10.0, 40)  # per agent token


def build_api(*, metrics_public: bool = False) -> Api:
    api = Api("Mission Control hub", VERSION)
    for module in (
        health,
        identity,
        gateways,
        gateway_live,
        template_sync,
        boards,
        agents,
        tasks,
        agent_facing,
        activity,
        memory,
        approvals,
        agent_messages,
        board_groups,
        alerts,
        fleet,
        governor,
        usage,
    ):
        module.register(api)
    board_webhooks.register(api)
    gateways.register_inventory(api)
    metrics.register(api, public=metrics_public)
    return api


def build_app(
    deps: HttpDeps, api: Api, *, failed_auth: FailedAuthLimiter | None = None
) -> web.Application:
    """The API's application; `failed_auth` is shared with whatever else checks the
    admin token on this port (the dashboard's login), so guesses count once."""
    metered = [deps.metrics.middleware()] if deps.metrics is not None else []
    app = web.Application(
        middlewares=[*metered, cors(deps.cors_origins), request_context],
        client_max_size=MAX_BODY_BYTES,
    )
    app[DEPS] = deps
    api.mount(
        app,
        Guards(
            admin_token=lambda: deps.admin_token,
            agent_auth=AgentAuthenticator(deps.db, deps.keyring),
            admin_limit=RateLimiter(*ADMIN_RATE),
            agent_limit=RateLimiter(*AGENT_RATE),
            failed_auth=failed_auth or FailedAuthLimiter(),
        ),
    )
    return app
