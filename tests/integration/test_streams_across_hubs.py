"""Live streams across hubs on one PostgreSQL: an agent changed through hub A (created,
renamed, deleted), an event logged and a memory note added on hub A show up on streams
opened on hub B, and hub B's dashboard hears of links opened on A and of rollout steps.
The feeds (activity, memory) see every hub's rows once, in id order, whichever hub
commits first."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

from hub.app import Hub
from hub.fleet.driver import RolloutSpec
from hub.memory import add_memory_in
from sidecar.app import Sidecar
from tests.integration.multi_hub_setup import add_gateway_and_board, hubs
from tests.support import RecordingGateway, SseListener, api, fast_backoff, sidecar_config


def agent_event(agent_id: str, name: str | None = None, status: str | None = None) -> Any:
    def matches(event: Any) -> bool:
        view = event.data.get("agent", {})
        return (
            event.event == "agent"
            and view.get("id") == agent_id
            and (name is None or view.get("name") == name)
            and (status is None or view.get("status") == status)
        )

    return matches


async def test_an_agent_changed_through_one_hub_streams_live_on_another(
    tmp_path: Path,
    shared_database: str,
) -> None:
    async with hubs(tmp_path, shared_database, 2) as (a, b):
        board_id = await add_gateway_and_board(a)
        async with SseListener(b, f"/api/v1/agents/stream?board_id={board_id}") as agents:
            assert agents.status == 200
            status, agent = await api(
                a, "POST", "/api/v1/agents", {"name": "Scout", "board_id": board_id}
            )
            assert status == 201, agent
            await agents.wait(agent_event(agent["id"]), "the new agent on hub B's stream")
            status, renamed = await api(
                a, "PATCH", f"/api/v1/agents/{agent['id']}", {"name": "Scout Two"}
            )
            assert status == 200, renamed
            await agents.wait(agent_event(agent["id"], name="Scout Two"), "the rename on B")
            status, _ = await api(a, "DELETE", f"/api/v1/agents/{agent['id']}")
            assert status in (200, 202, 204)
            await agents.wait(
                agent_event(agent["id"], status="deleting"), "the deletion on hub B's stream"
            )


async def test_an_event_logged_on_one_hub_streams_live_on_anothers_activity_stream(
    tmp_path: Path,
    shared_database: str,
) -> None:
    async with hubs(tmp_path, shared_database, 2) as (a, b):
        board_id = await add_gateway_and_board(a)
        hub: Hub = b
        async with SseListener(hub, f"/api/v1/activity/stream?board_id={board_id}") as sse:
            status, task = await api(
                a, "POST", f"/api/v1/boards/{board_id}/tasks", {"title": "Across"}
            )
            assert status == 201, task
            seen = await sse.wait(
                lambda e: e.data["kind"] == "task.created", "task.created on hub B"
            )
            assert seen.data["summary"] == "task 'Across' created"
            assert int(seen.id or 0) == seen.data["id"]


async def test_a_memory_note_added_through_one_hub_streams_live_on_another(
    tmp_path: Path,
    shared_database: str,
) -> None:
    async with hubs(tmp_path, shared_database, 2) as (a, b):
        board_id = await add_gateway_and_board(a)
        async with SseListener(b, f"/api/v1/boards/{board_id}/memory/stream") as sse:
            status, note = await api(
                a, "POST", f"/api/v1/boards/{board_id}/memory", {"content": "blue cluster"}
            )
            assert status == 201, note
            seen = await sse.wait(lambda e: e.data.get("id") == note["id"], "the note on B")
            assert seen.data["content"] == "blue cluster"
            assert int(seen.id or 0) == note["id"]


async def test_the_dashboard_bus_on_another_hub_hears_of_links_and_rollout_steps(
    tmp_path: Path,
    shared_database: str,
) -> None:
    async with hubs(tmp_path, shared_database, 2) as (a, b):
        heard = b.events.subscribe(None, frozenset({"gateway", "rollout"}))
        assert a.addresses is not None
        config = sidecar_config(tmp_path / "sc", a.addresses.link, gateway_id="gw-dash")
        sidecar = Sidecar(config, gateway=RecordingGateway(), link_backoff=fast_backoff())
        await sidecar.start()
        try:
            event = await heard.next(10.0)
            assert event is not None and event.kind == "gateway", event
            assert event.data == {"id": "gw-dash", "connected": True}
        finally:
            await sidecar.stop()
        event = await heard.next(10.0)
        assert event is not None and event.data == {"id": "gw-dash", "connected": False}
        board_id = await add_gateway_and_board(a, "gw-roll")
        status, agent = await api(
            a, "POST", "/api/v1/agents", {"name": "Main", "board_id": board_id}
        )
        assert status == 201, agent
        created = await a.rollouts.create(
            RolloutSpec(
                selector="",
                change={"kind": "templates", "soul_template": "# Soul\n"},
                agents="all",
                canary=0,
                percentages=(100,),
                gateway_ids=("gw-roll",),
            )
        )
        event = await heard.next(10.0)
        assert event is not None and event.kind == "rollout", event
        assert event.data["rollout_id"] == created.id
        heard.close()


async def test_the_feeds_see_every_hubs_rows_once_in_id_order_whichever_commits_first(
    tmp_path: Path,
    shared_database: str,
) -> None:
    """Hub A adds a note and holds its transaction open; hub B adds one meanwhile. Both
    feeds' streams on B (and their replays) get both notes, once, in id order: B's row
    must not take a smaller id than A's and commit first (a stream past it would skip
    A's), nor reach B's streams ahead of A's."""
    async with hubs(tmp_path, shared_database, 2) as (a, b):
        board_id = await add_gateway_and_board(a)
        paths = {
            "activity": f"/api/v1/activity/stream?board_id={board_id}",
            "memory": f"/api/v1/boards/{board_id}/memory/stream",
        }
        async with (
            SseListener(b, paths["activity"]) as activity,
            SseListener(b, paths["memory"]) as memory,
        ):
            inserted = threading.Event()

            def slow_note(conn: Any) -> dict[str, Any]:  # on hub A's writer thread
                note = add_memory_in(
                    conn,
                    board_id,
                    content="from A, committed last",
                    author_kind="user",
                    author_id="admin",
                    now=time.time(),
                )
                inserted.set()
                time.sleep(1.0)  # hub B writes meanwhile
                return note

            held = asyncio.create_task(a.db.write(slow_note))
            assert await asyncio.to_thread(inserted.wait, 10.0)
            status, from_b = await api(
                b, "POST", f"/api/v1/boards/{board_id}/memory", {"content": "from B"}
            )
            assert status == 201, from_b
            from_a = await held
            assert from_a["id"] < from_b["id"], "ids rise in commit order"

            def both_notes(sse: SseListener, id_of: Any) -> Any:
                def seen(_event: Any) -> bool:
                    ids = {id_of(e) for e in sse.events}
                    return {from_a["id"], from_b["id"]} <= ids

                return seen

            def note_of_event(e: Any) -> Any:
                return e.data.get("detail", {}).get("memory_id")

            def note_id(e: Any) -> Any:
                return e.data.get("id")

            await activity.wait(both_notes(activity, note_of_event), "both notes' events")
            await memory.wait(both_notes(memory, note_id), "both notes")
            for sse in (activity, memory):
                ids = [int(e.id or 0) for e in sse.events]
                assert ids == sorted(set(ids)), f"each row once, in id order: {ids}"
        first = {
            "activity": min(int(e.id or 0) for e in activity.events),
            "memory": from_a["id"],
        }
        for name, path in paths.items():  # a reconnect replays both, once, in order
            headers = {"Last-Event-ID": str(first[name] - 1)}
            async with SseListener(b, path, headers) as replay:
                id_of = note_of_event if name == "activity" else note_id
                await replay.wait(both_notes(replay, id_of), f"both, replayed on {name}")
                ids = [int(e.id or 0) for e in replay.events]
                assert ids == sorted(set(ids)), f"{name} replay: {ids}"


async def test_one_unreadable_row_does_not_stop_the_feeds(
    tmp_path: Path,
    shared_database: str,
) -> None:
    async with hubs(tmp_path, shared_database, 1) as (hub,):
        board_id = await add_gateway_and_board(hub)
        async with SseListener(hub, f"/api/v1/boards/{board_id}/memory/stream") as memory:

            def bad_row(conn: Any) -> None:  # a detail that is not JSON
                conn.execute(
                    "INSERT INTO events (at, kind, board_id, detail) VALUES (?, ?, ?, ?)",
                    (time.time(), "board.memory.added", board_id, "{not json"),
                )

            await hub.db.write(bad_row)
            status, note = await api(
                hub, "POST", f"/api/v1/boards/{board_id}/memory", {"content": "after it"}
            )
            assert status == 201, note
            seen = await memory.wait(lambda e: e.data.get("id") == note["id"], "the next note")
            assert seen.data["content"] == "after it"
