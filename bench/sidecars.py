"""Sidecars without a gateway, built from the real link client code.

`RelaySidecar`: `LinkClient` + `HeartbeatRelay` + `LocalState`, as mc-sidecar wires them,
recording when each beat went in and when the hub acknowledged it durable.

`fleet_main`: one process holding many lightweight sidecars (a `LinkClient` each, with a
command queue that only counts), whose agents beat at their interval; the sidecars
coalesce and relay at most one batch per second, as the relay does.
"""

from __future__ import annotations

import asyncio
import heapq
import multiprocessing.connection as mpc
import random
import re
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

from bench.harness import (
    LOAD_CORE,
    percentile,
    pin_to,
    pipe_inbox,
    quiet_logs,
    raise_fd_limit,
    report_errors,
)
from bench.seed import SEEDED_AGENT_API_URL, SEEDED_WORKSPACE_ROOT
from missioncontrol.version import VERSION
from protos import link_pb2 as pb
from protos.contract import HEARTBEAT_FLUSH_MS, LINK_PROTOCOL, epoch_s, timestamp
from sidecar.commands import CommandQueue
from sidecar.link.client import LinkClient, LinkStatus
from sidecar.link.heartbeats import MAX_IN_FLIGHT, HeartbeatRelay
from sidecar.state import Credential, LocalState


class CountingCommands:
    """The command queue of a sidecar with no gateway: commands are counted, not applied."""

    def __init__(self) -> None:
        self.received = 0

    def submit(self, command: pb.Command) -> None:
        self.received += 1

    def reset(self) -> None:
        return None


class CredentialRows:
    """Token verifiers held in memory, handed to `CredentialIndex` as its source.

    Answers both as a loader (called) and as local state (`.credentials()`), the two
    shapes the index has taken while the agent API is being built.
    """

    def __init__(self, rows: list[Credential]) -> None:
        self.rows = rows

    def __call__(self) -> list[Credential]:
        return self.rows

    def credentials(self, agent_id: str | None = None) -> list[Credential]:
        return self.rows


async def hello_for(gateway_id: str) -> pb.Hello:
    return pb.Hello(
        gateway_id=gateway_id,
        link_protocol=LINK_PROTOCOL,
        sidecar_version=VERSION,
        hostname=gateway_id,
        # what bench/seed.py rendered the agents' files with, as a real sidecar says it
        workspace_root=SEEDED_WORKSPACE_ROOT,
        agent_api_url=SEEDED_AGENT_API_URL,
    )


def link_client(target: str, gateway_id: str, **callbacks: Any) -> LinkClient:
    commands = cast(CommandQueue, CountingCommands())
    return LinkClient(target, lambda: hello_for(gateway_id), commands, **callbacks)


