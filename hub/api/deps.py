"""What the API's handlers may use (typed application state)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from hub.database import Database
from hub.events import EventBus
from hub.gateway_queries import GatewayQueries
from hub.gateways import GatewayService
from hub.link_server import SessionRegistry
from hub.provisioning import Provisioning
from hub.reconciler import Reconciler
from hub.store import Store
from hub.template_sync import TemplateSync
from hub.tokens import TokenKeyring
from hub.webhooks.service import WebhookService


@dataclass(frozen=True)
class HttpDeps:
    store: Store
    db: Database
    registry: SessionRegistry
    admin_token: str
    link_serving: Callable[[], bool]
    gateways: GatewayService
    reconciler: Reconciler  # the link's report sink, which heartbeats also reach through
    provisioning: Provisioning
    template_sync: TemplateSync
    keyring: TokenKeyring  # checks agent tokens
    events: EventBus
    queries: GatewayQueries  # live reads of a gateway through its sidecar
    enroll_address: str | None  # HOST:PORT sidecars enroll at; None in --insecure-dev mode
    link_address: str
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the API
    webhooks: WebhookService | None = None  # board webhooks: CRUD, ingest, delivery


DEPS = web.AppKey("deps", HttpDeps)


def deps(request: web.Request) -> HttpDeps:
    return request.app[DEPS]
