"""Link servers in their own process: the hub's real `LinkService`, or the bare baseline.

"hub": `hub.link_server.LinkService` with the real `Store` on a SQLite file (Hello,
Welcome, sessions, the outbox pump), whose reports go to a sink that keeps nothing, so
the figure is the link's own cost; ingest is measured on its own (bench/ingest.py).
"bare": a grpc.aio bidi handler speaking the same messages: Welcome for the Hello, a
HeartbeatAck for each HeartbeatBatch, nothing else.
"""

from __future__ import annotations

import asyncio
import multiprocessing.connection as mpc
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from bench.harness import SERVER_CORE, Child, pin_to, quiet_logs, report_errors
from hub.link.server import LinkService, SessionRegistry
from hub.store.database import Database
from hub.store.gateways import GatewayStore
from protos import link_pb2 as pb
from protos import link_pb2_grpc as pb_grpc
from protos.contract import HEARTBEAT_FLUSH_MS, LINK_PROTOCOL, server_options

KINDS = ("hub", "bare")


def start_link_server(kind: str, port: int) -> Child:
    server = Child(_main, kind, port, name=f"bench-link-{kind}")
    try:
        server.recv(60.0)
    except BaseException:
        server.stop()
        raise
    return server


class DiscardReports:
    """A ReportSink that keeps nothing."""

    async def command_results(self, gateway_id: str, results: list[pb.CommandResult]) -> None:
        return None

    def heartbeats(self, gateway_id: str, batch: pb.HeartbeatBatch) -> asyncio.Future[None]:
        stored: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        stored.set_result(None)
        return stored

    async def run_observed(self, gateway_id: str, run: pb.RunObserved) -> None:
        return None

    async def gateway_state(self, gateway_id: str, state: pb.GatewayState) -> None:
        return None


class BareLink(pb_grpc.LinkServicer):
    async def Connect(
        self,
        request_iterator: AsyncIterator[pb.SidecarMessage],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.HubMessage]:
        async for message in request_iterator:
            kind = message.WhichOneof("body")
            if kind == "hello":
                yield pb.HubMessage(
                    welcome=pb.Welcome(
                        link_protocol=LINK_PROTOCOL, heartbeat_flush_ms=HEARTBEAT_FLUSH_MS
                    )
                )
            elif kind == "heartbeats":
                yield pb.HubMessage(
                    heartbeat_ack=pb.HeartbeatAck(batch_id=message.heartbeats.batch_id)
                )


def _main(conn: mpc.Connection, kind: str, port: int) -> None:
    report_errors(conn, lambda: asyncio.run(_serve(conn, kind, port)))


async def _serve(conn: mpc.Connection, kind: str, port: int) -> None:
    pin_to(SERVER_CORE)
    quiet_logs()
    server = grpc.aio.server(options=server_options())
    with tempfile.TemporaryDirectory(prefix="bench-link-") as tmp:
        db: Database | None = None
        if kind == "hub":
            db = Database(Path(tmp) / "hub.sqlite3")
            db.open()
            service: pb_grpc.LinkServicer = LinkService(
                GatewayStore(db), SessionRegistry(), DiscardReports(), auto_register=True
            )
        else:
            service = BareLink()
        pb_grpc.add_LinkServicer_to_server(service, server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        conn.send({"ready": True})
        loop = asyncio.get_running_loop()
        stopped = asyncio.Event()
        loop.add_reader(conn.fileno(), stopped.set)
        try:
            await stopped.wait()
        finally:
            loop.remove_reader(conn.fileno())
            if isinstance(service, LinkService):
                service.accepting = False
                service.registry.close_all("benchmark over")
            await server.stop(2.0)
            if db is not None:
                await db.close()
