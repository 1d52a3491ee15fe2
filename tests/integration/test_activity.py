"""The activity trail through a real hub and sidecar: what happened to agents and boards,
filtered and paged, and its live stream resuming by a durable id across a hub restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hub.app import Hub
from tests.integration.test_documented_calls import (
    MC_AGENT,
    _applied,
    board_on,
    gateway_with_root,
)
from tests.support import SseListener, api, connected_sidecar, running_hub, wait_for


async def kinds(hub: Hub, query: str = "") -> list[str]:
    status, page = await api(hub, "GET", f"/api/v1/activity?{query}")
    assert status == 200, page
    return [item["kind"] for item in page["items"]]


async def test_the_trail_tells_an_agents_life_and_filters_by_what_was_asked(
    hub: Hub, tmp_path: Path
) -> None:
    gateway = await gateway_with_root(hub, tmp_path / "ws")
    board = await board_on(hub, gateway["id"])
    other = await board_on(hub, gateway["id"], "Other")
    _, agent = await api(hub, "POST", "/api/v1/agents", {**MC_AGENT, "board_id": board["id"]})
    _, elsewhere = await api(hub, "POST", "/api/v1/agents", {**MC_AGENT, "board_id": other["id"]})
    _, task = await api(
        hub,
        "POST",
        f"/api/v1/boards/{board['id']}/tasks",
        {"title": "Rotate the certificates", "assigned_agent_id": agent["id"]},
    )
    async with connected_sidecar(hub, tmp_path, gateway["id"], workspaces="ws"):
        await wait_for(lambda: _applied(hub, agent["id"]), what="agent applied")
        await wait_for(
            lambda: _has(hub, f"agent_id={agent['id']}", "lifecycle.checkin.accepted"),
            what="the wake run's check-in in the trail",
        )
        await api(hub, "POST", f"/api/v1/agents/{agent['id']}/token/rotate", {"grace_s": 60})
        await api(
            hub,
            "PATCH",
            f"/api/v1/boards/{board['id']}/tasks/{task['id']}",
            {"status": "in_progress"},
        )
        for _ in range(3):  # heartbeats leave no rows
            await api(hub, "POST", f"/api/v1/agents/{agent['id']}/heartbeat", {})

    status, page = await api(hub, "GET", f"/api/v1/activity?agent_id={agent['id']}")
    assert status == 200
    by_kind = {item["kind"]: item for item in page["items"]}
    assert {
        "agent.created",
        "command.acked",
        "lifecycle.wake.delivered",
        "lifecycle.checkin.accepted",
        "agent.token.rotated",
    } <= set(by_kind)
    assert by_kind["command.acked"]["summary"].startswith("provisioned")
    assert by_kind["lifecycle.wake.delivered"]["summary"] == "wake sent (attempt 1)"
    assert "token rotated" in by_kind["agent.token.rotated"]["summary"]
    assert all(item["board_id"] == board["id"] for item in page["items"])
    ids = [item["id"] for item in page["items"]]
    assert ids == sorted(ids, reverse=True)  # newest first
    assert not [k for k in by_kind if "heartbeat" in k]

    board_kinds = await kinds(hub, f"board_id={board['id']}")
    assert "task.moved" in board_kinds and "task.created" in board_kinds
    status, moved = await api(hub, "GET", "/api/v1/activity?kind=task.moved")
    assert (
        moved["items"][0]["summary"] == "task 'Rotate the certificates' moved inbox → in_progress"
    )
    assert elsewhere["id"] not in {i["agent_id"] for i in moved["items"]}
    # The board of an event is found from its agent, also for the gateway's own ids.
    other_kinds = await kinds(hub, f"board_id={other['id']}")
    assert "agent.created" in other_kinds and "task.moved" not in other_kinds
    lifecycle = await kinds(hub, "kind=lifecycle.")
    assert lifecycle and all(k.startswith("lifecycle.") for k in lifecycle)
    # Bookkeeping only when asked for.
    assert "command.queued" not in await kinds(hub)
    assert "command.queued" in await kinds(hub, "include_internal=true")
    assert "command.queued" in await kinds(hub, "kind=command.queued")
    await wait_for(
        lambda: _has(hub, f"gateway_id={gateway['id']}", "gateway.disconnected"),
        what="the sidecar's stop in the gateway's trail",
    )
    assert {"gateway.created", "gateway.connected"} <= set(
        await kinds(hub, f"gateway_id={gateway['id']}")
    )

    # Paging and since.
    status, first = await api(hub, "GET", "/api/v1/activity?limit=2")
    status, second = await api(hub, "GET", "/api/v1/activity?limit=2&offset=2")
    assert first["total"] == second["total"] > 4
    assert first["items"][-1]["id"] > second["items"][0]["id"]
    middle = first["items"][-1]
    status, later = await api(hub, "GET", f"/api/v1/activity?since={middle['at']}")
    assert all(i["at"] > middle["at"] for i in later["items"])
    assert later["total"] < first["total"]
    status, _ = await api(hub, "GET", "/api/v1/activity?kind=Bad%20Kind")
    assert status == 422


async def _has(hub: Hub, query: str, kind: str) -> bool:
    return kind in await kinds(hub, query)


async def test_the_stream_resumes_by_last_event_id_across_a_hub_restart(
    tmp_path: Path, database: str
) -> None:
    data = tmp_path / "hub"
    async with running_hub(data, database=database) as hub:
        gateway = await gateway_with_root(hub)
        board = await board_on(hub, gateway["id"])
        async with SseListener(hub, f"/api/v1/activity/stream?board_id={board['id']}") as sse:
            _, task = await api(
                hub, "POST", f"/api/v1/boards/{board['id']}/tasks", {"title": "One"}
            )
            seen = await sse.wait(lambda e: e.data["kind"] == "task.created", "task.created live")
            assert seen.event == "activity" and seen.data["summary"] == "task 'One' created"
            assert int(seen.id or 0) == seen.data["id"]
            _, other = await api(
                hub, "POST", "/api/v1/boards", {"name": "B2", "gateway_id": gateway["id"]}
            )
            await api(hub, "POST", f"/api/v1/boards/{other['id']}/tasks", {"title": "Elsewhere"})
            await api(
                hub,
                "PATCH",
                f"/api/v1/boards/{board['id']}/tasks/{task['id']}",
                {"status": "review"},
            )
            await sse.wait(lambda e: e.data["kind"] == "task.moved", "task.moved live")
            assert all(e.data["board_id"] == board["id"] for e in sse.events)
        resume_from = seen.id
        # Missed while nobody listened, and across the restart:
        await api(
            hub, "PATCH", f"/api/v1/boards/{board['id']}/tasks/{task['id']}", {"status": "done"}
        )
    async with running_hub(data, database=database) as hub:
        await api(hub, "POST", f"/api/v1/boards/{board['id']}/tasks", {"title": "Two"})
        async with SseListener(
            hub,
            f"/api/v1/activity/stream?board_id={board['id']}",
            {"Last-Event-ID": str(resume_from)},
        ) as sse:
            await sse.wait(lambda e: e.data.get("detail", {}).get("title") == "Two", "replayed")
            replayed = [(e.data["kind"], e.data["detail"].get("to")) for e in sse.events]
            assert replayed == [
                ("task.moved", "review"),
                ("task.moved", "done"),
                ("task.created", None),
            ]
            ids = [int(e.id or 0) for e in sse.events]
            assert ids == sorted(ids) and ids[0] > int(resume_from or 0)
            await api(hub, "POST", f"/api/v1/boards/{board['id']}/tasks", {"title": "Three"})
            await sse.wait(lambda e: e.data["detail"].get("title") == "Three", "then live")
            assert len({e.id for e in sse.events}) == len(sse.events)  # nothing twice
        async with SseListener(
            hub, "/api/v1/activity/stream", {"Last-Event-ID": "not-a-number"}
        ) as bad:
            assert bad.status == 422


async def test_the_agent_stream_resumes_with_current_state_after_a_restart(
    tmp_path: Path,
    database: str,
) -> None:
    data = tmp_path / "hub"
    async with running_hub(data, database=database) as hub:
        gateway = await gateway_with_root(hub)
        board = await board_on(hub, gateway["id"])
        async with SseListener(hub, f"/api/v1/agents/stream?board_id={board['id']}") as sse:
            _, agent = await api(
                hub, "POST", "/api/v1/agents", {**MC_AGENT, "board_id": board["id"]}
            )
            first = await sse.wait(lambda e: e.data["agent"]["id"] == agent["id"], "pushed")
            # Resuming within the same run replays from the hub's ring.
            _, second = await api(
                hub,
                "POST",
                "/api/v1/agents",
                {**MC_AGENT, "name": "Second", "board_id": board["id"]},
            )
            await sse.wait(lambda e: e.data["agent"]["id"] == second["id"], "second pushed")
        async with SseListener(
            hub, f"/api/v1/agents/stream?board_id={board['id']}", {"Last-Event-ID": str(first.id)}
        ) as resumed:
            got = await resumed.wait(lambda e: e.data["agent"]["id"] == second["id"], "replayed")
            assert int(got.id or 0) > int(first.id or 0)
    async with (
        running_hub(data, database=database) as hub,
        SseListener(
            hub, f"/api/v1/agents/stream?board_id={board['id']}", {"Last-Event-ID": str(first.id)}
        ) as after_restart,
    ):
        await wait_for(lambda: len(after_restart.events) >= 2, what="current state sent")
        names = {e.data["agent"]["name"] for e in after_restart.events}
        assert names == {"DevOps Engineer", "Second"}
        snapshot_ids = {e.id for e in after_restart.events}
        assert len(snapshot_ids) == 1 and int(snapshot_ids.pop() or 0) > int(first.id or 0)


def _ids(events: list[Any]) -> list[int]:
    return [int(e.id) for e in events]
