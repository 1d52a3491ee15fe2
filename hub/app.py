"""Composition root of mc-hub: builds the parts, starts them, stops them in order.

Start: data directory lock -> database (backup, then migrate) -> link server -> HTTP API.
Stop, in this order so nothing is lost:
  1. stop accepting: the link refuses new streams, the HTTP listener closes;
  2. drain streams: every session ends cleanly, in-flight reports finish;
  3. flush the store: queued writes commit, then the database closes;
  4. release the data directory lock (a restore may now run).
"""

from __future__ import annotations

import datetime as dt
import errno
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from aiohttp import web

from hub.alerts.rules import AlertPolicy
from hub.alerts.service import AlertService
from hub.api import HttpDeps, build_api, build_app
from hub.config import HubConfig
from hub.events import EventBus
from hub.feeds import Feed
from hub.fleet.driver import RolloutService
from hub.gateways import GatewayService
from hub.governor import HeartbeatGovernor
from hub.lifecycle.decisions import Policy
from hub.lifecycle.reconciler import Reconciler
from hub.link.agent_calls import AgentCallForwarder
from hub.link.queries import GatewayQueries
from hub.link.relay import RELAY_ANSWER, RELAY_ASK, QueryRelay
from hub.link.server import LinkService, SessionRegistry
from hub.live_relay import LiveRelay
from hub.memory import MEMORY
from hub.metrics import HubMetrics, MeteredReports
from hub.pki.ca import CertificateAuthority
from hub.pki.enrollment import CertificateIssuer, EnrollmentService, Revocations
from hub.pki.secrets_box import SecretBox
from hub.provisioning.agent_tokens import TokenKeyring
from hub.provisioning.converge import Convergence
from hub.provisioning.service import Provisioning
from hub.provisioning.souls import SoulsDirectory
from hub.provisioning.template_sync import TemplateSync
from hub.store.backup import (
    BackupError,
    BackupScheduler,
    DataDirBusy,
    DataDirLock,
    pre_migration_backup,
)
from hub.store.database import Database, DatabaseError
from hub.store.engines import engine_for
from hub.store.event_log import ACTIVITY
from hub.store.gateways import GATEWAY_DELETED, GatewayStore
from hub.store.outbox import OUTBOX, OUTBOX_SECRETS
from hub.store.ownership import OWNERSHIP
from hub.ui.dashboard import Dashboard
from hub.ui.live import LinkNotices
from hub.usage import UsageLedger
from hub.webhooks.rules import RetryPolicy
from hub.webhooks.service import WebhookService
from missioncontrol.http import FailedAuthLimiter
from missioncontrol.log import get_logger
from missioncontrol.netaddr import HostPort
from missioncontrol.private_files import load_or_create_secret
from protos import link_pb2_grpc as pb_grpc
from protos.contract import server_options

log = get_logger("hub.app")


@dataclass(frozen=True)
class BoundAddresses:
    http: HostPort
    link: HostPort
    enroll: HostPort | None  # None in --insecure-dev mode
    http_tls: bool = False

    @property
    def http_url(self) -> str:
        return f"{'https' if self.http_tls else 'http'}://{self.http}"


