"""The hub end of Link.Connect: one SidecarSession per sidecar stream.

A session reads the sidecar's messages in one task and pumps the gateway's
outbox into the stream from another; its lifetime is the stream's. The
registry knows which session currently speaks for each gateway, so a sidecar
that reconnects over a half-dead connection replaces its old session cleanly.

Each session carries the ownership epoch its Hello took (hub/store/ownership.py): a
newer one, taken by a stream on this hub or another, supersedes it. The registry
hears of that (OWNERSHIP notices, from every hub) and closes it; and since a notice
can be lost, the outbox pump and the ack writes check the epoch again, so a
superseded session delivers nothing and acknowledges nothing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import grpc

from hub.link.bounds import bound
from hub.link.peer import PeerRejectedError, authorize_peer, peer_identity
from hub.pki.ca import CAError
from hub.store.errors import UnknownGateway
from hub.store.gateways import GatewayStore, Welcome
from hub.store.ownership import OwnerChange, Superseded
from missioncontrol.log import get_logger
from missioncontrol.pki import certificate_identity, validate_gateway_id
from missioncontrol.tasks import start_long_lived
from missioncontrol.version import VERSION, VersionSkewError, check_sidecar_version
from protos import link_pb2 as pb
from protos import link_pb2_grpc as pb_grpc
from protos.contract import (
    HEARTBEAT_FLUSH_MS,
    HELLO_TIMEOUT_S,
    LINK_PROTOCOL,
    SUPPORTED_LINK_PROTOCOLS,
    timestamp,
)

log = get_logger("hub.link")

OUTBOX_PAGE = 100
MAX_PENDING_WRITES = 64


class HelloRejected(Exception):
    """A Hello the hub refuses; `code` is the gRPC status the stream ends with."""

    def __init__(self, code: grpc.StatusCode, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def check_hello(hello: pb.Hello) -> None:
    """Decide whether a Hello may open a session (pure; raises HelloRejected)."""
    if hello.link_protocol not in SUPPORTED_LINK_PROTOCOLS:
        raise HelloRejected(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"link protocol {hello.link_protocol} is not supported by this hub (it speaks "
            f"{sorted(SUPPORTED_LINK_PROTOCOLS)}); upgrade the hub first, then the sidecars",
        )
    try:
        check_sidecar_version(hello.sidecar_version)
    except VersionSkewError as exc:
        raise HelloRejected(grpc.StatusCode.FAILED_PRECONDITION, str(exc)) from None
    try:
        validate_gateway_id(hello.gateway_id)
    except ValueError as exc:
        raise HelloRejected(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None


class ReportSink(Protocol):
    """Where a session hands what sidecars report (the lifecycle service in production)."""

    async def command_results(
        self, gateway_id: str, results: list[pb.CommandResult], *, epoch: int | None = None
    ) -> None:
        """`epoch`: the session's; refused (Superseded) once it no longer owns the gateway."""
        ...

    def heartbeats(self, gateway_id: str, batch: pb.HeartbeatBatch) -> asyncio.Future[None]:
        """Done once the batch is durable (a future: the reader acks it in a callback)."""
        ...

    async def run_observed(
        self, gateway_id: str, run: pb.RunObserved, *, epoch: int | None = None
    ) -> None: ...

    async def gateway_state(self, gateway_id: str, state: pb.GatewayState) -> None: ...


_END = object()


@dataclass
class SidecarSession:
    gateway_id: str
    hello: pb.Hello
    session_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    opened_at: float = field(default_factory=time.time)
    last_message_at: float = field(default_factory=time.time)
    outbox_changed: asyncio.Event = field(default_factory=asyncio.Event)
    outgoing: asyncio.Queue[object] = field(default_factory=lambda: asyncio.Queue(maxsize=256))
    end_reason: str = "stream closed"
    end_code: grpc.StatusCode = grpc.StatusCode.OK
    certificate_expires_at: float | None = None  # mTLS: the stream ends with its certificate
    epoch: int = 0  # the gateway's ownership epoch this session's Hello took
    superseded: bool = False  # a newer epoch owns the gateway: this session may not write
    closed: bool = False

    def supersede(self, detail: str) -> None:
        """A newer session owns the gateway: end this one, writing nothing more for it."""
        if not self.superseded:
            log.info(
                "link.session.superseded",
                gateway_id=self.gateway_id,
                session=self.session_id,
                epoch=self.epoch,
                detail=detail,
            )
        self.superseded = True
        # UNAVAILABLE: were the sidecar still reading this stream, it would connect again.
        self.close(f"superseded: {detail}", grpc.StatusCode.UNAVAILABLE)

    def close(self, reason: str, code: grpc.StatusCode = grpc.StatusCode.OK) -> None:
        """End the stream; a non-OK `code` tells the sidecar why. The first reason wins."""
        if self.closed:
            return
        self.closed = True
        self.end_reason = reason
        self.end_code = code
        try:
            self.outgoing.put_nowait(_END)
        except asyncio.QueueFull:
            # Drain one message to make room: the stream is ending anyway.
            self.outgoing.get_nowait()
            self.outgoing.put_nowait(_END)


