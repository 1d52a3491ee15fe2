"""Approvals and pause through a real OpenClaw gateway (scripted model), end to end.

hub (REST API) -> in-process sidecar (real gateway client, local agent API) -> real
gateway -> agent runs on the scripted model.

- Approvals: a lead's APPROVALS.md lands in its real workspace; a worker cannot move a
  task to done without an approved approval; the lead asks through its local API (as
  its curl does); the admin approves; the outcome reaches the lead's session as a real
  run; then the worker finishes the task.
- Pause: a paused agent's heartbeat job is really off in openclaw.json (and in the
  gateway's own status); resume brings the cadence back and wakes the agent again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hub.app import Hub
from sidecar.gateway.openclaw import OpenClawGatewayClient
from tests.interop.conftest import RunningGateway, Stack, linked_stack
from tests.interop.scripted_model import Behaviour, ScriptedModel
from tests.support import api, wait_for

pytestmark = [pytest.mark.interop, pytest.mark.timeout(600)]

GATEWAY_ID = "gw-parity-e2e"
RUN_TIMEOUT_S = 90.0


@pytest.fixture
async def stack(
    gateway: RunningGateway, model: ScriptedModel, tmp_path: Path
) -> AsyncIterator[Stack]:
    async with linked_stack(gateway, model, tmp_path, GATEWAY_ID) as linked:
        yield linked


async def online(hub: Hub, agent_id: str) -> dict[str, Any] | None:
    status, agent = await api(hub, "GET", f"/api/v1/agents/{agent_id}")
    assert status == 200, agent
    settled = agent["applied_generation"] == agent["lifecycle_generation"]
    return agent if agent["status"] == "online" and settled else None


async def create(stack: Stack, body: dict[str, Any]) -> dict[str, Any]:
    status, agent = await api(stack.hub, "POST", "/api/v1/agents", body)
    assert status == 201, agent
    await wait_for(
        lambda: online(stack.hub, agent["id"]),
        timeout_s=RUN_TIMEOUT_S,
        what=f"{body['name']} online",
    )
    return agent


def workspace(stack: Stack, agent: dict[str, Any]) -> Path:
    return stack.gateway.workspace_root / f"workspace-{agent['gateway_agent_id']}"


async def as_agent(
    stack: Stack, agent: dict[str, Any], method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    """What the agent's own `curl` does: its sidecar, its token file."""
    token = (workspace(stack, agent) / ".mc-agent-token").read_text().strip()
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method,
            f"{stack.sidecar.agent_api_url}/api/v1/agent{path}",
            json=body,
            headers={"X-Agent-Token": token},
        ) as response,
    ):
        return response.status, await response.json()


