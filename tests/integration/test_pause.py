"""Pause and resume through a real hub and sidecar: a paused agent's heartbeat job goes
off, it is never woken or marked offline, template sync skips it; resume restores the
job and wakes it. A board pauses and resumes its agents (also by Mission Control's
"/pause" and "/resume" notes)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hub.app import Hub
from hub.webhooks.rules import RetryPolicy
from tests.integration.test_documented_calls import (
    MC_AGENT,
    agent_call,
    board_on,
    gateway_with_root,
    token_of,
)
from tests.support import JumpClock, api, connected_sidecar, hub_config, wait_for

DEADLINE_S = 1.0


@pytest.fixture
def clock() -> JumpClock:
    return JumpClock()


@pytest.fixture
async def hub(tmp_path: Path, clock: JumpClock, database: str) -> AsyncIterator[Hub]:
    config = dataclasses.replace(
        hub_config(tmp_path / "hub", database=database), checkin_deadline_s=DEADLINE_S
    )
    instance = Hub(config, clock=clock, webhook_retry=RetryPolicy(initial_s=0.05, max_s=0.2))
    await instance.start()
    yield instance
    await instance.stop()


async def read(hub: Hub, agent_id: str) -> dict[str, Any]:
    status, agent = await api(hub, "GET", f"/api/v1/agents/{agent_id}")
    assert status == 200
    return agent


async def settled(hub: Hub, agent_id: str) -> dict[str, Any] | None:
    """Online with nothing outstanding (its last apply confirmed)."""
    agent = await read(hub, agent_id)
    done = agent["applied_generation"] == agent["lifecycle_generation"]
    return (
        agent if agent["status"] == "online" and done and not agent["checkin_deadline_at"] else None
    )


async def test_a_paused_agent_is_not_woken_nor_marked_offline_until_resumed(
    hub: Hub, tmp_path: Path, clock: JumpClock
) -> None:
    gateway = await gateway_with_root(hub, tmp_path / "ws")
    board = await board_on(hub, gateway["id"])
    _, agent = await api(
        hub,
        "POST",
        "/api/v1/agents",
        {**MC_AGENT, "board_id": board["id"], "heartbeat_config": {"every": "1s"}},
    )
    _, lead = await api(
        hub,
        "POST",
        "/api/v1/agents",
        {"name": "Lead", "board_id": board["id"], "is_board_lead": True},
    )
    gw_agent = agent["gateway_agent_id"]
    async with connected_sidecar(hub, tmp_path, gateway["id"], workspaces="ws") as (
        sidecar,
        recording,
    ):
        await wait_for(lambda: settled(hub, agent["id"]), what="online")
        await wait_for(lambda: settled(hub, lead["id"]), what="lead online")
        status, paused = await api(hub, "POST", f"/api/v1/agents/{agent['id']}/pause")
        assert status == 200 and paused["paused"] and paused["paused_by"] == "agent"
        await wait_for(
            lambda: ("set_heartbeat", gw_agent, 0) in recording.calls, what="heartbeat job off"
        )
        await wait_for(lambda: settled(hub, agent["id"]), what="the pause applied")
        wakes = recording.count("wake")

        # Far past twice its interval and every deadline: still online, not woken.
        clock.advance(600)
        await hub.reconciler.reconcile_due()
        await hub.reconciler.sweep_presence()
        still = await read(hub, agent["id"])
        assert still["status"] == "online" and still["paused"]
        assert recording.count("wake") == wakes

        # Nothing wakes it: a lead's nudge names the pause and the call that ends it.
        status, body = await agent_call(
            sidecar.agent_api_url,
            token_of(tmp_path / "ws", lead),
            "POST",
            f"/api/v1/agent/boards/{board['id']}/agents/{agent['id']}/nudge",
            {"message": "wake up"},
        )
        assert status == 409 and f"/api/v1/agents/{agent['id']}/resume" in body["detail"]
        status, _ = await api(hub, "POST", f"/api/v1/agents/{agent['id']}/pause")
        assert status == 200  # pausing again changes nothing
        status, job = await api(hub, "POST", f"/api/v1/gateways/{gateway['id']}/templates/sync")
        items = {i["agent_id"]: i for i in job["items"]}
        assert items[agent["id"]]["state"] == "skipped"
        assert "resume it" in items[agent["id"]]["message"] and job["skipped"] == 1

        status, resumed = await api(hub, "POST", f"/api/v1/agents/{agent['id']}/resume")
        assert status == 200 and not resumed["paused"]
        await wait_for(
            lambda: ("set_heartbeat", gw_agent, 1) in recording.calls[-10:],
            what="heartbeat job back",
        )
        await wait_for(lambda: recording.count("wake") > wakes, what="woken on resume")
        await wait_for(lambda: settled(hub, agent["id"]), what="checked in again")
    status, page = await api(hub, "GET", f"/api/v1/activity?agent_id={agent['id']}&kind=agent.")
    kinds = [i["kind"] for i in page["items"] if i["kind"] in ("agent.paused", "agent.resumed")]
    assert kinds == ["agent.resumed", "agent.paused"]


async def test_a_board_pauses_its_agents_and_the_reference_notes_work_too(
    hub: Hub, tmp_path: Path
) -> None:
    gateway = await gateway_with_root(hub, tmp_path / "ws")
    board = await board_on(hub, gateway["id"])
    _, first = await api(hub, "POST", "/api/v1/agents", {**MC_AGENT, "board_id": board["id"]})
    _, lead = await api(
        hub,
        "POST",
        "/api/v1/agents",
        {"name": "Lead", "board_id": board["id"], "is_board_lead": True},
    )
    async with connected_sidecar(hub, tmp_path, gateway["id"], workspaces="ws") as (_, recording):
        for agent in (first, lead):
            await wait_for(lambda a=agent: settled(hub, a["id"]), what="online")
        await api(hub, "POST", f"/api/v1/agents/{lead['id']}/pause")  # paused by itself
        status, paused = await api(hub, "POST", f"/api/v1/boards/{board['id']}/pause")
        assert status == 200 and paused["paused"] and paused["paused_at"]
        assert (await read(hub, first["id"]))["paused_by"] == "board"
        assert (await read(hub, lead["id"]))["paused_by"] == "agent"
        status, body = await api(hub, "POST", f"/api/v1/agents/{first['id']}/resume")
        assert status == 409 and f"/api/v1/boards/{board['id']}/resume" in body["detail"]

        # An agent made on a paused board starts paused: it is not woken.
        wakes = recording.count("wake")
        _, later = await api(
            hub, "POST", "/api/v1/agents", {**MC_AGENT, "name": "Later", "board_id": board["id"]}
        )
        assert later["paused"] and later["paused_by"] == "board"
        await wait_for(
            lambda: ("set_heartbeat", later["gateway_agent_id"], 0) in recording.calls,
            what="created with its heartbeat off",
        )
        assert recording.count("wake") == wakes
        status, body = await api(
            hub,
            "POST",
            f"/api/v1/boards/{board['id']}/tasks",
            {"title": "t", "assigned_agent_id": first["id"]},
        )

        # Mission Control's way: the board chat note "/resume".
        status, note = await api(
            hub, "POST", f"/api/v1/boards/{board['id']}/memory", {"content": "/resume"}
        )
        assert status == 201 and note["content"] == "/resume"
        _, board_now = await api(hub, "GET", f"/api/v1/boards/{board['id']}")
        assert not board_now["paused"]
        assert not (await read(hub, first["id"]))["paused"]
        assert not (await read(hub, later["id"]))["paused"]
        assert (await read(hub, lead["id"]))["paused"]  # paused by itself: stays paused
        await wait_for(lambda: recording.count("wake") >= wakes + 2, what="both woken")
        status, _ = await api(
            hub, "POST", f"/api/v1/boards/{board['id']}/memory", {"content": "/pause"}
        )
        _, board_now = await api(hub, "GET", f"/api/v1/boards/{board['id']}")
        assert board_now["paused"]
    status, _ = await api(hub, "POST", "/api/v1/boards/nope/pause")
    assert status == 404


async def payload(hub: Hub, board_id: str, webhook_id: str) -> dict[str, Any]:
    status, page = await api(
        hub, "GET", f"/api/v1/boards/{board_id}/webhooks/{webhook_id}/payloads"
    )
    assert status == 200, page
    return page["items"][0] if page["items"] else {}


async def test_a_webhook_payload_for_a_paused_agent_waits_for_its_resume(
    hub: Hub, tmp_path: Path, clock: JumpClock
) -> None:
    gateway = await gateway_with_root(hub, tmp_path / "ws")
    board = await board_on(hub, gateway["id"])
    _, agent = await api(hub, "POST", "/api/v1/agents", {**MC_AGENT, "board_id": board["id"]})
    status, webhook = await api(
        hub,
        "POST",
        f"/api/v1/boards/{board['id']}/webhooks",
        {"description": "Triage it", "agent_id": agent["id"]},
    )
    assert status == 201, webhook
    async with connected_sidecar(hub, tmp_path, gateway["id"], workspaces="ws") as (_, recording):
        await wait_for(lambda: settled(hub, agent["id"]), what="online")
        await api(hub, "POST", f"/api/v1/agents/{agent['id']}/pause")
        wakes = recording.count("wake")
        status, _ = await api(
            hub, "POST", f"/api/v1/boards/{board['id']}/webhooks/{webhook['id']}", {"issue": 7}
        )
        assert status == 202
        held = await wait_for(
            lambda: _held(hub, board["id"], webhook["id"]), what="the payload held"
        )
        assert held["delivery_attempts"] == 0 and held["delivered_at"] is None
        clock.advance(5)  # past the next look: still held, no attempt spent
        await wait_for(
            lambda: _held(hub, board["id"], webhook["id"], after=held["next_attempt_at"]),
            what="held again",
        )
        assert recording.count("wake") == wakes
        await api(hub, "POST", f"/api/v1/agents/{agent['id']}/resume")
        clock.advance(5)
        delivered = await wait_for(
            lambda: _delivered(hub, board["id"], webhook["id"]), what="delivered after resume"
        )
        assert delivered["delivery_attempts"] == 1


async def _held(
    hub: Hub, board_id: str, webhook_id: str, after: str | None = None
) -> dict[str, Any] | None:
    found = await payload(hub, board_id, webhook_id)
    if "paused" not in (found.get("last_error") or ""):
        return None
    return found if after is None or (found["next_attempt_at"] or "") > after else None


async def _delivered(hub: Hub, board_id: str, webhook_id: str) -> dict[str, Any] | None:
    found = await payload(hub, board_id, webhook_id)
    return found if found.get("delivered_at") else None
