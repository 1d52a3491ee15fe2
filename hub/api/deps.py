"""What the API's handlers may use (typed application state)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from hub.alerts.service import AlertService
from hub.events import EventBus
from hub.feeds import Feed
from hub.fleet.driver import RolloutService
from hub.gateways import GatewayService
from hub.governor import HeartbeatGovernor
from hub.lifecycle.reconciler import Reconciler
from hub.link.queries import GatewayQueries
from hub.link.server import SessionRegistry
from hub.metrics import HubMetrics
from hub.provisioning.agent_tokens import TokenKeyring
from hub.provisioning.service import Provisioning
from hub.provisioning.template_sync import TemplateSync
from hub.store.database import Database
from hub.store.gateways import GatewayStore
from hub.webhooks.service import WebhookService


@dataclass(frozen=True)
class HttpDeps:
    store: GatewayStore
    db: Database
    registry: SessionRegistry
    admin_token: str
    link_serving: Callable[[], bool]
    gateways: GatewayService
    reconciler: Reconciler  # the link's report sink, which heartbeats also reach through
    provisioning: Provisioning
    template_sync: TemplateSync
    rollouts: RolloutService  # staged rollouts across the fleet
    keyring: TokenKeyring  # checks agent tokens
    events: EventBus
    queries: GatewayQueries  # live reads of a gateway through its sidecar
    enroll_address: str | None  # HOST:PORT sidecars enroll at; None in --insecure-dev mode
    link_address: str
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the API
    webhooks: WebhookService | None = None  # board webhooks: CRUD, ingest, delivery
    activity: Feed = field(default_factory=lambda: Feed("activity"))  # committed events, live
    memory: Feed = field(default_factory=lambda: Feed("memory"))  # board memory notes, live
    metrics: HubMetrics | None = None  # GET /metrics and the per-request counts
    alerts: AlertService | None = None  # alert rules, their watcher and sender
    governor: HeartbeatGovernor | None = None  # a quiet board's heartbeats backed off


DEPS = web.AppKey("deps", HttpDeps)


def deps(request: web.Request) -> HttpDeps:
    return request.app[DEPS]
