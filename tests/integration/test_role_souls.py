"""Role souls from the hub's souls directory reach a worker's SOUL.md through its sidecar."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from hub.app import Hub
from tests.integration.test_documented_calls import MC_AGENT, _applied, board_on, gateway_with_root
from tests.support import api, connected_sidecar, hub_config, wait_for


async def test_a_workers_soul_comes_from_the_souls_directory(tmp_path: Path) -> None:
    souls = tmp_path / "souls"
    souls.mkdir()
    (souls / "devops-engineer.md").write_text("Automate the boring parts. Never page at night.\n")
    (souls / "researcher.md").write_text("Cite every source.\n")
    hub = Hub(dataclasses.replace(hub_config(tmp_path / "hub"), souls_dir=souls))
    await hub.start()
    try:
        gateway = await gateway_with_root(hub, tmp_path / "ws")
        board = await board_on(hub, gateway["id"])
        _, worker = await api(hub, "POST", "/api/v1/agents", {**MC_AGENT, "board_id": board["id"]})
        _, lead = await api(
            hub,
            "POST",
            "/api/v1/agents",
            {**MC_AGENT, "name": "Lead", "board_id": board["id"], "is_board_lead": True},
        )
        async with connected_sidecar(hub, tmp_path, gateway["id"], workspaces="ws"):
            for agent in (worker, lead):
                await wait_for(lambda a=agent: _applied(hub, a["id"]), what="applied")
            soul = tmp_path / "ws" / f"workspace-{worker['gateway_agent_id']}" / "SOUL.md"
            assert "## Your role: DevOps Engineer" in soul.read_text()
            assert "Never page at night." in soul.read_text()
            lead_soul = tmp_path / "ws" / f"workspace-{lead['gateway_agent_id']}" / "SOUL.md"
            assert "Never page at night." not in lead_soul.read_text()  # leads: none

            # A template sync picks up an edited file; a new role picks up its own.
            (souls / "devops-engineer.md").write_text("Automate, then document.\n")
            status, _ = await api(hub, "POST", f"/api/v1/gateways/{gateway['id']}/templates/sync")
            assert status == 202
            await wait_for(
                lambda: "Automate, then document." in soul.read_text(), what="synced soul"
            )
            await api(
                hub,
                "PATCH",
                f"/api/v1/agents/{worker['id']}",
                {"identity_profile": {"role": "Researcher"}},
            )
            await wait_for(lambda: "Cite every source." in soul.read_text(), what="new role's soul")
            await api(
                hub,
                "PATCH",
                f"/api/v1/agents/{worker['id']}",
                {"identity_profile": {"role": "Unlisted Role"}},
            )
            await wait_for(lambda: "## Your role" not in soul.read_text(), what="no soul file")
    finally:
        await hub.stop()
