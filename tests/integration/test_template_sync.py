"""Template sync runs as a job: 202 at once, progress and per-agent results after."""

from __future__ import annotations

from pathlib import Path

from hub.app import Hub
from tests.integration.board_setup import connected_sidecar
from tests.support import api, wait_for


async def test_sync_job_reapplies_every_agent_without_rotating_tokens(
    hub: Hub, tmp_path: Path
) -> None:
    async with connected_sidecar(hub, tmp_path, "gw-s") as (_, gateway):
        _, board = await api(hub, "POST", "/api/v1/boards", {"name": "S", "gateway_id": "gw-s"})
        agents = []
        for name, lead in (("lead", True), ("worker", False)):
            _, agent = await api(
                hub,
                "POST",
                "/api/v1/agents",
                {"name": name, "board_id": board["id"], "is_board_lead": lead},
            )
            agents.append(agent)
        await wait_for(lambda: gateway.count("ensure_agent") == 2, what="provisioned")
        ws = tmp_path / "ws"
        tokens = {
            a["id"]: (ws / f"workspace-{a['gateway_agent_id']}" / ".mc-agent-token").read_text()
            for a in agents
        }

        status, job = await api(hub, "POST", "/api/v1/gateways/gw-s/templates/sync")
        assert status == 202 and job["total"] == 2

        async def finished() -> dict | None:
            _, state = await api(
                hub, "GET", f"/api/v1/gateways/gw-s/templates/sync/{job['job_id']}"
            )
            return state if state["status"] == "done" else None

        done = await wait_for(finished, what="sync job done")
        assert done["applied"] == 2 and done["failed"] == 0
        assert {i["state"] for i in done["items"]} == {"applied"}
        assert gateway.count("ensure_agent") == 4  # each agent applied once more
        for agent in agents:
            token = ws / f"workspace-{agent['gateway_agent_id']}" / ".mc-agent-token"
            assert token.read_text() == tokens[agent["id"]]  # no rotation unless asked

        status, lead_only = await api(
            hub, "POST", "/api/v1/gateways/gw-s/templates/sync?lead_only=true"
        )
        assert status == 202 and [i["agent_name"] for i in lead_only["items"]] == ["lead"]
        status, _ = await api(hub, "GET", "/api/v1/gateways/gw-s/templates/sync/nope")
        assert status == 404
        status, _ = await api(hub, "POST", "/api/v1/gateways/missing/templates/sync")
        assert status == 404
