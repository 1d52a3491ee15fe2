"""Approvals through a real hub and sidecar: a lead asks through its local API, an admin
resolves, the lead is woken with the outcome, and the board's task rules use them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hub.app import Hub
from protos import link_pb2 as pb
from tests.integration.test_documented_calls import (
    _applied,
    agent_call,
    board_on,
    gateway_with_root,
    token_of,
)
from tests.support import SseListener, api, connected_sidecar, wait_for


async def messages_to(hub: Hub, gateway_agent_id: str) -> list[str]:
    """Messages (attempt-0 wakes) queued for an agent."""
    rows = await hub.db.read(
        lambda conn: conn.execute(
            "SELECT payload FROM commands WHERE agent_id = ? AND kind = 'wake_agent'",
            (gateway_agent_id,),
        ).fetchall()
    )
    wakes = [pb.Command.FromString(r[0]).wake_agent for r in rows]
    return [w.message for w in wakes if w.attempt == 0]


async def test_a_lead_asks_an_admin_resolves_and_the_rules_follow(hub: Hub, tmp_path: Path) -> None:
    gateway = await gateway_with_root(hub, tmp_path / "ws")
    board = await board_on(hub, gateway["id"])
    assert board["require_approval_for_done"] is True  # the reference's default
    _, lead = await api(
        hub,
        "POST",
        "/api/v1/agents",
        {"name": "Lead", "board_id": board["id"], "is_board_lead": True},
    )
    _, worker = await api(
        hub, "POST", "/api/v1/agents", {"name": "Worker", "board_id": board["id"]}
    )
    _, task = await api(
        hub,
        "POST",
        f"/api/v1/boards/{board['id']}/tasks",
        {"title": "Ship the release notes", "assigned_agent_id": worker["id"]},
    )
    async with (
        connected_sidecar(hub, tmp_path, gateway["id"], workspaces="ws") as (sidecar, _),
        SseListener(hub, f"/api/v1/boards/{board['id']}/approvals/stream") as sse,
    ):
        for agent in (lead, worker):
            await wait_for(lambda a=agent: _applied(hub, a["id"]), what="agents applied")
        url = sidecar.agent_api_url
        lead_token, worker_token = (
            token_of(tmp_path / "ws", lead),
            token_of(tmp_path / "ws", worker),
        )
        task_path = f"/api/v1/agent/boards/{board['id']}/tasks/{task['id']}"
        approvals_path = f"/api/v1/agent/boards/{board['id']}/approvals"
        lead_ws = tmp_path / "ws" / f"workspace-{lead['gateway_agent_id']}"
        assert "task_ids" in (lead_ws / "APPROVALS.md").read_text()
        assert not (
            tmp_path / "ws" / f"workspace-{worker['gateway_agent_id']}" / "APPROVALS.md"
        ).exists()

        status, _ = await agent_call(
            url, worker_token, "PATCH", task_path, {"status": "in_progress"}
        )
        assert status == 200
        status, body = await agent_call(url, worker_token, "PATCH", task_path, {"status": "done"})
        assert status == 409, body
        assert "approved approval" in body["detail"] and "ask your lead" in body["detail"]
        status, body = await agent_call(
            url,
            worker_token,
            "POST",
            approvals_path,
            {"action_type": "mark_done", "task_ids": [task["id"]]},
        )
        assert status == 403 and "only the board lead" in body["detail"]

        request = {
            "action_type": "mark_done",
            "payload": {"summary": "notes published", "evidence": "https://example.org/notes"},
            "confidence": 82,
            "rubric_scores": {"correctness": 90, "risk": 15},
            "task_ids": [task["id"]],
        }
        status, approval = await agent_call(url, lead_token, "POST", approvals_path, request)
        assert status == 201, approval
        assert approval["status"] == "pending" and approval["agent_id"] == lead["id"]
        assert approval["task_ids"] == [task["id"]] and approval["confidence"] == 82
        requested = await sse.wait(lambda e: e.data["kind"] == "approval.requested", "requested")
        assert requested.data["approval"]["id"] == approval["id"]

        status, listed = await api(
            hub, "GET", f"/api/v1/boards/{board['id']}/approvals?status=pending"
        )
        assert [a["id"] for a in listed["items"]] == [approval["id"]]
        status, resolved = await api(
            hub,
            "PATCH",
            f"/api/v1/boards/{board['id']}/approvals/{approval['id']}",
            {"status": "approved", "reason": "Looks right."},
        )
        assert status == 200 and resolved["status"] == "approved"
        assert resolved["resolved_by"] == "admin" and resolved["resolved_at"]
        (told,) = await messages_to(hub, lead["gateway_agent_id"])
        assert "was approved" in told and "Looks right." in told and task["id"] in told
        await sse.wait(lambda e: e.data["kind"] == "approval.resolved", "resolved live")
        status, body = await api(
            hub,
            "PATCH",
            f"/api/v1/boards/{board['id']}/approvals/{approval['id']}",
            {"status": "rejected"},
        )
        assert status == 409 and "already approved" in body["detail"]

        status, done = await agent_call(url, worker_token, "PATCH", task_path, {"status": "done"})
        assert status == 200 and done["status"] == "done"
        status, seen = await agent_call(url, worker_token, "GET", approvals_path)
        assert status == 200 and seen["items"][0]["status"] == "approved"

        # While an approval naming a task is pending, a board can freeze its status.
        await api(
            hub,
            "PATCH",
            f"/api/v1/boards/{board['id']}",
            {"block_status_changes_with_pending_approval": True},
        )
        _, second = await api(
            hub,
            "POST",
            f"/api/v1/boards/{board['id']}/tasks",
            {"title": "Budget", "assigned_agent_id": worker["id"]},
        )
        await agent_call(
            url,
            lead_token,
            "POST",
            approvals_path,
            {"action_type": "spend", "task_ids": [second["id"]]},
        )
        status, body = await agent_call(
            url,
            worker_token,
            "PATCH",
            f"/api/v1/agent/boards/{board['id']}/tasks/{second['id']}",
            {"status": "in_progress"},
        )
        assert status == 409 and "pending" in body["detail"]
        status, body = await agent_call(
            url, lead_token, "POST", approvals_path, {"action_type": "x", "task_ids": ["nope"]}
        )
        assert status == 422 and "task_ids" in body["detail"]

    status, page = await api(hub, "GET", f"/api/v1/activity?kind=approval.&board_id={board['id']}")
    summaries = [i["summary"] for i in page["items"]]
    assert "approval mark_done approved" in summaries


async def test_rejection_tells_the_lead_not_to_act(hub: Hub, tmp_path: Path) -> None:
    gateway = await gateway_with_root(hub, tmp_path / "ws")
    board = await board_on(hub, gateway["id"])
    _, lead = await api(
        hub,
        "POST",
        "/api/v1/agents",
        {"name": "Lead", "board_id": board["id"], "is_board_lead": True},
    )
    async with connected_sidecar(hub, tmp_path, gateway["id"], workspaces="ws") as (sidecar, _):
        await wait_for(lambda: _applied(hub, lead["id"]), what="lead applied")
        status, approval = await agent_call(
            sidecar.agent_api_url,
            token_of(tmp_path / "ws", lead),
            "POST",
            f"/api/v1/agent/boards/{board['id']}/approvals",
            {"action_type": "deploy", "payload": {"target": "prod"}},
        )
        assert status == 201
        status, _ = await api(
            hub,
            "PATCH",
            f"/api/v1/boards/{board['id']}/approvals/{approval['id']}",
            {"status": "rejected", "reason": "Not on a Friday."},
        )
        (told,) = await messages_to(hub, lead["gateway_agent_id"])
        assert "was rejected" in told and "Do not carry it out" in told
        # The message reaches the gateway as a wake of the lead's session.
        await wait_for(
            lambda: _delivered(hub, lead["gateway_agent_id"]), what="the outcome delivered"
        )


async def _delivered(hub: Hub, gateway_agent_id: str) -> bool:
    rows: list[Any] = await hub.db.read(
        lambda conn: conn.execute(
            "SELECT outcome FROM commands WHERE agent_id = ? AND kind = 'wake_agent'",
            (gateway_agent_id,),
        ).fetchall()
    )
    return any(r[0] == "APPLIED" for r in rows)
