"""The endpoints the agents' files name, called as agents call them: through their local
sidecar, with their own token, against a real hub."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hub.app import Hub
from tests.integration.test_approvals import messages_to
from tests.integration.test_documented_calls import (
    MC_AGENT,
    _applied,
    agent_call,
    board_on,
    gateway_with_root,
    token_of,
)
from tests.support import api, connected_sidecar, wait_for


async def setup(hub: Hub, tmp_path: Path) -> dict[str, Any]:
    gateway = await gateway_with_root(hub, tmp_path / "ws")
    board = await board_on(hub, gateway["id"])
    _, main = await api(
        hub,
        "POST",
        "/api/v1/agents",
        {"name": "Gateway Agent", "gateway_id": gateway["id"], "board_id": None},
    )
    _, lead = await api(
        hub,
        "POST",
        "/api/v1/agents",
        {"name": "Lead", "board_id": board["id"], "is_board_lead": True},
    )
    return {"gateway": gateway, "board": board, "main": main, "lead": lead}


async def test_the_api_description_lists_every_agent_route(hub: Hub, tmp_path: Path) -> None:
    s = await setup(hub, tmp_path)
    async with connected_sidecar(hub, tmp_path, s["gateway"]["id"], workspaces="ws") as (
        sidecar,
        _,
    ):
        await wait_for(lambda: _applied(hub, s["lead"]["id"]), what="lead applied")
        status, spec = await agent_call(
            sidecar.agent_api_url,
            token_of(tmp_path / "ws", s["lead"]),
            "GET",
            "/api/v1/agent/openapi.json",
        )
    assert status == 200, spec
    assert spec["servers"] == [{"url": "/api/v1/agent"}] and spec["x-agent-role"] == "lead"
    routes = {
        (method.upper(), path)
        for path, operations in spec["paths"].items()
        for method in operations
    }
    for expected in [
        ("POST", "/heartbeat"),
        ("GET", "/boards/{board_id}/approvals"),
        ("POST", "/boards/{board_id}/approvals"),
        ("GET", "/boards/{board_id}/memory"),
        ("POST", "/boards/{board_id}/memory"),
        ("POST", "/agents"),
        ("GET", "/openapi.json"),
    ]:
        assert expected in routes, expected
    assert not [p for p in spec["paths"] if not p.startswith("/")]
    tags = {tag for ops in spec["paths"].values() for op in ops.values() for tag in op["tags"]}
    assert tags == {"agent-main", "agent-lead", "agent-worker"}
    assert "/api/v1/gateways" not in spec["paths"]  # nothing of the admin API


async def test_a_lead_creates_workers_up_to_max_agents_and_nudges_them(
    hub: Hub, tmp_path: Path
) -> None:
    s = await setup(hub, tmp_path)
    board = s["board"]
    assert board["max_agents"] == 1  # the reference's default
    async with connected_sidecar(hub, tmp_path, s["gateway"]["id"], workspaces="ws") as (
        sidecar,
        _,
    ):
        await wait_for(lambda: _applied(hub, s["lead"]["id"]), what="lead applied")
        url, lead_token = sidecar.agent_api_url, token_of(tmp_path / "ws", s["lead"])
        status, worker = await agent_call(url, lead_token, "POST", "/api/v1/agent/agents", MC_AGENT)
        assert status == 201, worker
        assert worker["board_id"] == board["id"] and not worker["is_board_lead"]
        status, body = await agent_call(
            url, lead_token, "POST", "/api/v1/agent/agents", {**MC_AGENT, "name": "Second"}
        )
        assert status == 409 and "max_agents" in body["detail"] and body["request_id"]
        await api(hub, "PATCH", f"/api/v1/boards/{board['id']}", {"max_agents": 2})
        status, second = await agent_call(
            url, lead_token, "POST", "/api/v1/agent/agents", {**MC_AGENT, "name": "Second"}
        )
        assert status == 201
        await wait_for(lambda: _applied(hub, worker["id"]), what="worker applied")
        worker_token = token_of(tmp_path / "ws", worker)
        status, body = await agent_call(
            url, worker_token, "POST", "/api/v1/agent/agents", {"name": "X"}
        )
        assert status == 403
        status, body = await agent_call(
            url, lead_token, "POST", "/api/v1/agent/agents", {"name": "L2", "is_board_lead": True}
        )
        assert status == 403

        status, sent = await agent_call(
            url,
            lead_token,
            "POST",
            f"/api/v1/agent/boards/{board['id']}/agents/{worker['id']}/nudge",
            {"message": "Status on the release notes?"},
        )
        assert status == 202 and sent["agent_id"] == worker["id"]
        (nudge,) = await messages_to(hub, worker["gateway_agent_id"])
        assert "from your board lead" in nudge and "release notes" in nudge
        status, _ = await agent_call(
            url,
            worker_token,
            "POST",
            f"/api/v1/agent/boards/{board['id']}/agents/{second['id']}/nudge",
            {"message": "hi"},
        )
        assert status == 403


async def test_leads_and_the_main_agent_message_each_other(hub: Hub, tmp_path: Path) -> None:
    s = await setup(hub, tmp_path)
    gateway, board, main, lead = s["gateway"], s["board"], s["main"], s["lead"]
    leadless = await board_on(hub, gateway["id"], "Leadless")
    async with connected_sidecar(hub, tmp_path, gateway["id"], workspaces="ws") as (sidecar, _):
        for agent in (main, lead):
            await wait_for(lambda a=agent: _applied(hub, a["id"]), what="applied")
        url = sidecar.agent_api_url
        main_token, lead_token = token_of(tmp_path / "ws", main), token_of(tmp_path / "ws", lead)

        status, asked = await agent_call(
            url,
            lead_token,
            "POST",
            f"/api/v1/agent/boards/{board['id']}/gateway/main/ask-user",
            {"content": "Ship on Friday or Monday?", "correlation_id": "q-17"},
        )
        assert status == 202 and asked["main_agent_id"] == main["id"]
        (question,) = await messages_to(hub, main["gateway_agent_id"])
        assert "Ship on Friday or Monday?" in question and "q-17" in question

        status, handed = await agent_call(
            url,
            main_token,
            "POST",
            f"/api/v1/agent/gateway/boards/{board['id']}/lead/message",
            {"kind": "handoff", "content": "The user says Monday."},
        )
        assert (
            status == 202 and handed["lead_agent_id"] == lead["id"] and not handed["lead_created"]
        )
        assert any(
            "[handoff] The user says Monday." in m
            for m in await messages_to(hub, lead["gateway_agent_id"])
        )

        # A board without a lead gets one, as the reference does.
        status, created = await agent_call(
            url,
            main_token,
            "POST",
            f"/api/v1/agent/gateway/boards/{leadless['id']}/lead/message",
            {"kind": "question", "content": "Who owns this board?"},
        )
        assert (
            status == 202 and created["lead_created"] and created["lead_agent_name"] == "Lead Agent"
        )
        status, read = await api(hub, "GET", f"/api/v1/agents/{created['lead_agent_id']}")
        assert read["is_board_lead"] and read["board_id"] == leadless["id"]

        status, broadcast = await agent_call(
            url,
            main_token,
            "POST",
            "/api/v1/agent/gateway/leads/broadcast",
            {"content": "Freeze at 5pm."},
        )
        assert status == 202, broadcast
        assert broadcast["sent"] == 2 and broadcast["failed"] == 0 and broadcast["ok"]
        status, broadcast = await agent_call(
            url,
            main_token,
            "POST",
            "/api/v1/agent/gateway/leads/broadcast",
            {"content": "x", "board_ids": [board["id"], "not-a-board"]},
        )
        assert broadcast["sent"] == 1 and broadcast["failed"] == 1
        assert not broadcast["results"][1]["ok"] and broadcast["results"][1]["error"]

        # Each role keeps to its own calls.
        status, _ = await agent_call(
            url, lead_token, "POST", "/api/v1/agent/gateway/leads/broadcast", {"content": "x"}
        )
        assert status == 403
        status, _ = await agent_call(
            url,
            main_token,
            "POST",
            f"/api/v1/agent/boards/{board['id']}/gateway/main/ask-user",
            {"content": "x"},
        )
        assert status == 403
