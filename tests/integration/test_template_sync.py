"""Template sync runs as a job: 202 at once, progress and per-agent results after."""

from __future__ import annotations

import json
from pathlib import Path

from hub.app import Hub
from tests.support import api, connected_sidecar, hub_config, wait_for


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

        assert gateway.count("reset_session") == 0  # sessions are kept unless asked

        status, lead_only = await api(
            hub, "POST", "/api/v1/gateways/gw-s/templates/sync?lead_only=true&reset_sessions=true"
        )
        assert status == 202 and [i["agent_name"] for i in lead_only["items"]] == ["lead"]
        assert lead_only["options"]["reset_sessions"] is True
        await wait_for(lambda: gateway.count("reset_session") == 1, what="lead's session reset")
        lead = next(a for a in agents if a["name"] == "lead")
        resets = [c for c in gateway.calls if c[0] == "reset_session"]
        assert resets == [("reset_session", lead["gateway_agent_id"])]
        # Reset after the files and entry are in place, so the fresh session reads them.
        order = [c[0] for c in gateway.calls if c[1] == lead["gateway_agent_id"]]
        assert order[-2:] == ["set_heartbeat", "reset_session"]
        status, _ = await api(hub, "GET", "/api/v1/gateways/gw-s/templates/sync/nope")
        assert status == 404
        status, _ = await api(hub, "POST", "/api/v1/gateways/missing/templates/sync")
        assert status == 404


async def test_jobs_survive_a_hub_restart_and_a_cut_short_one_says_what_was_not_queued(
    tmp_path: Path,
    database: str,
) -> None:
    hub = Hub(hub_config(tmp_path / "hub", database=database))
    await hub.start()
    try:
        async with connected_sidecar(hub, tmp_path, "gw-r") as (_, gateway):
            _, board = await api(hub, "POST", "/api/v1/boards", {"name": "R", "gateway_id": "gw-r"})
            await api(hub, "POST", "/api/v1/agents", {"name": "w", "board_id": board["id"]})
            await wait_for(lambda: gateway.count("ensure_agent") == 1, what="provisioned")
            _, job = await api(hub, "POST", "/api/v1/gateways/gw-r/templates/sync")
            path = f"/api/v1/gateways/gw-r/templates/sync/{job['job_id']}"

            async def finished() -> dict | None:
                _, state = await api(hub, "GET", path)
                return state if state["status"] == "done" else None

            done = await wait_for(finished, what="sync job done")
    finally:
        await hub.stop()

    hub = Hub(hub_config(tmp_path / "hub", database=database))
    await hub.start()
    try:
        status, again = await api(hub, "GET", path)
        assert status == 200 and again == done and again["applied"] == 1
        # What a hub stopped mid-job leaves: an item that never got its generation.
        await hub.db.write(
            lambda conn: conn.execute(
                "INSERT INTO template_sync_jobs (id, gateway_id, options, items, created_at) "
                "VALUES ('cut', 'gw-r', '{}', ?, 0)",
                (json.dumps([{"agent_id": "a", "name": "w", "gateway_agent_id": "mc-a"}]),),
            )
        )
        status, cut = await api(hub, "GET", "/api/v1/gateways/gw-r/templates/sync/cut")
        assert status == 200 and cut["status"] == "done" and cut["failed"] == 1
        assert "stopped before this agent was queued" in cut["items"][0]["message"]
        status, _ = await api(hub, "GET", "/api/v1/gateways/other/templates/sync/cut")
        assert status == 404  # a job is found only under its own gateway
    finally:
        await hub.stop()