class SessionRegistry:
    """Which session currently speaks for each gateway."""

    def __init__(self, *, shared: bool = False) -> None:
        """`shared`: other hubs on the same database hold streams too."""
        self._sessions: dict[str, SidecarSession] = {}
        self.shared = shared

    def attach(self, session: SidecarSession) -> None:
        previous = self._sessions.get(session.gateway_id)
        self._sessions[session.gateway_id] = session
        if previous is not None:
            log.info(
                "link.session.replaced",
                gateway_id=session.gateway_id,
                old=previous.session_id,
                new=session.session_id,
            )
            previous.close("replaced by a newer stream from the same gateway")

    def detach(self, session: SidecarSession) -> bool:
        """Forget `session`; True if it was the current one for its gateway."""
        if self._sessions.get(session.gateway_id) is session:
            del self._sessions[session.gateway_id]
            return True
        return False

    def get(self, gateway_id: str) -> SidecarSession | None:
        return self._sessions.get(gateway_id)

    def connected(self, gateway_id: str, recorded: bool) -> bool:
        """Whether the gateway's sidecar is connected: to this hub, or (`recorded` by the
        store, on a shared database) to another."""
        return gateway_id in self._sessions or (self.shared and recorded)

    def owner_changed(self, payload: str) -> None:
        """An OWNERSHIP notice (from any hub): a session of an older epoch ends."""
        change = OwnerChange.parse(payload)
        session = self._sessions.get(change.gateway_id)
        if session is not None and session.epoch < change.epoch:
            session.supersede(f"hub {change.hub_id} owns the gateway at epoch {change.epoch}")

    def notify_outbox(self, gateway_id: str) -> None:
        session = self._sessions.get(gateway_id)
        if session is not None:
            session.outbox_changed.set()

    def __len__(self) -> int:
        return len(self._sessions)

    def close_all(self, reason: str, code: grpc.StatusCode = grpc.StatusCode.OK) -> None:
        for session in list(self._sessions.values()):
            session.close(reason, code)


class AgentCallHandler(Protocol):
    async def handle(self, gateway_id: str, call: pb.AgentCall) -> pb.AgentCallResult: ...


class QueryAnswers(Protocol):
    def answer(self, gateway_id: str, result: pb.GatewayQueryResult) -> None: ...

    def link_closed(self, gateway_id: str) -> None: ...


class UsageSink(Protocol):
    async def record(self, gateway_id: str, report: pb.UsageReport) -> object: ...


class CertificateRenewer(Protocol):
    async def renew(self, gateway_id: str, csr_pem: bytes) -> bytes: ...