class RelaySidecar:
    def __init__(self, state_dir: Path, target: str, gateway_id: str, agent_ids: list[str]):
        self.agent_ids = agent_ids
        self.state = LocalState(state_dir / "state.sqlite3")
        self.relay = HeartbeatRelay(self._send, self.state)
        self.link = link_client(
            target, gateway_id, on_welcome=self.relay.on_welcome, on_heartbeat_ack=self._on_ack
        )
        self.link.on_status(self.relay.on_link_status)
        self.latencies: list[float] = []
        self._sent: dict[int, list[float]] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self.link.status.connected

    async def start(self) -> None:
        await self.relay.start()
        self._task = asyncio.create_task(self.link.run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.relay.stop()
        self.state.close()

    async def beat_forever(self, interval_s: float) -> None:
        """Every agent beats once per interval, at its own random phase."""
        now = time.monotonic()
        due = [(now + random.uniform(0, interval_s), a) for a in self.agent_ids]
        heapq.heapify(due)
        while True:
            at, agent_id = heapq.heappop(due)
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            self.relay.record(agent_id)
            heapq.heappush(due, (at + interval_s, agent_id))

    def _send(self, message: pb.SidecarMessage) -> None:
        if message.WhichOneof("body") == "heartbeats":
            batch = message.heartbeats
            self._sent[batch.batch_id] = [epoch_s(b.observed_at) for b in batch.beats]
        self.link.send(message)

    def _on_ack(self, batch_id: int) -> None:
        observed = self._sent.pop(batch_id, None)
        if observed:
            now = time.time()
            self.latencies.extend(now - at for at in observed)
        self.relay.on_ack(batch_id)


# --------------------------------------------------------------------- fleet


class _FleetSidecar:
    __slots__ = ("acked", "batch_id", "client", "due", "in_flight", "pending")

    def __init__(self, client: LinkClient) -> None:
        self.client = client
        self.pending: set[str] = set()
        self.due: list[tuple[float, str]] = []
        self.batch_id = 0
        self.in_flight: dict[int, float] = {}  # batch id -> sent at, as the relay keeps them
        self.acked = 0


def fleet_main(
    conn: mpc.Connection, target: str, fleet: list[tuple[str, list[str]]], interval_s: float
) -> None:
    report_errors(conn, lambda: asyncio.run(_fleet(conn, target, fleet, interval_s)))


def _reasons(statuses: Iterable[LinkStatus]) -> dict[str, int]:
    """Why the sidecars not linked now lost (or never got) their stream, by count."""
    reasons = Counter(
        re.sub(r"\d+", "N", status.last_error)[:120] or "never linked"
        for status in statuses
        if not status.connected
    )
    return dict(reasons.most_common(5))


async def _fleet(
    conn: mpc.Connection, target: str, fleet: list[tuple[str, list[str]]], interval_s: float
) -> None:
    pin_to(LOAD_CORE)
    raise_fd_limit()
    quiet_logs()
    latencies: list[float] = []  # batches sent since the last reset, from send to ack
    before: list[float] = []  # those sent before it (the connect), acked before or after
    reset_at = 0.0
    sidecars: list[_FleetSidecar] = []
    now = time.monotonic()
    for gateway_id, agent_ids in fleet:
        holder: list[_FleetSidecar] = []

        def on_ack(batch_id: int, holder: list[_FleetSidecar] = holder) -> None:
            sidecar = holder[0]
            sent_at = sidecar.in_flight.pop(batch_id, None)
            if sent_at is not None:
                (latencies if sent_at >= reset_at else before).append(time.monotonic() - sent_at)
                sidecar.acked += 1

        sidecar = _FleetSidecar(link_client(target, gateway_id, on_heartbeat_ack=on_ack))
        holder.append(sidecar)

        def on_status(status: LinkStatus, sidecar: _FleetSidecar = sidecar) -> None:
            if not status.connected:
                sidecar.in_flight.clear()  # the relay requeues; this one just sends anew

        sidecar.client.on_status(on_status)
        sidecar.due = [(now + random.uniform(0, interval_s), a) for a in agent_ids]
        heapq.heapify(sidecar.due)
        sidecars.append(sidecar)
    tasks = [asyncio.create_task(s.client.run()) for s in sidecars]
    tasks.append(asyncio.create_task(_relay_ticks(sidecars, interval_s)))
    conn.send({"ready": True})
    inbox = pipe_inbox(conn)
    try:
        while (request := await inbox.get()) is not None:
            if request == "status":
                conn.send(
                    {
                        "connected": sum(s.client.status.connected for s in sidecars),
                        "opened": [s.client.streams_opened for s in sidecars],
                        "acked": sum(s.acked for s in sidecars),
                        "ack_p99_s": percentile(latencies, 99),
                        "ack_samples": len(latencies),
                        "ack_p99_before_reset_s": percentile(before, 99),
                        "down_because": _reasons(s.client.status for s in sidecars),
                    }
                )
            elif request == "reset":
                # The window measures batches sent in it: one sent before and acked in it
                # counts with those of the phase it was sent in.
                before += latencies
                latencies.clear()
                reset_at = time.monotonic()
                conn.send({"ok": True})
    finally:
        asyncio.get_running_loop().remove_reader(conn.fileno())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _relay_ticks(sidecars: list[_FleetSidecar], interval_s: float) -> None:
    """Each flush interval, every sidecar sends its agents' beats since the last one (up to
    MAX_IN_FLIGHT batches awaiting their acks, as the relay does)."""
    flush_s = HEARTBEAT_FLUSH_MS / 1000
    while True:
        await asyncio.sleep(flush_s)
        now = time.monotonic()
        for sidecar in sidecars:
            while sidecar.due and sidecar.due[0][0] <= now:
                at, agent_id = heapq.heappop(sidecar.due)
                sidecar.pending.add(agent_id)
                heapq.heappush(sidecar.due, (at + interval_s, agent_id))
            if (
                not sidecar.pending
                or len(sidecar.in_flight) >= MAX_IN_FLIGHT
                or not sidecar.client.status.connected
            ):
                continue
            sidecar.batch_id += 1
            batch = pb.HeartbeatBatch(batch_id=sidecar.batch_id)
            stamp = timestamp()
            for agent_id in sidecar.pending:
                batch.beats.add(agent_id=agent_id, observed_at=stamp)
            sidecar.pending.clear()
            sidecar.in_flight[sidecar.batch_id] = now
            sidecar.client.send(pb.SidecarMessage(heartbeats=batch))
