"""A restart storm: many sidecars in one process, each a real link client over mTLS.

Each sidecar is enrolled the way `mc-sidecar enroll` does it (its own key, a client
certificate naming its gateway, the hub's CA pinned), then holds one `LinkClient`
with the product's default reconnect backoff. There is no gateway behind them:
commands are counted, not applied (as in the fleet benchmark, bench/sidecars.py).
The parent restarts the hub and asks when each sidecar had its new stream.
"""

from __future__ import annotations

import asyncio
import multiprocessing.connection as mpc
import time
from pathlib import Path
from typing import cast

from bench.harness import pipe_inbox, quiet_logs, raise_fd_limit, report_errors
from bench.sidecars import CountingCommands, hello_for
from missioncontrol.netaddr import HostPort
from sidecar.commands import CommandQueue
from sidecar.link.client import LinkClient
from sidecar.link.enrollment import enroll
from sidecar.link.identity import load_identity

ENROLL_CONCURRENCY = 8


def storm_main(conn: mpc.Connection, enroll_at: str, join: str, state_dirs: list[str]) -> None:
    """One sidecar per state dir, each enrolled as a new gateway with the fleet token `join`."""
    report_errors(conn, lambda: asyncio.run(_storm(conn, enroll_at, join, state_dirs)))


class _Member:
    def __init__(self, gateway_id: str, client: LinkClient) -> None:
        self.gateway_id = gateway_id
        self.client = client
        self.welcomed_at = 0.0


async def _storm(conn: mpc.Connection, enroll_at: str, join: str, state_dirs: list[str]) -> None:
    raise_fd_limit()
    quiet_logs()
    gate = asyncio.Semaphore(ENROLL_CONCURRENCY)
    started = time.monotonic()

    async def enrolled(state_dir: str) -> tuple[str, HostPort]:
        async with gate:
            done = await enroll(HostPort.parse(enroll_at), join, Path(state_dir))
            return done.gateway_id, done.link

    members = await asyncio.gather(*(enrolled(state) for state in state_dirs))
    enroll_s = time.monotonic() - started
    fleet: list[_Member] = []
    for (gateway_id, link), state_dir in zip(members, state_dirs, strict=True):
        identity = load_identity(Path(state_dir))
        holder: list[_Member] = []

        def welcomed(_welcome: object, holder: list[_Member] = holder) -> None:
            holder[0].welcomed_at = time.time()

        client = LinkClient(
            str(link),
            lambda gateway_id=gateway_id: hello_for(gateway_id),
            cast(CommandQueue, CountingCommands()),
            credentials=identity.channel_credentials,
            on_welcome=welcomed,
        )
        member = _Member(gateway_id, client)
        holder.append(member)
        fleet.append(member)
    tasks = [asyncio.create_task(m.client.run()) for m in fleet]
    conn.send({"ready": True, "enroll_s": enroll_s})
    inbox = pipe_inbox(conn)
    try:
        while (request := await inbox.get()) is not None:
            if request == "status":
                conn.send(
                    {
                        "connected": sum(m.client.status.connected for m in fleet),
                        "opened": [m.client.streams_opened for m in fleet],
                        "welcomed_at": [m.welcomed_at for m in fleet],
                        "errors": sorted(
                            {
                                m.client.status.last_error
                                for m in fleet
                                if m.client.status.last_error
                            }
                        )[:5],
                    }
                )
    finally:
        asyncio.get_running_loop().remove_reader(conn.fileno())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
