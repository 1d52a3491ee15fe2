"""Link: messages/s over one stream and over many, the hub's link server against bare grpc.aio.

Server (core 0): the hub's `LinkService` or the bare echo (bench/linkproc.py). Clients
(core 1): real grpc.aio channels speaking the Link contract, one channel per stream as
sidecars do: Hello, Welcome, then HeartbeatBatch messages (10 beats) written pipelined,
each answered by a HeartbeatAck. A figure is acks received per second.
"""

from __future__ import annotations

import asyncio
import multiprocessing.connection as mpc
import time

import grpc

from bench.harness import (
    LOAD_CORE,
    Figure,
    Section,
    Sizes,
    child,
    free_port,
    pin_to,
    quiet_logs,
    raise_fd_limit,
    report_errors,
)
from bench.linkproc import start_link_server
from bench.sidecars import hello_for
from protos import link_pb2 as pb
from protos import link_pb2_grpc as pb_grpc
from protos.contract import channel_options, timestamp

BEATS_PER_MESSAGE = 10


def run(sizes: Sizes) -> Section:
    section = Section("link", "Link")
    shapes = (
        ("1 stream", 1, sizes.link_messages_one),
        (f"{sizes.link_streams:,} streams", sizes.link_streams, sizes.link_messages_per_stream),
    )
    measured: dict[str, dict[str, list[float]]] = {}
    for kind in ("hub", "bare"):
        port = free_port()
        server = start_link_server(kind, port)
        try:
            for label, streams, messages in shapes:
                with child(
                    _client_main, port, streams, name="bench-link-client", ready_timeout_s=120.0
                ) as client:
                    rates = measured.setdefault(label, {}).setdefault(kind, [])
                    for _ in range(sizes.runs):
                        rates.append(client.ask(("run", messages), 300.0)["rate"])
        finally:
            server.stop()
    for label, _, _ in shapes:
        section.figures.append(
            Figure(
                f"hub LinkService, {label}",
                "msg/s",
                measured[label]["hub"],
                "bare grpc.aio bidi",
                measured[label]["bare"],
            )
        )
    section.notes.append(
        f"each message a HeartbeatBatch of {BEATS_PER_MESSAGE} beats answered by a HeartbeatAck; "
        "the hub's reports go to a sink that keeps nothing (ingest is measured apart)"
    )
    return section


def _client_main(conn: mpc.Connection, port: int, streams: int) -> None:
    report_errors(conn, lambda: asyncio.run(_clients(conn, port, streams)))


class _Stream:
    def __init__(self, port: int, gateway_id: str) -> None:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=channel_options())
        self.call = pb_grpc.LinkStub(self.channel).Connect()
        self.gateway_id = gateway_id

    async def open(self) -> None:
        await self.call.write(pb.SidecarMessage(hello=await hello_for(self.gateway_id)))
        first = await self.call.read()
        assert first is not grpc.aio.EOF and first.WhichOneof("body") == "welcome", first

    async def exchange(self, messages: int, batch: pb.SidecarMessage) -> int:
        async def write() -> None:
            for _ in range(messages):
                await self.call.write(batch)

        writer = asyncio.create_task(write())
        acked = 0
        try:
            while acked < messages:
                reply = await self.call.read()
                if reply is grpc.aio.EOF:
                    raise ConnectionError("the server ended the stream")
                if reply.WhichOneof("body") == "heartbeat_ack":
                    acked += 1
        finally:
            await writer
        return acked

    async def close(self) -> None:
        self.call.cancel()
        await self.channel.close()


async def _clients(conn: mpc.Connection, port: int, count: int) -> None:
    pin_to(LOAD_CORE)
    raise_fd_limit()
    quiet_logs()
    streams = [_Stream(port, f"bench-link-{i:05d}") for i in range(count)]
    try:
        for start in range(0, count, 200):
            await asyncio.gather(*(s.open() for s in streams[start : start + 200]))
        batch = pb.SidecarMessage(heartbeats=pb.HeartbeatBatch(batch_id=1))
        stamp = timestamp()
        for i in range(BEATS_PER_MESSAGE):
            batch.heartbeats.beats.add(agent_id=f"mc-agent-{i}", observed_at=stamp)
        conn.send({"ready": True})
        while (request := await asyncio.to_thread(conn.recv)) is not None:
            _, messages = request
            started = time.perf_counter()
            acked = await asyncio.gather(*(s.exchange(messages, batch) for s in streams))
            conn.send({"rate": sum(acked) / (time.perf_counter() - started)})
    finally:
        await asyncio.gather(*(s.close() for s in streams), return_exceptions=True)
