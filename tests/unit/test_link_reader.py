"""The link's reader acks beat batches from callbacks, with no task per batch: each
durable batch is acked once, a failed one is not (the sidecar sends it again) and the
stream reads on, a superseded write ends the session, and a sidecar that reads its acks
slowly holds the reader back rather than losing acks or queueing without bound."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import cast

import structlog

from hub.link.server import MAX_PENDING_WRITES, LinkService, SessionRegistry, SidecarSession
from hub.store.gateways import GatewayStore
from hub.store.ownership import Superseded
from protos import link_pb2 as pb
from tests.support import wait_for


class HeldReports:
    """A report sink whose beat writes finish when the test says."""

    def __init__(self) -> None:
        self.writes: dict[int, asyncio.Future[None]] = {}

    def heartbeats(self, gateway_id: str, batch: pb.HeartbeatBatch) -> asyncio.Future[None]:
        stored: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.writes[batch.batch_id] = stored
        return stored


def _reader(reports: HeldReports) -> LinkService:
    return LinkService(
        cast(GatewayStore, None),  # the reader never touches the store
        SessionRegistry(),
        reports,  # type: ignore[arg-type]  # the reader calls only heartbeats here
        auto_register=True,
    )


def _session(queue_size: int = 256) -> SidecarSession:
    session = SidecarSession(gateway_id="gw-reader", hello=pb.Hello(gateway_id="gw-reader"))
    session.outgoing = asyncio.Queue(maxsize=queue_size)
    return session


async def _batches(
    ids: list[int], more: asyncio.Event | None = None
) -> AsyncIterator[pb.SidecarMessage]:
    for batch_id in ids:
        yield pb.SidecarMessage(heartbeats=pb.HeartbeatBatch(batch_id=batch_id))
    if more is not None:
        await more.wait()  # the stream stays open until the test is done


def _acks(session: SidecarSession) -> list[int]:
    acks = []
    while not session.outgoing.empty():
        item = session.outgoing.get_nowait()
        if isinstance(item, pb.HubMessage) and item.HasField("heartbeat_ack"):
            acks.append(item.heartbeat_ack.batch_id)
    return acks


async def test_each_durable_batch_is_acked_once_and_a_failed_one_is_not() -> None:
    reports, session, more = HeldReports(), _session(), asyncio.Event()
    reader = asyncio.create_task(_reader(reports)._read(session, _batches([1, 2, 3], more)))
    try:
        await wait_for(lambda: len(reports.writes) == 3, what="three writes asked")
        with structlog.testing.capture_logs() as logs:
            reports.writes[2].set_exception(RuntimeError("disk full (test)"))
            reports.writes[3].set_result(None)
            reports.writes[1].set_result(None)
            await asyncio.sleep(0)
        assert _acks(session) == [3, 1]  # as each became durable
        failed = [e for e in logs if e["event"] == "link.report.failed"]
        assert [(e["what"], e["error"]) for e in failed] == [("heartbeats", "disk full (test)")]
        assert not reader.done() and not session.closed  # the stream reads on
    finally:
        more.set()
        await asyncio.wait_for(reader, 5)
    assert _acks(session) == []  # nothing acked twice


async def test_a_superseded_write_ends_the_session_without_an_ack() -> None:
    reports, session, more = HeldReports(), _session(), asyncio.Event()
    reader = asyncio.create_task(_reader(reports)._read(session, _batches([7], more)))
    try:
        await wait_for(lambda: 7 in reports.writes, what="the write asked")
        reports.writes[7].set_exception(Superseded("gateway gw-reader is owned by epoch 3"))
        await asyncio.sleep(0)
        assert session.superseded and session.closed
        assert _acks(session) == []
    finally:
        more.set()
        await asyncio.wait_for(reader, 5)


async def test_a_slow_reading_sidecar_holds_the_reader_back_and_loses_no_ack() -> None:
    reports, session, more = HeldReports(), _session(queue_size=1), asyncio.Event()
    total = MAX_PENDING_WRITES + 20
    reader = asyncio.create_task(
        _reader(reports)._read(session, _batches(list(range(total)), more))
    )
    try:
        # Writes finish at once, but the ack queue holds one: the reader stops reading once
        # MAX_PENDING_WRITES acks wait for room, rather than queueing the rest.
        async def finish_all() -> None:
            while True:
                for stored in reports.writes.values():
                    if not stored.done():
                        stored.set_result(None)
                await asyncio.sleep(0.01)

        finisher = asyncio.create_task(finish_all())
        await wait_for(lambda: len(reports.writes) == MAX_PENDING_WRITES + 1, what="reader held")
        await asyncio.sleep(0.2)
        assert len(reports.writes) == MAX_PENDING_WRITES + 1  # held, not reading on
        acks: list[int] = []

        async def drain() -> None:
            while len(acks) < total:
                item = await session.outgoing.get()
                assert isinstance(item, pb.HubMessage)
                acks.append(item.heartbeat_ack.batch_id)

        await asyncio.wait_for(drain(), 10)
        assert sorted(acks) == list(range(total))  # every batch acked once
        finisher.cancel()
    finally:
        more.set()
        await asyncio.wait_for(reader, 5)