async def test_an_approval_resolved_by_an_admin_reaches_the_real_lead(stack: Stack) -> None:
    hub, model = stack.hub, stack.model
    assert model is not None
    model.behaviour = Behaviour.REPLY
    status, board = await api(
        hub, "POST", "/api/v1/boards", {"name": "Release", "gateway_id": GATEWAY_ID}
    )
    assert status == 201 and board["require_approval_for_done"]
    lead = await create(
        stack, {"name": "Release Lead", "board_id": board["id"], "is_board_lead": True}
    )
    worker = await create(stack, {"name": "Release Worker", "board_id": board["id"]})
    guidance = (workspace(stack, lead) / "APPROVALS.md").read_text()
    assert f"/boards/{board['id']}/approvals" in guidance
    lead_turns = model.for_agent(lead["gateway_agent_id"])
    assert lead_turns and "APPROVALS.md" in lead_turns[0].system_text  # AGENTS.md, in the prompt
    assert not (workspace(stack, worker) / "APPROVALS.md").exists()

    status, task = await api(
        hub,
        "POST",
        f"/api/v1/boards/{board['id']}/tasks",
        {"title": "Publish the notes", "assigned_agent_id": worker["id"]},
    )
    task_path = f"/boards/{board['id']}/tasks/{task['id']}"
    status, _ = await as_agent(stack, worker, "PATCH", task_path, {"status": "in_progress"})
    assert status == 200
    status, body = await as_agent(stack, worker, "PATCH", task_path, {"status": "done"})
    assert status == 409 and "approved approval" in body["detail"]

    status, approval = await as_agent(
        stack,
        lead,
        "POST",
        f"/boards/{board['id']}/approvals",
        {
            "action_type": "mark_done",
            "payload": {"summary": "notes are published"},
            "confidence": 90,
            "task_ids": [task["id"]],
        },
    )
    assert status == 201, approval
    before = len(model.for_agent(lead["gateway_agent_id"]))
    status, resolved = await api(
        hub,
        "PATCH",
        f"/api/v1/boards/{board['id']}/approvals/{approval['id']}",
        {"status": "approved", "reason": "Ship it."},
    )
    assert status == 200 and resolved["status"] == "approved"
    told = await wait_for(
        lambda: next(
            (
                r
                for r in model.for_agent(lead["gateway_agent_id"])[before:]
                if "was approved" in r.turn_text
            ),
            None,
        ),
        timeout_s=RUN_TIMEOUT_S,
        what="the outcome in the lead's session",
    )
    assert "Ship it." in told.turn_text and approval["id"] in told.turn_text

    status, done = await as_agent(stack, worker, "PATCH", task_path, {"status": "done"})
    assert status == 200 and done["status"] == "done"


async def test_a_paused_agents_heartbeat_job_is_off_in_openclaw_json(stack: Stack) -> None:
    hub, model = stack.hub, stack.model
    assert model is not None
    model.behaviour = Behaviour.REPLY
    status, board = await api(
        hub, "POST", "/api/v1/boards", {"name": "Ops", "gateway_id": GATEWAY_ID}
    )
    agent = await create(
        stack, {"name": "Pausable", "board_id": board["id"], "heartbeat_config": {"every": "10m"}}
    )
    gw_agent = agent["gateway_agent_id"]

    def heartbeat_every() -> str | None:
        entry = stack.gateway.roster().get(gw_agent) or {}
        return (entry.get("heartbeat") or {}).get("every")

    async def gateway_heartbeat() -> dict[str, Any]:
        assert isinstance(stack.sidecar.gateway, OpenClawGatewayClient)
        status = await stack.sidecar.gateway.read("status", {})
        agents = (status.get("heartbeat") or {}).get("agents") or []
        return next((a for a in agents if a.get("agentId") == gw_agent), {})

    assert heartbeat_every() == "10m"
    assert (await gateway_heartbeat()).get("enabled") is True

    status, paused = await api(hub, "POST", f"/api/v1/agents/{agent['id']}/pause")
    assert status == 200 and paused["paused"]
    await wait_for(
        lambda: heartbeat_every() == "0m", timeout_s=30, what="heartbeat off in openclaw.json"
    )
    await wait_for(
        lambda: _disabled(gateway_heartbeat), timeout_s=30, what="the gateway's heartbeat job off"
    )
    await wait_for(lambda: online(hub, agent["id"]), timeout_s=30, what="the pause applied")

    runs = len(model.for_agent(gw_agent))
    status, resumed = await api(hub, "POST", f"/api/v1/agents/{agent['id']}/resume")
    assert status == 200 and not resumed["paused"]
    await wait_for(lambda: heartbeat_every() == "10m", timeout_s=30, what="heartbeat back")
    await wait_for(
        lambda: len(model.for_agent(gw_agent)) > runs,
        timeout_s=RUN_TIMEOUT_S,
        what="woken on resume",
    )
    await wait_for(
        lambda: online(hub, agent["id"]), timeout_s=RUN_TIMEOUT_S, what="checked in again"
    )


async def _disabled(read: Any) -> bool:
    entry = await read()
    return entry.get("enabled") is False or not entry.get("everyMs")
