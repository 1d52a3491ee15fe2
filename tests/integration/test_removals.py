"""Removing a board's agents through a real hub and sidecar: the removals are under way
together, and while they are, nothing in the sidecar puts them back.

The gateway is the in-memory stand-in holding every removal until the test lets go;
against the real gateway, tests/interop/test_agent_e2e.py removes a board's agents
and checks that none comes back.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from hub.app import Hub
from tests.support import RecordingGateway, api, connected_sidecar, wait_for

AGENTS = 4


async def test_removals_under_way_are_never_put_back(hub: Hub, tmp_path: Path) -> None:
    await hub.store.create_gateway("gw-r", "removals")
    gateway = RecordingGateway()
    async with connected_sidecar(hub, tmp_path, "gw-r", gateway) as (sidecar, _):
        _, board = await api(hub, "POST", "/api/v1/boards", {"name": "R", "gateway_id": "gw-r"})
        agents = []
        for i in range(AGENTS):
            status, agent = await api(
                hub,
                "POST",
                "/api/v1/agents",
                {"name": f"r{i}", "board_id": board["id"], "heartbeat_config": {"every": "10m"}},
            )
            assert status == 201, agent
            agents.append(agent["gateway_agent_id"])
        await wait_for(lambda: gateway.count("ensure_agent") == AGENTS, what="agents applied")
        gateway.hold = asyncio.Event()
        status, _ = await api(hub, "DELETE", f"/api/v1/boards/{board['id']}")
        assert status == 202
        await wait_for(
            lambda: gateway.count("remove_agent") == AGENTS, what="every removal under way"
        )
        # The gateway took their heartbeat jobs with the first step of removing them, and
        # the removals outlast the window in which the sidecar's own changes are ignored.
        gateway.heartbeat_off.update(agents)
        sidecar.own_changes.window_s = 0.0
        before = len(gateway.calls)
        await sidecar.runtime.check()
        assert [c for c in gateway.calls[before:] if c[0] == "set_heartbeat"] == []
        assert {c.code for c in sidecar.runtime.conditions()} == set()
        gateway.hold.set()
        await wait_for(
            lambda: _gone(hub, f"/api/v1/boards/{board['id']}"),
            timeout_s=20,
            what="board gone with its agents",
        )
        assert sidecar.state.agents() == []
        assert gateway.count("ensure_agent") == AGENTS  # none put back


async def _gone(hub: Hub, path: str) -> bool:
    status, _ = await api(hub, "GET", path)
    return status == 404
