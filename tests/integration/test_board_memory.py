"""Board memory through a real hub and sidecar: agents read and append it through their
local API, admins through the REST API, and a live stream resumes by Last-Event-ID."""

from __future__ import annotations

from pathlib import Path

from hub.app import Hub
from tests.integration.test_documented_calls import (
    MC_AGENT,
    _applied,
    agent_call,
    board_on,
    gateway_with_root,
    token_of,
)
from tests.support import SseListener, api, connected_sidecar, wait_for


async def test_agents_and_admins_share_a_boards_memory(hub: Hub, tmp_path: Path) -> None:
    gateway = await gateway_with_root(hub, tmp_path / "ws")
    board = await board_on(hub, gateway["id"])
    other = await board_on(hub, gateway["id"], "Other")
    _, agent = await api(hub, "POST", "/api/v1/agents", {**MC_AGENT, "board_id": board["id"]})
    _, stranger = await api(hub, "POST", "/api/v1/agents", {**MC_AGENT, "board_id": other["id"]})
    async with (
        connected_sidecar(hub, tmp_path, gateway["id"], workspaces="ws") as (sidecar, _),
        SseListener(hub, f"/api/v1/boards/{board['id']}/memory/stream") as sse,
    ):
        await wait_for(lambda: _applied(hub, agent["id"]), what="agent applied")
        await wait_for(lambda: _applied(hub, stranger["id"]), what="stranger applied")
        url, token = sidecar.agent_api_url, token_of(tmp_path / "ws", agent)
        path = f"/api/v1/agent/boards/{board['id']}/memory"

        status, note = await agent_call(
            url,
            token,
            "POST",
            path,
            {"content": "Staging uses the blue cluster.\nProd: green.", "tags": ["infra"]},
        )
        assert status == 201, note
        assert note["author_kind"] == "agent" and note["author_id"] == agent["id"]
        status, admin_note = await api(
            hub,
            "POST",
            f"/api/v1/boards/{board['id']}/memory",
            {"content": "Freeze on Fridays", "tags": ["policy"], "source": "ops handbook"},
        )
        assert status == 201 and admin_note["author_kind"] == "user"

        status, page = await agent_call(url, token, "GET", path)
        assert status == 200
        assert [n["content"] for n in page["items"]] == [
            "Freeze on Fridays",
            "Staging uses the blue cluster.\nProd: green.",
        ]
        status, tagged = await agent_call(url, token, "GET", path + "?tag=infra")
        assert [n["id"] for n in tagged["items"]] == [note["id"]]
        status, paged = await api(hub, "GET", f"/api/v1/boards/{board['id']}/memory?limit=1")
        assert paged["total"] == 2 and len(paged["items"]) == 1

        # Another board's agent may not read or write it.
        stranger_token = token_of(tmp_path / "ws", stranger)
        status, _ = await agent_call(url, stranger_token, "GET", path)
        assert status == 403
        status, _ = await agent_call(url, stranger_token, "POST", path, {"content": "x"})
        assert status == 403
        status, _ = await agent_call(url, token, "POST", path, {"content": "x", "tags": ["a b"]})
        assert status == 422

        await sse.wait(lambda e: e.data["id"] == admin_note["id"], "the admin's note live")
        assert [e.data["id"] for e in sse.events] == [note["id"], admin_note["id"]]
        assert all(e.event == "memory" for e in sse.events)

    # A stream resuming after the first note gets the second, then live ones.
    async with SseListener(
        hub, f"/api/v1/boards/{board['id']}/memory/stream", {"Last-Event-ID": str(note["id"])}
    ) as resumed:
        await resumed.wait(lambda e: e.data["id"] == admin_note["id"], "replayed")
        _, third = await api(
            hub, "POST", f"/api/v1/boards/{board['id']}/memory", {"content": "third"}
        )
        await resumed.wait(lambda e: e.data["id"] == third["id"], "live")
        assert [e.data["id"] for e in resumed.events] == [admin_note["id"], third["id"]]
    status, page = await api(hub, "GET", "/api/v1/activity?kind=board.memory.added")
    assert page["total"] == 3
    status, _ = await api(hub, "GET", "/api/v1/boards/nope/memory")
    assert status == 404
