"""The hub's agent-facing API over real HTTP on loopback: token auth in O(1), the board
guard (an agent reaches its own board; a main agent only its own gateway's boards), the
board's tasks under the board's rules, and heartbeats through the reconciler."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

import hub.api as hub_api
from hub.app import Hub
from tests.integration.board_setup import (
    BoardAgent,
    add_agent,
    add_board,
    add_gateway,
    call,
    token_file,
)
from tests.support import api, connected_sidecar, hub_config, wait_for

AGENT = "/api/v1/agent"


async def as_agent(
    hub: Hub, agent: BoardAgent, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    status, answer, headers = await call(hub, method, AGENT + path, body, headers=agent.headers)
    if status >= 400:
        assert answer["request_id"] == headers["X-Request-Id"]
    return status, answer


async def new_task(hub: Hub, board_id: str, **fields: Any) -> dict[str, Any]:
    status, task = await api(
        hub, "POST", f"/api/v1/boards/{board_id}/tasks", {"title": "T", **fields}
    )
    assert status == 201, task
    return task


def names_field(body: dict[str, Any], field: str) -> bool:
    return field in json.dumps(body["detail"])


async def test_healthz_says_who_the_agent_is_with_either_header(hub: Hub) -> None:
    gateway = await add_gateway(hub)
    board = await add_board(hub, gateway)
    lead = await add_agent(hub, gateway_id=gateway, board_id=board, kind="lead")
    expected = {
        "ok": True,
        "agent_id": lead.id,
        "board_id": board,
        "gateway_id": gateway,
        "status": "provisioning",
        "is_board_lead": True,
    }
    status, body = await as_agent(hub, lead, "GET", "/healthz")
    assert status == 200 and body == expected
    status, body, _ = await call(
        hub, "GET", AGENT + "/healthz", headers={"Authorization": f"Bearer {lead.token}"}
    )
    assert status == 200 and body == expected


async def test_missing_malformed_unknown_and_wrong_tokens_are_401_without_the_token(
    hub: Hub,
) -> None:
    gateway = await add_gateway(hub)
    agent = await add_agent(hub, gateway_id=gateway, board_id=await add_board(hub, gateway))
    token_id, secret = agent.token.split(".")
    forged_secret = ("A" if secret[0] != "A" else "B") + secret[1:]
    unknown = hub.keyring.mint().raw  # well formed, never stored
    attempts = [
        {},
        {"X-Agent-Token": ""},
        {"X-Agent-Token": "garbage"},
        {"X-Agent-Token": f"{token_id}.{forged_secret}"},
        {"X-Agent-Token": unknown},
        {"Authorization": f"Basic {agent.token}"},
        {"Authorization": "Bearer " + agent.token[:-1]},
    ]
    for headers in attempts:
        status, body, response_headers = await call(hub, "GET", AGENT + "/healthz", headers=headers)
        assert status == 401, headers
        assert set(body) == {"detail", "request_id"}
        assert body["request_id"] == response_headers["X-Request-Id"]
        assert "WWW-Authenticate" in response_headers
        for value in headers.values():
            if len(value) > 20:
                assert value.split(" ")[-1] not in json.dumps(body)
    for method, path in [("POST", "/heartbeat"), ("GET", "/boards"), ("GET", "/boards/x/tasks")]:
        status, _, _ = await call(hub, method, AGENT + path, {}, headers={"X-Agent-Token": unknown})
        assert status == 401


async def test_a_rotated_token_works_during_its_grace_and_is_401_after(hub: Hub) -> None:
    gateway = await add_gateway(hub)
    board = await add_board(hub, gateway)
    in_grace = await add_agent(hub, gateway_id=gateway, board_id=board, not_after=time.time() + 60)
    expired = await add_agent(hub, gateway_id=gateway, board_id=board, not_after=time.time() - 1)
    status, _ = await as_agent(hub, in_grace, "GET", "/healthz")
    assert status == 200
    status, body = await as_agent(hub, expired, "GET", "/healthz")
    assert status == 401 and expired.token not in json.dumps(body)


async def test_rotation_through_the_admin_api_keeps_the_old_token_for_the_grace(
    hub: Hub,
) -> None:
    gateway = await add_gateway(hub)
    agent = await add_agent(hub, gateway_id=gateway, board_id=await add_board(hub, gateway))
    await hub.provisioning.rotate_token(agent.id, grace_s=0.5)
    status, _ = await as_agent(hub, agent, "GET", "/healthz")
    assert status == 200

    async def refused() -> bool:
        code, _ = await as_agent(hub, agent, "GET", "/healthz")
        return code == 401

    await wait_for(refused, timeout_s=5, what="old token refused after its grace")


async def test_a_board_agent_reaches_only_its_own_board(hub: Hub) -> None:
    gateway = await add_gateway(hub)
    board_a = await add_board(hub, gateway, "Alpha")
    board_b = await add_board(hub, gateway, "Beta")
    worker = await add_agent(hub, gateway_id=gateway, board_id=board_a)
    task_b = await new_task(hub, board_b)

    status, page = await as_agent(hub, worker, "GET", "/boards")
    assert status == 200 and page["total"] == 1
    assert [b["id"] for b in page["items"]] == [board_a]
    status, board = await as_agent(hub, worker, "GET", f"/boards/{board_a}")
    assert status == 200 and board["name"] == "Alpha"
    assert board["require_approval_for_done"] is True  # the rules come with the board

    task_path = f"/boards/{board_b}/tasks/{task_b['id']}"
    for method, path, body in [
        ("GET", f"/boards/{board_b}", None),
        ("GET", "/boards/no-such-board", None),  # no existence oracle: also 403
        ("GET", f"/boards/{board_b}/tasks", None),
        ("PATCH", task_path, {"status": "in_progress"}),
        ("GET", task_path + "/comments", None),
        ("POST", task_path + "/comments", {"message": "hello"}),
    ]:
        status, answer = await as_agent(hub, worker, method, path, body)
        assert status == 403, (method, path, answer)
        assert board_b in answer["detail"] or "no-such-board" in answer["detail"]
    _, unchanged = await api(hub, "GET", f"/api/v1/boards/{board_b}/tasks/{task_b['id']}")
    assert unchanged["status"] == "inbox"
    _, comments = await api(hub, "GET", f"/api/v1/boards/{board_b}/tasks/{task_b['id']}/comments")
    assert comments["total"] == 0


async def test_a_main_agent_reaches_only_its_own_gateways_boards(hub: Hub) -> None:
    ours, theirs = await add_gateway(hub), await add_gateway(hub)
    our_boards = [await add_board(hub, ours, "One"), await add_board(hub, ours, "Two")]
    their_board = await add_board(hub, theirs, "Foreign")
    main = await add_agent(hub, gateway_id=ours, board_id=None, kind="main")
    their_task = await new_task(hub, their_board)
    our_task = await new_task(hub, our_boards[0])

    status, page = await as_agent(hub, main, "GET", "/boards")
    assert status == 200 and page["total"] == 2
    assert sorted(b["id"] for b in page["items"]) == sorted(our_boards)
    status, page = await as_agent(hub, main, "GET", "/boards?limit=1&offset=1")
    assert page["total"] == 2 and len(page["items"]) == 1
    status, health = await as_agent(hub, main, "GET", "/healthz")
    assert health["board_id"] is None and health["is_board_lead"] is False

    status, _ = await as_agent(hub, main, "GET", f"/boards/{our_boards[1]}")
    assert status == 200
    status, tasks = await as_agent(hub, main, "GET", f"/boards/{our_boards[0]}/tasks")
    assert status == 200 and [t["id"] for t in tasks["items"]] == [our_task["id"]]
    for path in (f"/boards/{their_board}", f"/boards/{their_board}/tasks"):
        status, answer = await as_agent(hub, main, "GET", path)
        assert status == 403, answer
    # Task changes belong to the board's own agents, even on the main agent's gateway.
    path = f"/boards/{our_boards[0]}/tasks/{our_task['id']}"
    status, answer = await as_agent(hub, main, "PATCH", path, {"status": "done"})
    assert status == 403 and "main agent" in answer["detail"]
    status, _ = await as_agent(hub, main, "POST", path + "/comments", {"message": "hi"})
    assert status == 403
    status, _ = await as_agent(
        hub, main, "PATCH", f"/boards/{their_board}/tasks/{their_task['id']}", {"status": "done"}
    )
    assert status == 403


async def test_a_worker_takes_up_a_task_and_comments_on_it(hub: Hub) -> None:
    gateway = await add_gateway(hub)
    board = await add_board(hub, gateway)
    worker = await add_agent(hub, gateway_id=gateway, board_id=board)
    other = await add_agent(hub, gateway_id=gateway, board_id=board)
    task = await new_task(hub, board)
    path = f"/boards/{board}/tasks/{task['id']}"

    status, taken = await as_agent(
        hub, worker, "PATCH", path, {"status": "in_progress", "comment": "on it"}
    )
    assert status == 200
    assert taken["assigned_agent_id"] == worker.id  # taking up a task claims it
    assert taken["in_progress_at"] is not None
    status, comment = await as_agent(hub, worker, "POST", path + "/comments", {"message": "50%"})
    assert status == 201
    assert comment["author_kind"] == "agent" and comment["author_id"] == worker.id
    status, comments = await as_agent(hub, worker, "GET", path + "/comments")
    assert status == 200 and [c["message"] for c in comments["items"]] == ["on it", "50%"]

    status, answer = await as_agent(hub, other, "PATCH", path, {"status": "review"})
    assert status == 403 and "assigned to another agent" in answer["detail"]
    status, answer = await as_agent(hub, worker, "PATCH", path, {"assigned_agent_id": other.id})
    assert status == 403 and "lead" in answer["detail"]
    status, listed = await as_agent(hub, worker, "GET", f"/boards/{board}/tasks?status=in_progress")
    assert status == 200 and listed["total"] == 1
    status, answer = await as_agent(hub, worker, "PATCH", f"/boards/{board}/tasks/nope", {})
    assert status == 404


async def test_the_lead_assigns_only_agents_of_its_board(hub: Hub) -> None:
    gateway = await add_gateway(hub)
    board, elsewhere = await add_board(hub, gateway), await add_board(hub, gateway)
    lead = await add_agent(hub, gateway_id=gateway, board_id=board, kind="lead")
    worker = await add_agent(hub, gateway_id=gateway, board_id=board)
    stranger = await add_agent(hub, gateway_id=gateway, board_id=elsewhere)
    task = await new_task(hub, board, assigned_agent_id=worker.id, status="in_progress")
    path = f"/boards/{board}/tasks/{task['id']}"

    status, answer = await as_agent(hub, lead, "PATCH", path, {"assigned_agent_id": stranger.id})
    assert status == 422 and names_field(answer, "assigned_agent_id")
    status, moved = await as_agent(
        hub, lead, "PATCH", path, {"assigned_agent_id": None, "status": "inbox"}
    )
    assert status == 200 and moved["assigned_agent_id"] is None and moved["status"] == "inbox"


@pytest.mark.parametrize(
    ("rule", "actor", "before", "body", "status", "needle"),
    [
        ("only_lead_can_change_status", "worker", "inbox", {"status": "in_progress"}, 403, "lead"),
        ("only_lead_can_change_status", "lead", "inbox", {"status": "in_progress"}, 200, ""),
        ("require_review_before_done", "worker", "in_progress", {"status": "done"}, 409, "review"),
        ("require_review_before_done", "worker", "review", {"status": "done"}, 200, ""),
        ("require_approval_for_done", "worker", "review", {"status": "done"}, 409, "approval"),
        ("require_approval_for_done", "lead", "review", {"status": "done"}, 409, "APPROVALS.md"),
        (
            "comment_required_for_review",
            "worker",
            "in_progress",
            {"status": "review"},
            422,
            "comment",
        ),
        (
            "comment_required_for_review",
            "worker",
            "in_progress",
            {"status": "review", "comment": "ready: see the report"},
            200,
            "",
        ),
    ],
)
async def test_board_rules_are_respected(
    hub: Hub,
    rule: str,
    actor: str,
    before: str,
    body: dict[str, Any],
    status: int,
    needle: str,
) -> None:
    gateway = await add_gateway(hub)
    # Only the rule under test: require_approval_for_done is on by default.
    board = await add_board(hub, gateway, **{"require_approval_for_done": 0, rule: 1})
    agent = await add_agent(hub, gateway_id=gateway, board_id=board, kind=actor)
    task = await new_task(hub, board, status=before)
    code, answer = await as_agent(hub, agent, "PATCH", f"/boards/{board}/tasks/{task['id']}", body)
    assert code == status, answer
    if status == 200:
        assert answer["status"] == body["status"]
    else:
        assert needle in json.dumps(answer["detail"])
        _, unchanged = await api(hub, "GET", f"/api/v1/boards/{board}/tasks/{task['id']}")
        assert unchanged["status"] == before


@pytest.mark.parametrize(
    ("method", "suffix", "body", "field"),
    [
        ("PATCH", "", {"status": "blocked"}, "status"),
        ("PATCH", "", {"status": None}, "status"),
        ("PATCH", "", {"title": "agents do not rename"}, "title"),
        ("PATCH", "", {"comment": ""}, "comment"),
        ("POST", "/comments", {"message": ""}, "message"),
        ("POST", "/comments", {"message": "x", "author_id": "someone"}, "author_id"),
    ],
)
async def test_agent_task_validation_errors_name_the_field(
    hub: Hub, method: str, suffix: str, body: dict[str, Any], field: str
) -> None:
    gateway = await add_gateway(hub)
    board = await add_board(hub, gateway)
    worker = await add_agent(hub, gateway_id=gateway, board_id=board)
    task = await new_task(hub, board)
    status, answer = await as_agent(
        hub, worker, method, f"/boards/{board}/tasks/{task['id']}{suffix}", body
    )
    assert status == 422 and names_field(answer, field), answer


async def test_heartbeat_checks_the_agent_in_through_the_reconciler(
    hub: Hub, tmp_path: Path
) -> None:
    gateway_id = "gw-agent-facing"
    async with connected_sidecar(hub, tmp_path, gateway_id) as (_, recording):
        recording.run_outcome = recording.run_outcome.ERROR  # only the heartbeat checks in
        board = await add_board(hub, gateway_id)
        other_board = await add_board(hub, gateway_id)
        status, created = await api(hub, "POST", "/api/v1/agents", {"name": "W", "board_id": board})
        assert status == 201, created
        path = token_file(tmp_path, created["gateway_agent_id"])
        await wait_for(path.exists, what="token file written by the sidecar")
        agent = BoardAgent(created["id"], board, gateway_id, "worker", path.read_text().strip())

        async def wake_sent() -> bool:
            _, row = await api(hub, "GET", f"/api/v1/agents/{agent.id}")
            return row["last_wake_sent_at"] is not None

        await wait_for(wake_sent, what="wake delivered")
        task = await new_task(hub, board)
        foreign = await new_task(hub, other_board)

        status, answer = await as_agent(
            hub, agent, "POST", "/heartbeat", {"current_task_id": foreign["id"]}
        )
        assert status == 422 and names_field(answer, "current_task_id")
        status, answer = await as_agent(hub, agent, "POST", "/heartbeat", {"status": "x" * 65})
        assert status == 422 and names_field(answer, "status")
        status, answer = await as_agent(hub, agent, "POST", "/heartbeat", {"mood": "great"})
        assert status == 422 and names_field(answer, "mood")

        before = time.time()
        status, read = await as_agent(
            hub, agent, "POST", "/heartbeat", {"status": "working", "current_task_id": task["id"]}
        )
        assert status == 200, read
        assert read["id"] == agent.id and read["status"] == "online"
        assert read["checkin_deadline_at"] is None and read["last_seen_at"] is not None
        status, health = await as_agent(hub, agent, "GET", "/healthz")
        assert health["status"] == "online"
        status, read = await as_agent(hub, agent, "POST", "/heartbeat")  # no body at all
        assert status == 200 and read["status"] == "online"
        seen = await hub.db.read(
            lambda conn: conn.execute(
                "SELECT last_seen_at FROM agents WHERE id = ?", (agent.id,)
            ).fetchone()[0]
        )
        assert before - 1 <= seen <= time.time()

        status, _ = await api(hub, "DELETE", f"/api/v1/agents/{agent.id}")
        assert status == 202
        status, _ = await as_agent(hub, agent, "GET", "/healthz")
        assert status == 401  # a deleting agent's token no longer acts


async def test_agent_requests_are_rate_limited_per_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub_api, "AGENT_RATE", (1.0, 3))
    instance = Hub(hub_config(tmp_path / "hub"))
    await instance.start()
    try:
        gateway = await add_gateway(instance)
        board = await add_board(instance, gateway)
        first = await add_agent(instance, gateway_id=gateway, board_id=board)
        second = await add_agent(instance, gateway_id=gateway, board_id=board)
        statuses = [(await as_agent(instance, first, "GET", "/healthz"))[0] for _ in range(5)]
        assert statuses[:3] == [200, 200, 200] and 429 in statuses[3:]
        status, _ = await as_agent(instance, second, "GET", "/healthz")
        assert status == 200  # another agent has its own bucket
    finally:
        await instance.stop()


async def test_openapi_tags_agent_routes_by_role(hub: Hub) -> None:
    _, document, _ = await call(hub, "GET", "/openapi.json")
    paths = document["paths"]
    assert set(paths[AGENT + "/healthz"]["get"]["tags"]) == {
        "agent-main",
        "agent-lead",
        "agent-worker",
    }
    patch = paths[AGENT + "/boards/{board_id}/tasks/{task_id}"]["patch"]
    assert set(patch["tags"]) == {"agent-lead", "agent-worker"}
    assert patch["security"] == [{"agent": []}]