class Hub:
    """The hub's parts, built here and nowhere else. `clock`, `webhook_retry` and
    `alert_policy` are seams for tests (time that moves on demand, fast retries)."""

    def __init__(
        self,
        config: HubConfig,
        *,
        clock: Callable[[], float] = time.time,
        webhook_retry: RetryPolicy | None = None,
        alert_policy: AlertPolicy | None = None,
    ) -> None:
        self.config = config
        self.metrics = HubMetrics()  # this hub's own registry: hubs in one process count apart
        self.lock = DataDirLock(config.data_dir)
        hub_key = load_or_create_secret(config.data_dir / "hub.key")
        self.db = Database(
            commit_interval_s=config.commit_interval_s,
            engine=engine_for(config.database_url),
            # SQLite only: a PostgreSQL store is backed up with the database's own tools
            before_migration=pre_migration_backup(config.database_path, config.backup_dir)
            if config.on_sqlite
            else None,
            on_commit=self.metrics.committed,
            secrets=SecretBox.from_hub_key(hub_key, OUTBOX_SECRETS),
        )
        self.store = GatewayStore(self.db)
        self.registry = SessionRegistry(shared=self.db.shared)
        # every hub: a command queued on another hub reaches the stream this one holds
        self.db.listen(OUTBOX, self.registry.notify_outbox, every_hub=True)
        # every hub: a stream another hub (or a newer stream here) took ends here
        self.db.listen(OWNERSHIP, self.registry.owner_changed, every_hub=True)
        self.db.listen(OUTBOX, self.metrics.commands_queued_notice)
        self.backups = BackupScheduler(
            config.database_path,
            config.backup_dir,
            interval_s=config.backup_interval_s,
            keep=config.backup_keep,
            on_backup=self.metrics.backup_finished,
        )
        self.revocations = Revocations()
        self.ca: CertificateAuthority | None = None
        self.issuer: CertificateIssuer | None = None
        self.keyring = TokenKeyring(hub_key)
        if not config.insecure_dev:
            self.ca = CertificateAuthority.load_or_create(
                config.data_dir / "ca", revocations=self.revocations
            )
            self.issuer = CertificateIssuer(
                self.store, self.ca, hub_key, dt.timedelta(days=config.cert_lifetime_days)
            )
        self.events = EventBus(started_at=clock())
        self.activity = Feed("activity")  # committed events, to the live activity streams
        self.memory = Feed("memory")  # board memory notes, to the live memory streams
        # shared database: every hub's rows reach the feeds in id order, and the other
        # hubs' agent changes and link events the bus
        self.live_relay = LiveRelay(self.db, self.events, self.activity, self.memory)
        if self.db.shared:
            self.live_relay.attach()
        else:
            self.db.listen(ACTIVITY, self.activity.publish)
            self.db.listen(MEMORY, self.memory.publish)
        self.clock = clock
        self.link_notices = LinkNotices(self.events)  # the dashboard sees sidecars come and go
        self.reconciler = Reconciler(
            self.db,
            self.store,
            Policy(checkin_deadline_s=config.checkin_deadline_s, hub_started_at=clock()),
            events=self.events,
            clock=clock,
            on_log=self.metrics.lifecycle_logged,
        )
        self.db.listen(OWNERSHIP, self.reconciler.owner_changed, every_hub=True)
        self.provisioning = Provisioning(
            self.reconciler, self.keyring, souls=SoulsDirectory(config.souls_dir)
        )
        self.convergence = Convergence(self.reconciler, self.keyring)
        self.template_sync = TemplateSync(self.db, self.provisioning)
        self.rollouts = RolloutService(
            self.db,
            self.reconciler,
            self.provisioning,
            clock=clock,
            on_progress=lambda fields: self.events.publish(
                "rollout", fields, board_id=None, gateway_id=fields.get("gateway_id")
            ),
        )
        self.queries = GatewayQueries(self.registry)
        self.query_relay: QueryRelay | None = None
        if self.db.shared:  # a live query for a stream another hub holds is asked of it
            self.query_relay = QueryRelay(self.db, self.store.hub_id, self.queries)
            self.queries.relay = self.query_relay
            self.db.listen(RELAY_ASK, self.query_relay.asked, every_hub=True)
            self.db.listen(RELAY_ANSWER, self.query_relay.answered, every_hub=True)
        self.usage = UsageLedger(self.db, clock, on_growth=self.metrics.agent_tokens.inc)
        self.webhooks = WebhookService.from_hub_key(
            self.db, hub_key, retry=webhook_retry, clock=clock
        )
        self.alerts = AlertService.from_hub_key(
            self.db,
            hub_key,
            policy=alert_policy,
            clock=clock,
            on_raised=self.metrics.alert_raised,
            on_attempt=self.metrics.alert_attempted,
        )
        self.db.listen(ACTIVITY, self.alerts.event_committed)
        self.governor = HeartbeatGovernor(self.db, self.reconciler, clock=clock)
        self.db.listen(ACTIVITY, self.governor.event_committed)
        self.gateways = GatewayService(self.store, self.registry, self.revocations, self.issuer)
        # every hub: a gateway deleted through any hub is refused and its stream ends
        self.db.listen(GATEWAY_DELETED, self.gateways.gateway_deleted, every_hub=True)
        self.api = build_api(metrics_public=config.metrics_public)
        # Built once the HTTP port is bound: forwarded agent calls replay on it.
        self.agent_calls: AgentCallForwarder | None = None
        self.link: LinkService | None = None
        self._grpc: grpc.aio.Server | None = None
        self._runner: web.AppRunner | None = None
        self._http_socket: socket.socket | None = None
        self._link_serving = False
        self.dashboard: Dashboard | None = None  # built with the HTTP app it is mounted on
        self.addresses: BoundAddresses | None = None

    async def _link_changed(self, gateway_id: str, up: bool) -> None:
        """A sidecar's stream opened or closed: the lifecycle hears of it first, then the
        dashboard; the agents' files are rendered again if the Hello contradicted what
        they name."""
        await self.reconciler.link_changed(gateway_id, up)
        self.link_notices.link_changed(gateway_id, up)
        if up:
            try:
                await self.provisioning.rerender_stale(gateway_id)
            except Exception as exc:  # the stream must not end over it; the mark stays
                log.error(
                    "provisioning.gateway.rerender_failed", gateway_id=gateway_id, error=str(exc)
                )

    async def start(self) -> BoundAddresses:
        """Open the store, bind every port, start serving. On any failure what was started
        is stopped again, and a taken port or an unusable database is a HubStartError."""
        try:
            return await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> BoundAddresses:
        config = self.config
        try:  # held until stop(): `mc-hub restore` refuses while it is
            self.lock.acquire("mc-hub serve")
        except DataDirBusy as exc:
            raise HubStartError(
                f"another mc-hub runs on --data-dir {config.data_dir}: {exc}"
            ) from None
        # Refuse a taken port before anything else starts (and before grpc logs about it).
        _check_free(config.http_listen, "--http-listen")
        _check_free(config.link_listen, "--link-listen")
        if not config.insecure_dev:
            _check_free(config.enroll_listen, "--enroll-listen")
        try:
            self.db.open()
        except (DatabaseError, BackupError) as exc:
            raise HubStartError(str(exc)) from exc
        if self.db.shared:
            await self.live_relay.start()
        else:  # shared: only a stopped hub's gateways are marked (hub/store/ownership.py)
            await self.store.mark_all_disconnected()
        await self.revocations.load(self.store)
        await self.reconciler.start()
        await self.webhooks.start()
        await self.alerts.start()
        await self.rollouts.start()
        await self.governor.start()

        http_socket = self._http_socket = _bind(config.http_listen, "--http-listen")
        http = HostPort(config.http_listen.host, http_socket.getsockname()[1])
        # A wildcard listener is reachable on loopback.
        local = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(http.host, http.host)
        scheme = "https" if config.http_uses_tls else "http"
        self.agent_calls = AgentCallForwarder(
            f"{scheme}://{HostPort(local, http.port)}", self.api.is_agent_route
        )
        self.link = LinkService(
            self.store,
            self.registry,
            MeteredReports(self.reconciler, self.metrics),
            auto_register=config.insecure_dev,
            is_revoked=None if config.insecure_dev else self.revocations.is_revoked,
            renewer=self.issuer,
            on_link=self._link_changed,
            agent_calls=self.agent_calls,
            queries=self.queries,
            record_hello=lambda hello: self.reconciler.record_hello(
                hello, auto_register=config.insecure_dev
            ),
            on_sidecar_ahead=self.convergence.sidecar_ahead,
            usage=self.usage,
        )
        self._grpc = grpc.aio.server(options=server_options())
        pb_grpc.add_LinkServicer_to_server(self.link, self._grpc)
        enroll: HostPort | None = None
        if self.ca is None:
            link_port = self._grpc.add_insecure_port(str(config.link_listen))
        else:
            names = config.link_names
            link_port = self._grpc.add_secure_port(
                str(config.link_listen),
                self.ca.link_server_credentials(config.link_listen.host, names),
            )
            assert self.issuer is not None
            # One server, two ports: Enroll needs server-only TLS (no client certificate yet);
            # Link.Connect on that port is refused by the peer check.
            pb_grpc.add_EnrollmentServicer_to_server(
                EnrollmentService(self.issuer, link_port=link_port), self._grpc
            )
            enroll_port = self._grpc.add_secure_port(
                str(config.enroll_listen),
                self.ca.enrollment_server_credentials(config.enroll_listen.host, names),
            )
            enroll = HostPort(config.enroll_listen.host, enroll_port)
        await self._grpc.start()
        self._link_serving = True
        link = HostPort(config.link_listen.host, link_port)

        deps = HttpDeps(
            store=self.store,
            db=self.db,
            registry=self.registry,
            admin_token=config.admin_token,
            link_serving=lambda: self._link_serving,
            gateways=self.gateways,
            reconciler=self.reconciler,
            provisioning=self.provisioning,
            template_sync=self.template_sync,
            rollouts=self.rollouts,
            keyring=self.keyring,
            events=self.events,
            queries=self.queries,
            webhooks=self.webhooks,
            activity=self.activity,
            memory=self.memory,
            cors_origins=config.cors_origins,
            enroll_address=str(enroll) if enroll else None,
            link_address=str(link),
            metrics=self.metrics,
            alerts=self.alerts,
            governor=self.governor,
        )
        # One limiter for failed admin-token checks: the API's and the dashboard's login.
        failed_auth = FailedAuthLimiter()
        app = build_app(deps, self.api, failed_auth=failed_auth)
        self.dashboard = Dashboard(
            deps,
            failed_auth=failed_auth,
            secure_cookies=config.http_uses_tls or config.http_tls == "proxy",
            clock=self.clock,
        )
        self.dashboard.mount(app)
        self.dashboard.start()
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=config.shutdown_grace_s)
        await self._runner.setup()
        await web.SockSite(self._runner, http_socket, ssl_context=self._http_tls()).start()
        await self.backups.start()
        self.addresses = BoundAddresses(
            http=http, link=link, enroll=enroll, http_tls=config.http_uses_tls
        )
        log.info(
            "hub.started",
            http=str(self.addresses.http),
            link=str(link),
            enroll=str(enroll) if enroll else None,
            insecure_dev=config.insecure_dev,
            database=self.db.engine.describe,
        )
        if config.insecure_dev:
            log.warning(
                "hub.insecure_dev",
                detail="the link has NO TLS and NO authentication: "
                "any local process can act as any gateway; loopback only, for development",
            )
        return self.addresses

    def _http_tls(self) -> ssl.SSLContext | None:
        """TLS for the REST API when it is served beyond loopback (or asked for): the
        operator's certificate, else the hub CA's server certificate for its names."""
        config = self.config
        if not config.http_uses_tls:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            if config.http_tls_cert is not None and config.http_tls_key is not None:
                context.load_cert_chain(config.http_tls_cert, config.http_tls_key)
            else:
                assert self.ca is not None  # config.validate: TLS without a CA needs a cert
                self.ca.server_certificate(config.http_listen.host, config.link_names)
                cert, key = self.ca.server_certificate_files()
                context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise HubStartError(
                f"cannot load the REST API's TLS certificate: {exc}; check --http-tls-cert "
                "and --http-tls-key (PEM files, the key unencrypted)"
            ) from exc
        return context

    async def stop(self) -> None:
        log.info("hub.stopping", streams=len(self.registry))
        # 1. stop accepting
        if self.link is not None:
            self.link.accepting = False
        # 2. drain streams: sessions end cleanly, then gRPC finishes in-flight work
        self.registry.close_all("hub shutting down; reconnect later", grpc.StatusCode.UNAVAILABLE)
        if self._grpc is not None:
            await self._grpc.stop(self.config.shutdown_grace_s)
        if self.link is not None:
            await self.link.wait_closed()
        self._link_serving = False
        await self.live_relay.stop()
        self.events.close()  # live streams end now rather than at the shutdown timeout
        self.activity.close()
        self.memory.close()
        if self._runner is not None:
            await self._runner.cleanup()
        elif self._http_socket is not None:  # the start failed before serving
            self._http_socket.close()
        if self.dashboard is not None:
            await self.dashboard.stop()
        await self.template_sync.stop()
        await self.rollouts.stop()
        await self.governor.stop()
        await self.backups.stop()
        await self.reconciler.stop()
        if self.query_relay is not None:
            await self.query_relay.close()
        await self.webhooks.stop()
        await self.alerts.stop()
        if self.agent_calls is not None:
            await self.agent_calls.close()
        # 3. flush the store
        await self.db.close()
        # 4. the data directory is free
        self.lock.release()
        log.info("hub.stopped")


class HubStartError(Exception):
    """The hub cannot start; the message names the cause and the fix."""


def _bind(address: HostPort, flag: str) -> socket.socket:
    """A listening TCP socket for the HTTP API (bound here, so its port is known early)."""
    try:
        return socket.create_server((address.host, address.port), backlog=128)
    except OSError as exc:
        raise HubStartError(_bind_failure(address, flag, exc)) from None


def _check_free(address: HostPort, flag: str) -> None:
    """Refuse an address another process listens on (port 0 always has room)."""
    if address.port == 0:
        return
    _bind(address, flag).close()


def _bind_failure(address: HostPort, flag: str, exc: OSError) -> str:
    cause = exc.strerror or str(exc)
    fix = (
        "another mc-hub or another program listens there: stop it, or choose another "
        f"address with {flag}"
        if exc.errno == errno.EADDRINUSE
        else f"choose an address this host has with {flag}"
    )
    return f"cannot listen on {address} ({flag}): {cause}; {fix}"
