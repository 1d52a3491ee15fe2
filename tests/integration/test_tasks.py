"""Board tasks and comments, admin side, on a real hub over loopback HTTP and SQLite."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hub.app import Hub
from tests.integration.board_setup import (
    add_agent,
    add_board,
    add_gateway,
    call,
)
from tests.support import api, connected_sidecar, wait_for


def tasks_path(board_id: str, suffix: str = "") -> str:
    return f"/api/v1/boards/{board_id}/tasks{suffix}"


async def new_task(hub: Hub, board_id: str, **fields: Any) -> dict[str, Any]:
    status, task = await api(hub, "POST", tasks_path(board_id), {"title": "T", **fields})
    assert status == 201, task
    return task


def names_field(body: dict[str, Any], field: str) -> bool:
    return field in json.dumps(body["detail"])


@pytest.fixture
async def board(hub: Hub) -> str:
    return await add_board(hub, await add_gateway(hub))


async def test_task_crud_round_trip(hub: Hub, board: str) -> None:
    task = await new_task(
        hub,
        board,
        title="  Write the report ",
        description="quarterly",
        priority="high",
        due_at="2030-01-02T03:04:05",
    )
    assert task["title"] == "Write the report"
    assert task["status"] == "inbox" and task["in_progress_at"] is None
    assert task["due_at"].startswith("2030-01-02T03:04:05")  # no offset given: UTC
    assert task["board_id"] == board and task["created_by"] == "admin"

    status, got = await api(hub, "GET", tasks_path(board, f"/{task['id']}"))
    assert status == 200 and got == task

    status, patched = await api(
        hub, "PATCH", tasks_path(board, f"/{task['id']}"), {"title": "Renamed", "due_at": None}
    )
    assert status == 200
    assert patched["title"] == "Renamed" and patched["due_at"] is None
    assert patched["description"] == "quarterly"  # fields not sent do not change

    status, _ = await api(
        hub, "POST", tasks_path(board, f"/{task['id']}/comments"), {"message": "note"}
    )
    assert status == 201
    status, body = await api(hub, "DELETE", tasks_path(board, f"/{task['id']}"))
    assert status == 200 and body == {"ok": True}
    status, body = await api(hub, "GET", tasks_path(board, f"/{task['id']}"))
    assert status == 404 and body["detail"] == "task not found on this board"
    comments = await hub.db.read(
        lambda conn: conn.execute("SELECT COUNT(*) FROM task_comments").fetchone()[0]
    )
    assert comments == 0  # deleted with the task
    status, _ = await api(hub, "DELETE", tasks_path(board, f"/{task['id']}"))
    assert status == 404


async def test_list_filters_by_status_and_pages(hub: Hub, board: str) -> None:
    for index, state in enumerate(["inbox", "review", "review", "done", "review"]):
        await new_task(hub, board, title=f"t{index}", status=state)
    other = await add_board(hub, (await hub.db.read(_any_gateway)))
    await new_task(hub, other, status="review")

    status, page = await api(hub, "GET", tasks_path(board, "?status=review&limit=2&offset=1"))
    assert status == 200
    assert page["total"] == 3 and page["limit"] == 2 and page["offset"] == 1
    assert [t["title"] for t in page["items"]] == ["t2", "t4"]
    status, page = await api(hub, "GET", tasks_path(board))
    assert page["total"] == 5 and {t["board_id"] for t in page["items"]} == {board}

    status, body = await api(hub, "GET", tasks_path(board, "?status=waiting"))
    assert status == 422 and names_field(body, "status")
    status, body = await api(hub, "GET", tasks_path(board, "?limit=0"))
    assert status == 422 and names_field(body, "limit")


def _any_gateway(conn: Any) -> str:
    return conn.execute("SELECT id FROM gateways LIMIT 1").fetchone()[0]


async def test_entering_in_progress_sets_in_progress_at(hub: Hub, board: str) -> None:
    task = await new_task(hub, board)
    path = tasks_path(board, f"/{task['id']}")
    status, started = await api(hub, "PATCH", path, {"status": "in_progress"})
    assert status == 200 and started["in_progress_at"] is not None
    _, again = await api(hub, "PATCH", path, {"status": "in_progress", "title": "x"})
    assert again["in_progress_at"] == started["in_progress_at"]  # not re-entered
    _, review = await api(hub, "PATCH", path, {"status": "review"})
    assert review["status"] == "review" and review["in_progress_at"] == started["in_progress_at"]
    created_started = await new_task(hub, board, status="in_progress")
    assert created_started["in_progress_at"] is not None


async def test_assignment_only_to_an_agent_of_the_same_board(hub: Hub) -> None:
    gateway = await add_gateway(hub)
    board, elsewhere = await add_board(hub, gateway), await add_board(hub, gateway)
    ours = await add_agent(hub, gateway_id=gateway, board_id=board)
    theirs = await add_agent(hub, gateway_id=gateway, board_id=elsewhere)

    status, body = await api(
        hub, "POST", tasks_path(board), {"title": "T", "assigned_agent_id": theirs.id}
    )
    assert status == 422 and names_field(body, "assigned_agent_id")
    assert "not on board" in json.dumps(body["detail"])
    status, body = await api(
        hub, "POST", tasks_path(board), {"title": "T", "assigned_agent_id": "no-such-agent"}
    )
    assert status == 422 and names_field(body, "assigned_agent_id")

    task = await new_task(hub, board, assigned_agent_id=ours.id)
    assert task["assigned_agent_id"] == ours.id
    path = tasks_path(board, f"/{task['id']}")
    status, body = await api(hub, "PATCH", path, {"assigned_agent_id": theirs.id})
    assert status == 422 and names_field(body, "assigned_agent_id")
    status, body = await api(hub, "PATCH", path, {"assigned_agent_id": None})
    assert status == 200 and body["assigned_agent_id"] is None
    status, page = await api(hub, "GET", tasks_path(board, f"?assigned_agent_id={ours.id}"))
    assert page["total"] == 0


@pytest.mark.parametrize(
    ("method", "body", "field"),
    [
        ("POST", {}, "title"),
        ("POST", {"title": "   "}, "title"),
        ("POST", {"title": "T", "bogus": 1}, "bogus"),
        ("POST", {"title": "T", "status": "blocked"}, "status"),
        ("POST", {"title": "T", "priority": "whenever"}, "priority"),
        ("POST", {"title": "T", "due_at": "next tuesday"}, "due_at"),
        ("POST", {"title": "T", "due_at": "1969-07-20T20:17:00Z"}, "due_at"),
        ("POST", {"title": "x" * 501}, "title"),
        ("PATCH", {"title": None}, "title"),
        ("PATCH", {"status": None}, "status"),
        ("PATCH", {"status": "archived"}, "status"),
        ("PATCH", {"created_by": "me"}, "created_by"),
    ],
)
async def test_validation_errors_name_the_field(
    hub: Hub, board: str, method: str, body: dict[str, Any], field: str
) -> None:
    path = tasks_path(board)
    if method == "PATCH":
        path = tasks_path(board, f"/{(await new_task(hub, board))['id']}")
    status, answer = await api(hub, method, path, body)
    assert status == 422, answer
    assert names_field(answer, field)
    assert answer["request_id"]


async def test_unknown_board_or_task_is_404(hub: Hub, board: str) -> None:
    other = await add_board(hub, await hub.db.read(_any_gateway))
    task = await new_task(hub, other)
    for method, path, body in [
        ("GET", tasks_path("no-such-board"), None),
        ("POST", tasks_path("no-such-board"), {"title": "T"}),
        ("GET", tasks_path(board, "/no-such-task"), None),
        ("GET", tasks_path(board, f"/{task['id']}"), None),  # a task of another board
        ("PATCH", tasks_path(board, f"/{task['id']}"), {"title": "x"}),
        ("DELETE", tasks_path(board, f"/{task['id']}"), None),
        ("GET", tasks_path(board, f"/{task['id']}/comments"), None),
        ("POST", tasks_path(board, f"/{task['id']}/comments"), {"message": "hi"}),
    ]:
        status, answer = await api(hub, method, path, body)
        assert status == 404, (method, path, answer)
        assert "not found" in answer["detail"]


async def test_comments_are_listed_oldest_first_and_paged(hub: Hub, board: str) -> None:
    task = await new_task(hub, board)
    path = tasks_path(board, f"/{task['id']}/comments")
    for message in ("first", "second", "third"):
        status, comment = await api(hub, "POST", path, {"message": message})
        assert status == 201
        assert comment["author_kind"] == "user" and comment["task_id"] == task["id"]
    status, page = await api(hub, "GET", path + "?limit=2")
    assert status == 200 and page["total"] == 3
    assert [c["message"] for c in page["items"]] == ["first", "second"]
    _, rest = await api(hub, "GET", path + "?offset=2")
    assert [c["message"] for c in rest["items"]] == ["third"]
    for body, field in (({"message": ""}, "message"), ({}, "message"), ({"text": "x"}, "text")):
        status, answer = await api(hub, "POST", path, body)
        assert status == 422 and names_field(answer, field)


async def test_task_routes_need_the_admin_token(hub: Hub, board: str) -> None:
    task = await new_task(hub, board)
    agent = await add_agent(hub, gateway_id=await hub.db.read(_any_gateway), board_id=board)
    for headers in ({}, {"Authorization": "Bearer not-the-admin-token"}, agent.headers):
        status, body, _ = await call(
            hub, "GET", tasks_path(board, f"/{task['id']}"), headers=headers
        )
        assert status == 401 and body["detail"]


async def test_deleting_an_agent_unassigns_its_tasks(hub: Hub, tmp_path: Path) -> None:
    gateway = "gw-tasks"
    async with connected_sidecar(hub, tmp_path, gateway) as (_, recording):
        board = await add_board(hub, gateway)
        status, leaving = await api(
            hub, "POST", "/api/v1/agents", {"name": "W1", "board_id": board}
        )
        assert status == 201, leaving
        status, staying = await api(
            hub, "POST", "/api/v1/agents", {"name": "W2", "board_id": board}
        )
        assert status == 201, staying
        working = await new_task(hub, board, assigned_agent_id=leaving["id"], status="in_progress")
        reviewed = await new_task(hub, board, assigned_agent_id=leaving["id"], status="review")
        untouched = await new_task(
            hub, board, assigned_agent_id=staying["id"], status="in_progress"
        )

        status, _ = await api(hub, "DELETE", f"/api/v1/agents/{leaving['id']}")
        assert status == 202

        async def gone() -> bool:
            code, _ = await api(hub, "GET", f"/api/v1/agents/{leaving['id']}")
            return code == 404

        await wait_for(gone, what="agent row deleted after the sidecar removed it")
        assert recording.count("remove_agent") == 1

    _, task = await api(hub, "GET", tasks_path(board, f"/{working['id']}"))
    assert task["assigned_agent_id"] is None and task["status"] == "inbox"
    _, task = await api(hub, "GET", tasks_path(board, f"/{reviewed['id']}"))
    assert task["assigned_agent_id"] is None and task["status"] == "review"
    _, task = await api(hub, "GET", tasks_path(board, f"/{untouched['id']}"))
    assert task["assigned_agent_id"] == staying["id"] and task["status"] == "in_progress"
    events = await hub.store.events(kind="agent.tasks.unassigned")
    assert len(events) == 1
