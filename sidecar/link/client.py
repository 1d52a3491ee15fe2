"""The sidecar end of Link.Connect: one outbound stream to the hub, kept alive.

The client dials out (no inbound port on the gateway host), says Hello with what
it has applied, hands incoming commands to the CommandQueue, and sends reports.
Reports that could not be sent survive a reconnect in memory and go out after
the next Welcome. gRPC keepalive notices a silent hub within ~10 s.

The stream's reader and writer are one unit: if either ends, the stream ends and is
dialled again, so the link never shows connected while nothing flows. A hub message
whose handler fails is logged and skipped; the messages after it are still handled.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import grpc

from missioncontrol.log import get_logger
from protos import link_pb2 as pb
from protos import link_pb2_grpc as pb_grpc
from protos.contract import channel_options
from sidecar.commands import CommandQueue
from sidecar.link.backoff import Backoff

log = get_logger("sidecar.link")

WELCOME_TIMEOUT_S = 15.0
MAX_UNSENT_REPORTS = 10_000
# Refusals that no retry can fix until an operator acts; logged as such.
REFUSALS = {
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNAUTHENTICATED,
}


@dataclass(frozen=True)
class LinkStatus:
    connected: bool
    since: float
    last_error: str = ""


class LinkClient:
    def __init__(
        self,
        target: str | Sequence[str],
        hello: Callable[[], Awaitable[pb.Hello]],
        commands: CommandQueue,
        *,
        credentials: Callable[[], grpc.ChannelCredentials] | None = None,
        backoff: Backoff | None = None,
        on_welcome: Callable[[pb.Welcome], None] = lambda welcome: None,
        on_heartbeat_ack: Callable[[int], None] = lambda batch_id: None,
        on_renew: Callable[[pb.RenewResponse], None] = lambda response: None,
        on_agent_call_result: Callable[[pb.AgentCallResult], None] = lambda result: None,
        on_gateway_query: Callable[[pb.GatewayQuery], None] = lambda query: None,
    ) -> None:
        # Several addresses: hubs sharing one database. The link stays with the one that
        # answers and moves to the next after each failure (the hubs hand the gateway over).
        self.targets = [target] if isinstance(target, str) else list(target)
        if not self.targets:
            raise ValueError("the link needs at least one hub address")
        self.target = self.targets[0]
        self.hello = hello
        self.commands = commands
        self.credentials = credentials
        self.backoff = backoff or Backoff()
        self.on_welcome = on_welcome
        self.on_heartbeat_ack = on_heartbeat_ack
        self.on_renew = on_renew
        self.on_agent_call_result = on_agent_call_result
        self.on_gateway_query = on_gateway_query
        self.status = LinkStatus(connected=False, since=time.time())
        self.streams_opened = 0
        self._unsent: collections.deque[pb.SidecarMessage] = collections.deque(
            maxlen=MAX_UNSENT_REPORTS
        )
        self._wakeup = asyncio.Event()
        self._status_listeners: list[Callable[[LinkStatus], None]] = []

    def on_status(self, listener: Callable[[LinkStatus], None]) -> None:
        self._status_listeners.append(listener)

    def send(self, message: pb.SidecarMessage) -> None:
        """Queue a report; it goes out now if connected, else after the next Welcome."""
        self._unsent.append(message)
        self._wakeup.set()

    def _set_status(self, connected: bool, error: str = "") -> None:
        if connected != self.status.connected or error != self.status.last_error:
            self.status = LinkStatus(connected, time.time(), error)
            for listener in self._status_listeners:
                try:
                    listener(self.status)
                except Exception as exc:  # one listener must not stop the others, or the link
                    log.exception("link.status_listener.failed", error=repr(exc))

    async def run(self) -> None:
        """Connect, serve the stream, reconnect with backoff; forever (cancel to stop)."""
        while True:
            delay = self.backoff.next_delay()
            log.debug("link.reconnect.wait", delay_s=round(delay, 2))
            await asyncio.sleep(delay)
            try:
                await self._serve_once()
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                detail = f"{exc.code().name}: {exc.details()}"
                if exc.code() in REFUSALS:
                    log.error("link.refused", hub=self.target, error=detail)
                else:
                    log.warning("link.disconnected", hub=self.target, error=detail)
                self._set_status(False, detail)
            except Exception as exc:
                log.warning("link.disconnected", hub=self.target, error=repr(exc))
                self._set_status(False, repr(exc))
            self._next_target()

    def _next_target(self) -> None:
        if len(self.targets) > 1:
            self.target = self.targets[(self.targets.index(self.target) + 1) % len(self.targets)]
            log.info("link.hub.next", hub=self.target)

    async def _serve_once(self) -> None:
        async with self._channel() as channel:
            call = pb_grpc.LinkStub(channel).Connect()
            try:
                hello = await self.hello()
                await call.write(pb.SidecarMessage(hello=hello))
                async with asyncio.timeout(WELCOME_TIMEOUT_S):
                    first = await call.read()
                if first is grpc.aio.EOF:
                    await call.wait_for_connection()
                    raise ConnectionError("hub closed the stream before Welcome")
                if first.WhichOneof("body") != "welcome":
                    raise ConnectionError(f"hub sent {first.WhichOneof('body')} before Welcome")
                self.streams_opened += 1
                self.backoff.reset()
                self.on_welcome(first.welcome)
                self._set_status(True)
                log.info(
                    "link.connected",
                    hub=self.target,
                    hub_version=first.welcome.hub_version,
                    last_applied_sequence=hello.last_applied_sequence,
                    hub_last_sequence=first.welcome.last_sequence,
                )
                self.commands.reset()
                await self._serve_stream(call)
                code = await call.code()
                if code != grpc.StatusCode.OK:
                    raise grpc.aio.AioRpcError(
                        code, call.initial_metadata, call.trailing_metadata, await call.details()
                    )
                raise ConnectionError("hub ended the stream")
            finally:
                call.cancel()

    def _channel(self) -> grpc.aio.Channel:
        if self.credentials is None:
            return grpc.aio.insecure_channel(self.target, options=channel_options())
        return grpc.aio.secure_channel(self.target, self.credentials(), options=channel_options())

    async def _serve_stream(self, call: grpc.aio.StreamStreamCall) -> None:
        """Read and write until either side ends; the first to end ends the stream."""
        reader = asyncio.create_task(self._read(call), name="sidecar-link-read")
        writer = asyncio.create_task(self._write(call), name="sidecar-link-write")
        try:
            done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, writer):
                task.cancel()
            await asyncio.gather(reader, writer, return_exceptions=True)
        if writer in done:
            error = writer.exception()
            # The writer only ends when a write fails: the stream is broken.
            raise error if error is not None else ConnectionError("link writer ended")
        error = reader.exception()
        if error is not None:
            raise error

    async def _read(self, call: grpc.aio.StreamStreamCall) -> None:
        while True:
            message = await call.read()
            if message is grpc.aio.EOF:
                return
            assert isinstance(message, pb.HubMessage)
            kind = message.WhichOneof("body")
            try:
                self._dispatch(kind, message)
            except Exception as exc:  # one message's handler must not end the stream
                log.exception("link.message.failed", kind=kind, error=repr(exc))

    def _dispatch(self, kind: str | None, message: pb.HubMessage) -> None:
        if kind == "command":
            self.commands.submit(message.command)
        elif kind == "heartbeat_ack":
            self.on_heartbeat_ack(message.heartbeat_ack.batch_id)
        elif kind == "renew":
            self.on_renew(message.renew)
        elif kind == "agent_call_result":
            self.on_agent_call_result(message.agent_call_result)
        elif kind == "gateway_query":
            self.on_gateway_query(message.gateway_query)
        else:
            log.warning("link.message.ignored", kind=kind)

    async def _write(self, call: grpc.aio.StreamStreamCall) -> None:
        while True:
            while self._unsent:
                # Peek, write, then drop: a report is only gone once gRPC took it.
                await call.write(self._unsent[0])
                self._unsent.popleft()
            self._wakeup.clear()
            if not self._unsent:
                await self._wakeup.wait()
