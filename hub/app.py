"""Composition root of mc-hub: builds the parts, starts them, stops them in order.

Start: database (migrate) -> link server -> HTTP API.
Stop, in this order so nothing is lost:
  1. stop accepting: the link refuses new streams, the HTTP listener closes;
  2. drain streams: every session ends cleanly, in-flight reports finish;
  3. flush the store: queued writes commit, then the database closes.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from aiohttp import web

from hub.config import HubConfig
from hub.database import Database
from hub.http_api import HttpDeps, build_app
from hub.link_server import LinkService, SessionRegistry
from hub.reports import StoreReports
from hub.store import Store
from missioncontrol.log import get_logger
from missioncontrol.netaddr import HostPort
from protos import link_pb2_grpc as pb_grpc
from protos.contract import server_options

log = get_logger("hub.app")


@dataclass(frozen=True)
class BoundAddresses:
    http: HostPort
    link: HostPort


class Hub:
    def __init__(self, config: HubConfig) -> None:
        self.config = config
        self.db = Database(config.database_path, config.commit_interval_s)
        self.store = Store(self.db)
        self.registry = SessionRegistry()
        self.store.on_command_queued(self.registry.notify_outbox)
        self.link = LinkService(
            self.store,
            self.registry,
            StoreReports(self.store),
            auto_register=config.insecure_dev,
        )
        self._grpc: grpc.aio.Server | None = None
        self._runner: web.AppRunner | None = None
        self._link_serving = False
        self.addresses: BoundAddresses | None = None

    async def start(self) -> BoundAddresses:
        self.db.open()
        await self.store.mark_all_disconnected()

        self._grpc = grpc.aio.server(options=server_options())
        pb_grpc.add_LinkServicer_to_server(self.link, self._grpc)
        link_port = self._grpc.add_insecure_port(str(self.config.link_listen))
        await self._grpc.start()
        self._link_serving = True

        deps = HttpDeps(
            store=self.store,
            db=self.db,
            registry=self.registry,
            admin_token=self.config.admin_token,
            link_serving=lambda: self._link_serving,
        )
        self._runner = web.AppRunner(
            build_app(deps), access_log=None, shutdown_timeout=self.config.shutdown_grace_s
        )
        await self._runner.setup()
        http = self.config.http_listen
        await web.TCPSite(self._runner, http.host, http.port).start()
        http_port = self._runner.addresses[0][1]
        self.addresses = BoundAddresses(
            http=HostPort(http.host, http_port),
            link=HostPort(self.config.link_listen.host, link_port),
        )
        log.info(
            "hub.started",
            http=str(self.addresses.http),
            link=str(self.addresses.link),
            insecure_dev=self.config.insecure_dev,
            database=str(self.config.database_path),
        )
        return self.addresses

    async def stop(self) -> None:
        log.info("hub.stopping", streams=len(self.registry))
        # 1. stop accepting
        self.link.accepting = False
        # 2. drain streams: sessions end cleanly, then gRPC finishes in-flight work
        self.registry.close_all("hub shutting down")
        if self._grpc is not None:
            await self._grpc.stop(self.config.shutdown_grace_s)
        self._link_serving = False
        if self._runner is not None:
            await self._runner.cleanup()
        # 3. flush the store
        await self.db.close()
        log.info("hub.stopped")
