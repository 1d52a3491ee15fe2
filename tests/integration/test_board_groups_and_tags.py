"""Board groups with their one bulk call (a heartbeat cadence on every agent of the group),
and tags on tasks, through a real hub and sidecar."""

from __future__ import annotations

from pathlib import Path

from hub.app import Hub
from tests.integration.test_documented_calls import (
    MC_AGENT,
    _applied,
    agent_call,
    gateway_with_root,
    token_of,
)
from tests.support import api, connected_sidecar, wait_for


async def test_a_group_heartbeat_reaches_every_agent_of_the_groups_boards(
    hub: Hub, tmp_path: Path
) -> None:
    gateway = await gateway_with_root(hub, tmp_path / "ws")
    status, group = await api(hub, "POST", "/api/v1/board-groups", {"name": "Platform"})
    assert status == 201 and group["board_ids"] == []
    boards = []
    for name in ("Infra", "Data"):
        status, board = await api(
            hub,
            "POST",
            "/api/v1/boards",
            {"name": name, "gateway_id": gateway["id"], "board_group_id": group["id"]},
        )
        assert status == 201 and board["board_group_id"] == group["id"]
        boards.append(board)
    _, outside = await api(
        hub, "POST", "/api/v1/boards", {"name": "Sales", "gateway_id": gateway["id"]}
    )
    workers = []
    for board in (*boards, outside):
        _, worker = await api(hub, "POST", "/api/v1/agents", {**MC_AGENT, "board_id": board["id"]})
        workers.append(worker)
    _, lead = await api(
        hub,
        "POST",
        "/api/v1/agents",
        {"name": "Lead", "board_id": boards[0]["id"], "is_board_lead": True},
    )
    status, listed = await api(hub, "GET", f"/api/v1/boards?board_group_id={group['id']}")
    assert {b["id"] for b in listed["items"]} == {b["id"] for b in boards}

    async with connected_sidecar(hub, tmp_path, gateway["id"], workspaces="ws") as (_, recording):
        for agent in (*workers, lead):
            await wait_for(lambda a=agent: _applied(hub, a["id"]), what="agents applied")
        before = {}
        for agent in workers:
            _, read = await api(hub, "GET", f"/api/v1/agents/{agent['id']}")
            before[agent["id"]] = read["lifecycle_generation"]
        status, result = await api(
            hub, "POST", f"/api/v1/board-groups/{group['id']}/heartbeat", {"every": "15m"}
        )
        assert status == 200, result
        assert set(result["updated_agent_ids"]) == {workers[0]["id"], workers[1]["id"]}
        assert result["failed_agent_ids"] == [] and result["requested"]["intervalSeconds"] == 900
        for agent in workers[:2]:
            _, read = await api(hub, "GET", f"/api/v1/agents/{agent['id']}")
            assert read["heartbeat_config"]["every"] == "15m"
            assert read["lifecycle_generation"] == before[agent["id"]] + 1
        _, untouched = await api(hub, "GET", f"/api/v1/agents/{workers[2]['id']}")
        assert untouched["heartbeat_config"]["every"] == "5m"
        assert untouched["lifecycle_generation"] == before[workers[2]["id"]]
        await wait_for(
            lambda: ("set_heartbeat", workers[0]["gateway_agent_id"], 900) in recording.calls,
            what="the new cadence applied on the gateway",
        )
        status, result = await api(
            hub,
            "POST",
            f"/api/v1/board-groups/{group['id']}/heartbeat",
            {"enabled": True, "intervalSeconds": 1800, "include_board_leads": True},
        )
        assert lead["id"] in result["updated_agent_ids"] and len(result["updated_agent_ids"]) == 3

    status, body = await api(hub, "POST", "/api/v1/board-groups/nope/heartbeat", {"every": "5m"})
    assert status == 404
    status, body = await api(
        hub,
        "POST",
        "/api/v1/boards",
        {"name": "X", "gateway_id": gateway["id"], "board_group_id": "nope"},
    )
    assert status == 422 and "board_group_id" in body["detail"]
    status, _ = await api(hub, "DELETE", f"/api/v1/board-groups/{group['id']}")
    assert status == 200
    _, board = await api(hub, "GET", f"/api/v1/boards/{boards[0]['id']}")
    assert board["board_group_id"] is None
    status, page = await api(hub, "GET", "/api/v1/activity?kind=board_group.heartbeat.applied")
    assert page["items"][0]["summary"] == "group heartbeat set to 30m on 3 agent(s)"


async def test_tasks_carry_tags_that_agents_see(hub: Hub, tmp_path: Path) -> None:
    gateway = await gateway_with_root(hub, tmp_path / "ws")
    _, board = await api(
        hub, "POST", "/api/v1/boards", {"name": "Ops", "gateway_id": gateway["id"]}
    )
    tasks = f"/api/v1/boards/{board['id']}/tasks"
    status, first = await api(
        hub, "POST", tasks, {"title": "Patch nodes", "tags": ["infra", "urgent"]}
    )
    assert status == 201 and first["tags"] == ["infra", "urgent"]
    _, second = await api(hub, "POST", tasks, {"title": "Docs", "tags": ["docs"]})
    status, urgent = await api(hub, "GET", f"{tasks}?tag=urgent")
    assert [t["id"] for t in urgent["items"]] == [first["id"]]
    status, changed = await api(
        hub, "PATCH", f"{tasks}/{second['id']}", {"tags": ["docs", "infra"]}
    )
    assert status == 200 and changed["tags"] == ["docs", "infra"]
    status, counted = await api(hub, "GET", f"/api/v1/boards/{board['id']}/tags")
    assert counted["items"] == [
        {"tag": "docs", "tasks": 1},
        {"tag": "infra", "tasks": 2},
        {"tag": "urgent", "tasks": 1},
    ]
    for bad in (["has space"], ["x" * 65], [f"t{i}" for i in range(21)]):
        status, _ = await api(hub, "POST", tasks, {"title": "Bad", "tags": bad})
        assert status == 422
    status, _ = await api(hub, "PATCH", f"{tasks}/{second['id']}", {"tags": None})
    assert status == 422

    _, agent = await api(hub, "POST", "/api/v1/agents", {**MC_AGENT, "board_id": board["id"]})
    async with connected_sidecar(hub, tmp_path, gateway["id"], workspaces="ws") as (sidecar, _):
        await wait_for(lambda: _applied(hub, agent["id"]), what="agent applied")
        token = token_of(tmp_path / "ws", agent)
        status, seen = await agent_call(
            sidecar.agent_api_url, token, "GET", f"/api/v1/agent/boards/{board['id']}/tags"
        )
        assert status == 200 and [t["tag"] for t in seen["items"]] == ["docs", "infra", "urgent"]
        status, infra = await agent_call(
            sidecar.agent_api_url,
            token,
            "GET",
            f"/api/v1/agent/boards/{board['id']}/tasks?tag=infra",
        )
        assert {t["id"] for t in infra["items"]} == {first["id"], second["id"]}