class LinkService(pb_grpc.LinkServicer):
    def __init__(
        self,
        store: GatewayStore,
        registry: SessionRegistry,
        reports: ReportSink,
        *,
        auto_register: bool,
        is_revoked: Callable[[int], bool] | None = None,
        renewer: CertificateRenewer | None = None,
        on_link: Callable[[str, bool], Awaitable[None]] | None = None,
        agent_calls: AgentCallHandler | None = None,
        queries: QueryAnswers | None = None,
        on_sidecar_ahead: Callable[[str, pb.Hello], Awaitable[object]] | None = None,
        record_hello: Callable[[pb.Hello], Awaitable[Welcome]] | None = None,
        usage: UsageSink | None = None,
    ) -> None:
        """`is_revoked` set: mutual TLS, every stream needs a valid client certificate
        naming the gateway its Hello names. `on_sidecar_ahead(gateway_id, hello)`: the
        sidecar applied commands this hub never issued (a restored backup).
        `record_hello` records an accepted Hello (the hub's reconciler, so the commands
        it confirms move their agents on; the store's plain record by default)."""
        self.store = store
        self.record_hello = record_hello or (
            lambda hello: store.record_hello(hello, auto_register=auto_register)
        )
        self.registry = registry
        self.reports = reports
        self.auto_register = auto_register
        self.is_revoked = is_revoked
        self.renewer = renewer
        self.on_link = on_link  # the gateway's stream opened (True) or closed (False)
        self.agent_calls = agent_calls
        self.queries = queries
        self.usage = usage  # token usage reports (hub/usage.py); None: ignored
        self.on_sidecar_ahead = on_sidecar_ahead
        self.accepting = True
        self._teardowns: set[asyncio.Task[None]] = set()

    async def Connect(
        self,
        request_iterator: AsyncIterator[pb.SidecarMessage],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.HubMessage]:
        if not self.accepting:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "hub is shutting down; retry later")
        messages = aiter(request_iterator)
        try:
            async with asyncio.timeout(HELLO_TIMEOUT_S):
                first = await anext(messages)
        except TimeoutError:
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"no Hello within {HELLO_TIMEOUT_S:.0f} s"
            )
        except StopAsyncIteration:
            return
        if first.WhichOneof("body") != "hello":
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "the first message on Link.Connect must be a Hello",
            )
        hello = bound(first.hello)
        not_after: dt.datetime | None = None
        try:
            check_hello(hello)
            if self.is_revoked is not None:
                identity = authorize_peer(
                    peer_identity(context), hello.gateway_id, is_revoked=self.is_revoked
                )
                not_after = identity.not_after
            welcome = await self.record_hello(hello)
        except HelloRejected as exc:
            log.warning("link.hello.rejected", gateway_id=hello.gateway_id, error=exc.detail)
            await context.abort(exc.code, exc.detail)
        except PeerRejectedError as exc:
            log.warning(
                "link.hello.rejected", gateway_id=hello.gateway_id, error=str(exc), code=exc.code
            )
            await context.abort(exc.grpc_status, str(exc))
        except UnknownGateway as exc:
            log.warning("link.hello.rejected", gateway_id=hello.gateway_id, error=str(exc))
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{exc}; it was deleted, or enroll this sidecar first",
            )

        session = SidecarSession(gateway_id=hello.gateway_id, hello=hello, epoch=welcome.epoch)
        self.registry.attach(session)
        tasks: list[asyncio.Task[None]] = []
        # From here on the session is registered: whatever ends this handler (even a
        # cancellation while awaiting below) must run the teardown in `finally`.
        try:
            # The lifecycle's and the dashboard's part of a new link (and any re-render)
            # runs while the Welcome goes out: a Hello answered only after them waits
            # for several group commits, and under a reconnect storm past the sidecar's
            # Welcome timeout, so it reconnects and the hub does it all again. Nothing
            # the sidecar sends is read, and no command goes out, before they are done.
            linking = None
            if self.on_link is not None:
                linking = asyncio.ensure_future(self.on_link(session.gateway_id, True))
                tasks.append(linking)  # ended with the stream, as the other tasks are
            log.info(
                "link.stream.opened",
                gateway_id=session.gateway_id,
                session=session.session_id,
                sidecar_version=hello.sidecar_version,
                peer=context.peer(),
                last_applied_sequence=hello.last_applied_sequence,
            )
            yield pb.HubMessage(
                welcome=pb.Welcome(
                    hub_version=VERSION,
                    link_protocol=LINK_PROTOCOL,
                    last_sequence=welcome.last_sequence,
                    server_time=timestamp(),
                    heartbeat_flush_ms=HEARTBEAT_FLUSH_MS,
                    gateway_name=welcome.gateway_name,
                    workspace_root=welcome.workspace_root,
                )
            )
            if linking is not None:
                await linking
            cursor = hello.last_applied_sequence
            if cursor > welcome.last_sequence:
                # The hub lost commands (restored backup): the sidecar restarts from ours.
                log.warning(
                    "link.sequence.reset",
                    gateway_id=session.gateway_id,
                    sidecar=cursor,
                    hub=welcome.last_sequence,
                )
                cursor = welcome.last_sequence
                if self.on_sidecar_ahead is not None:
                    try:
                        await self.on_sidecar_ahead(session.gateway_id, hello)
                    except Exception as exc:  # the stream still serves; the next Hello retries
                        log.error(
                            "link.sidecar_ahead.failed",
                            gateway_id=session.gateway_id,
                            error=str(exc),
                        )

            # Either ending early ends the stream: a sidecar that still looks connected but
            # gets no commands (or whose reports are not read) would wait forever.
            def ended(what: str) -> Callable[[BaseException | None], None]:
                return lambda error: session.close(
                    f"hub {what} failed: {error!r}; the sidecar reconnects and resumes",
                    grpc.StatusCode.UNAVAILABLE,
                )

            tasks += [
                start_long_lived(
                    self._read(session, messages),
                    name="link-read",
                    log=log,
                    on_end=ended("reader"),
                    may_return=True,  # at the end of the sidecar's stream
                ),
                start_long_lived(
                    self._pump_outbox(session, cursor),
                    name="link-outbox",
                    log=log,
                    on_end=ended("outbox pump"),
                    may_return=True,  # superseded: the session is closed already
                ),
            ]
            if not_after is not None:
                session.certificate_expires_at = not_after.timestamp()
                tasks.append(asyncio.create_task(_close_at_expiry(session)))
            while True:
                item = await session.outgoing.get()
                if item is _END:
                    break
                assert isinstance(item, pb.HubMessage)
                yield item
            if session.end_code != grpc.StatusCode.OK:
                await context.abort(session.end_code, session.end_reason)
        finally:
            # grpc may cancel this handler while it cleans up after an abort: the teardown
            # runs as its own shielded task so it always completes.
            teardown = asyncio.ensure_future(self._end_session(session, tasks))
            self._teardowns.add(teardown)
            teardown.add_done_callback(self._teardowns.discard)
            await _shielded(teardown)

    async def wait_closed(self) -> None:
        """Wait for every ended stream's bookkeeping (before the store closes)."""
        if self._teardowns:
            await asyncio.gather(*self._teardowns, return_exceptions=True)

    async def _end_session(self, session: SidecarSession, tasks: list[asyncio.Task[None]]) -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Record the disconnect before forgetting the session, so a reader never sees
        # "not connected" without "disconnected_at".
        current = self.registry.get(session.gateway_id) is session
        if current:
            # A superseded session's gateway is another session's now: the disconnect is
            # not recorded, and its agents hear of none (their owner still has a stream).
            owned = not session.superseded and await self.store.record_disconnect(
                session.gateway_id,
                session.end_reason,
                connected_since=session.opened_at,
                epoch=session.epoch,
            )
            if owned and self.on_link is not None:
                await self.on_link(session.gateway_id, False)
            if self.queries is not None:
                self.queries.link_closed(session.gateway_id)
        self.registry.detach(session)
        log.info(
            "link.stream.closed",
            gateway_id=session.gateway_id,
            session=session.session_id,
            reason=session.end_reason,
            current=current,
        )

    async def _pump_outbox(self, session: SidecarSession, cursor: int) -> None:
        while True:
            session.outbox_changed.clear()
            try:
                # Fenced: a page is sent only if the session still owns the gateway once
                # it is read, so a superseded session (its notice lost) delivers nothing.
                page = await self.store.commands_after(
                    session.gateway_id, cursor, OUTBOX_PAGE, epoch=session.epoch
                )
            except Superseded as exc:
                session.supersede(str(exc))
                return
            for queued in page:
                await session.outgoing.put(
                    pb.HubMessage(command=pb.Command.FromString(queued.payload))
                )
                cursor = queued.sequence
            if len(page) < OUTBOX_PAGE:
                await session.outbox_changed.wait()

    async def _read(
        self, session: SidecarSession, messages: AsyncIterator[pb.SidecarMessage]
    ) -> None:
        writes = asyncio.Semaphore(MAX_PENDING_WRITES)
        pending: set[asyncio.Future[None]] = set()  # writes in flight, and their tasks

        def spawn(work: Awaitable[None], what: str) -> None:
            async def run() -> None:
                try:
                    await work
                except Superseded as exc:  # another session owns the gateway now
                    session.supersede(str(exc))
                except Exception as exc:  # a bad report must not end the stream
                    log.error(
                        "link.report.failed",
                        gateway_id=session.gateway_id,
                        what=what,
                        error=str(exc),
                    )
                finally:
                    writes.release()

            task = asyncio.create_task(run())
            pending.add(task)
            task.add_done_callback(pending.discard)

        def beats_stored(batch: pb.HeartbeatBatch, stored: asyncio.Future[None]) -> None:
            """Ack a durable beat batch, or log why not (the sidecar sends it again)."""
            pending.discard(stored)
            error = None if stored.cancelled() else stored.exception()
            if isinstance(error, Superseded):
                session.supersede(str(error))
            elif error is not None:
                log.error(
                    "link.report.failed",
                    gateway_id=session.gateway_id,
                    what="heartbeats",
                    error=str(error),
                )
            elif not stored.cancelled() and not session.closed:
                ack = pb.HubMessage(heartbeat_ack=pb.HeartbeatAck(batch_id=batch.batch_id))
                try:
                    session.outgoing.put_nowait(ack)
                except asyncio.QueueFull:  # a slow reader: hold this write until there is room
                    spawn(session.outgoing.put(ack), "heartbeats")
                    return  # that write releases the slot
            writes.release()

        try:
            async for message in messages:
                session.last_message_at = time.time()
                kind = message.WhichOneof("body")
                try:
                    if kind != "heartbeats":  # the hub keeps no text of a beat; the rest it keeps
                        bound(message)
                    if kind == "gateway_query_result" and self.queries is not None:
                        self.queries.answer(session.gateway_id, message.gateway_query_result)
                        continue
                except Exception as exc:  # one bad message must not end the stream
                    log.error(
                        "link.report.failed",
                        gateway_id=session.gateway_id,
                        what=kind,
                        error=repr(exc),
                    )
                    continue
                if session.superseded:  # its reports are the newer session's to make
                    continue
                await writes.acquire()
                if kind == "command_result":
                    spawn(
                        self.reports.command_results(
                            session.gateway_id, [message.command_result], epoch=session.epoch
                        ),
                        kind,
                    )
                elif kind == "heartbeats":
                    # The bulk of a fleet's traffic: acked from a callback, no task of its own.
                    stored = self.reports.heartbeats(session.gateway_id, message.heartbeats)
                    pending.add(stored)
                    stored.add_done_callback(functools.partial(beats_stored, message.heartbeats))
                elif kind == "run_observed":
                    spawn(
                        self.reports.run_observed(
                            session.gateway_id, message.run_observed, epoch=session.epoch
                        ),
                        kind,
                    )
                elif kind == "renew":
                    spawn(self._renew(session, message.renew), kind)
                elif kind == "usage" and self.usage is not None:
                    spawn(self._usage(session, message.usage), kind)
                elif kind == "agent_call" and self.agent_calls is not None:
                    spawn(self._agent_call(session, message.agent_call), kind)
                elif kind == "gateway_state":
                    spawn(
                        self.reports.gateway_state(session.gateway_id, message.gateway_state), kind
                    )
                else:
                    writes.release()
                    log.warning("link.message.ignored", gateway_id=session.gateway_id, kind=kind)
            reason = "sidecar closed the stream"
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reason = f"stream failed: {exc}"
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        session.close(reason)

    async def _agent_call(self, session: SidecarSession, call: pb.AgentCall) -> None:
        assert self.agent_calls is not None
        result = await self.agent_calls.handle(session.gateway_id, call)
        await session.outgoing.put(pb.HubMessage(agent_call_result=result))

    async def _usage(self, session: SidecarSession, report: pb.UsageReport) -> None:
        assert self.usage is not None
        await self.usage.record(session.gateway_id, report)

    async def _renew(self, session: SidecarSession, request: pb.RenewRequest) -> None:
        response = pb.RenewResponse()
        if self.renewer is None:
            response.error = "certificate renewal needs the hub's mutual-TLS mode"
        else:
            try:
                response.certificate_pem = await self.renewer.renew(
                    session.gateway_id, request.csr_pem
                )
                session.certificate_expires_at = certificate_identity(
                    response.certificate_pem
                ).not_after.timestamp()
            except (ValueError, CAError) as exc:
                response.error = f"renewal refused: {exc}"
        await session.outgoing.put(pb.HubMessage(renew=response))


async def _close_at_expiry(session: SidecarSession) -> None:
    """A stream may not outlive its certificate (a renewal on the stream extends it)."""
    while session.certificate_expires_at is not None:
        remaining = session.certificate_expires_at - time.time()
        if remaining <= 0:
            session.close(
                "client certificate expired; the sidecar renews it before expiry, "
                "so check that it can reach the hub, or re-enroll",
                grpc.StatusCode.UNAUTHENTICATED,
            )
            return
        await asyncio.sleep(remaining)


async def _shielded(work: Awaitable[None]) -> None:
    """Finish a bookkeeping write even if the stream's task is being cancelled."""
    task = asyncio.ensure_future(work)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise
