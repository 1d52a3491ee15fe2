"""A hub killed under its sidecars: three `mc-hub serve` processes on one PostgreSQL,
twenty sidecars spread across them, each with every hub's address in its list (its own
hub first). One hub is killed with SIGKILL: its sidecars reconnect to the others within
their backoff, their agents are not marked offline, and every command queued before and
during the failure is applied exactly once (the sidecars' applied sequences against the
outbox)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import psycopg

from hub.demo.hubs import HubPorts, Hubs
from missioncontrol.netaddr import HostPort
from sidecar.app import Sidecar
from tests.integration.multi_hub_setup import record_applied
from tests.support import RecordingGateway, fast_backoff, free_ports, sidecar_config, wait_for

SIDECARS = 20
HUBS = 3
KILLED = 0


class Admin:
    """The admin API of the running hubs (the token the hubs were started with)."""

    def __init__(self, hubs: Hubs) -> None:
        self.hubs = hubs
        self.token = hubs.admin_token_file.read_text().strip()
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))

    async def call(self, hub: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        url = f"{self.hubs.hubs[hub].http_url}{path}"
        headers = {"Authorization": f"Bearer {self.token}"}
        async with self.session.request(method, url, json=body, headers=headers) as response:
            return response.status, await response.json()


@contextlib.asynccontextmanager
async def hub_processes(tmp_path: Path, url: str) -> AsyncIterator[Hubs]:
    ports = free_ports(3 * HUBS)
    hubs = Hubs(
        tmp_path / "hubs",
        [HubPorts(*ports[i : i + 3]) for i in range(0, 3 * HUBS, 3)],
        database_url=url,
        serve_args=("--insecure-dev", "--log-level", "warning"),
    )
    try:
        await asyncio.to_thread(hubs.start)
        yield hubs
    finally:
        await asyncio.to_thread(hubs.stop)


async def rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cursor = await conn.execute(sql)
        return [tuple(r) for r in await cursor.fetchall()]


async def test_a_killed_hubs_sidecars_move_to_the_others_and_apply_every_command_once(
    tmp_path: Path,
    shared_database: str,
) -> None:
    url = shared_database
    async with hub_processes(tmp_path, url) as hubs, contextlib.AsyncExitStack() as stack:
        admin = Admin(hubs)
        stack.push_async_callback(admin.session.close)
        links = [HostPort("127.0.0.1", hub.ports.link) for hub in hubs.hubs]
        sidecars: dict[str, tuple[Sidecar, list[int]]] = {}
        for index in range(SIDECARS):
            gateway_id = f"gw-{index:02d}"
            first = index % HUBS  # its own hub first, then the others in turn
            config = dataclasses.replace(
                sidecar_config(
                    tmp_path / f"sc-{index:02d}",
                    links[first],
                    gateway_id=gateway_id,
                    workspace_root=tmp_path / f"ws-{index:02d}",
                ),
                more_hubs=tuple(links[first + 1 :] + links[:first]),
            )
            sidecar = Sidecar(config, gateway=RecordingGateway(), link_backoff=fast_backoff())
            applied = record_applied(sidecar)
            await sidecar.start()
            stack.push_async_callback(sidecar.stop)
            sidecars[gateway_id] = (sidecar, applied)

        async def connected() -> dict[str, str]:
            found = await rows(url, "SELECT id, owner_hub FROM gateways WHERE connected = 1")
            return {r[0]: r[1] for r in found}

        await wait_for(
            lambda: _all(connected(), SIDECARS), what="every sidecar connected", timeout_s=30
        )
        owners = await connected()
        # Commands before the failure: a board and an agent on every gateway.
        agents: dict[str, str] = {}
        for index, gateway_id in enumerate(sidecars):
            status, board = await admin.call(
                index % HUBS,
                "POST",
                "/api/v1/boards",
                {"name": f"B{index}", "gateway_id": gateway_id},
            )
            assert status == 201, board
            status, agent = await admin.call(
                index % HUBS,
                "POST",
                "/api/v1/agents",
                {"name": f"Agent {index}", "board_id": board["id"]},
            )
            assert status == 201, agent
            agents[gateway_id] = agent["id"]
        await wait_for(all_online(url), what="every agent online before the failure", timeout_s=30)
        killed_hub = owners["gw-00"]  # sidecar 0 has hub KILLED first
        moving = sorted(g for g, owner in owners.items() if owner == killed_hub)
        assert moving, owners

        hubs.hubs[KILLED].process.kill()  # SIGKILL: no goodbye, its streams just break
        # Commands during the failure, through the hubs still up.
        for index, gateway_id in enumerate(sidecars):
            status, changed = await admin.call(
                1 + index % (HUBS - 1),
                "PATCH",
                f"/api/v1/agents/{agents[gateway_id]}",
                {"name": f"Agent {index} renamed"},
            )
            assert status == 200, changed

        async def moved() -> bool:
            now = await connected()
            return len(now) == SIDECARS and all(now[g] != killed_hub for g in moving)

        await wait_for(moved, what="the killed hub's sidecars on the other hubs", timeout_s=20)

        async def settled() -> bool:
            left = await rows(url, "SELECT COUNT(*) FROM commands WHERE acked_at IS NULL")
            return int(left[0][0]) == 0

        await wait_for(settled, what="every command acknowledged", timeout_s=30)
        queued = await rows(url, "SELECT gateway_id, sequence FROM commands ORDER BY sequence")
        for gateway_id, (_, applied) in sidecars.items():
            expected = [int(s) for g, s in queued if g == gateway_id]
            assert sorted(applied) == expected, (gateway_id, applied, expected)
            assert len(applied) == len(set(applied)), (gateway_id, applied)
        # Online before the failure, online after it (the renames woke them again), and
        # never marked offline in between.
        await wait_for(all_online(url), what="every agent online after the move", timeout_s=30)
        marked = await rows(
            url,
            "SELECT agent_id, kind FROM events WHERE kind IN "
            "('lifecycle.presence.offline', 'lifecycle.reconcile.max_attempts_reached')",
        )
        assert marked == []


def all_online(url: str) -> Any:
    async def check() -> bool:
        found = await rows(url, "SELECT COUNT(*) FROM agents WHERE status = 'online'")
        return int(found[0][0]) == SIDECARS

    return check


async def _all(found: Any, count: int) -> bool:
    return len(await found) == count
