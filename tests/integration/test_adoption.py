"""Adopting agents a gateway's openclaw.json already has, through a real hub and sidecar:
listed as unmanaged in the gateway's inventory, adopted into a board without their files
being overwritten."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hub.app import Hub
from tests.integration.test_documented_calls import _applied, board_on, gateway_with_root
from tests.support import api, connected_sidecar, wait_for


def openclaw_json(path: Path, entries: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "gateway": {"mode": "local", "port": 18789, "auth": {"mode": "token", "token": "t" * 32}},
        "agents": {"entries": entries},
    }
    path.write_text(json.dumps(document, indent=2))


async def unmanaged(hub: Hub, gateway_id: str) -> list[dict[str, Any]]:
    status, inventory = await api(hub, "GET", f"/api/v1/gateways/{gateway_id}/inventory")
    assert status == 200, inventory
    return inventory["unmanaged"]


async def test_an_existing_agent_is_adopted_without_overwriting_its_files(
    hub: Hub, tmp_path: Path
) -> None:
    root = tmp_path / "ws"
    research = root / "research"
    research.mkdir(parents=True)
    (research / "AGENTS.md").write_text("# My own instructions\n")
    (research / "SOUL.md").write_text("# My own soul\n")
    openclaw_json(
        tmp_path / "sc" / "openclaw" / "openclaw.json",
        {
            "research": {"name": "Research", "workspace": str(research)},
            "elsewhere": {"name": "Elsewhere", "workspace": "/opt/agents/elsewhere"},
            "bare": {"name": "Bare"},
        },
    )
    gateway = await gateway_with_root(hub, root)
    board = await board_on(hub, gateway["id"])
    async with connected_sidecar(hub, tmp_path, gateway["id"], workspaces="ws") as (_, recording):
        listed = await wait_for(lambda: unmanaged(hub, gateway["id"]), what="unmanaged listed")
        by_id = {u["gateway_agent_id"]: u for u in listed}
        assert set(by_id) == {"research", "elsewhere", "bare"}
        assert by_id["research"] == {
            "gateway_agent_id": "research",
            "name": "Research",
            "workspace": str(research),
            "adoptable": True,
            "why_not": None,
        }
        assert not by_id["elsewhere"]["adoptable"]
        assert "outside the sidecar's workspace root" in by_id["elsewhere"]["why_not"]
        assert "names no workspace" in by_id["bare"]["why_not"]

        status, body = await api(
            hub,
            "POST",
            f"/api/v1/gateways/{gateway['id']}/agents/adopt",
            {"gateway_agent_id": "elsewhere", "board_id": board["id"]},
        )
        assert status == 422 and "outside" in body["detail"]
        status, agent = await api(
            hub,
            "POST",
            f"/api/v1/gateways/{gateway['id']}/agents/adopt",
            {
                "gateway_agent_id": "research",
                "board_id": board["id"],
                "heartbeat_config": {"every": "30m"},
            },
        )
        assert status == 201, agent
        assert agent["adopted"] and agent["gateway_agent_id"] == "research"
        assert agent["name"] == "Research" and agent["board_id"] == board["id"]
        await wait_for(lambda: _applied(hub, agent["id"]), what="adopted agent applied")
        assert (research / "AGENTS.md").read_text() == "# My own instructions\n"
        assert (research / "SOUL.md").read_text() == "# My own soul\n"
        assert (research / "MEMORY.md").exists()  # what was missing is written
        assert (research / ".mc-agent-token").stat().st_mode & 0o777 == 0o600
        assert ("ensure_agent", "research", str(research)) in recording.calls
        assert recording.count("wake") >= 1

        remaining = await unmanaged(hub, gateway["id"])
        assert "research" not in {u["gateway_agent_id"] for u in remaining}
        status, body = await api(
            hub,
            "POST",
            f"/api/v1/gateways/{gateway['id']}/agents/adopt",
            {"gateway_agent_id": "research", "board_id": board["id"]},
        )
        assert status == 409 and "inventory" in body["detail"]

        # Deleting it removes it from the gateway but leaves its workspace.
        status, _ = await api(hub, "DELETE", f"/api/v1/agents/{agent['id']}")
        assert status == 202
        await wait_for(
            lambda: ("remove_agent", "research", False) in recording.calls,
            what="removed, files kept",
        )
    status, page = await api(hub, "GET", "/api/v1/activity?kind=agent.adopted")
    assert page["items"][0]["summary"].startswith("existing gateway agent research adopted")
