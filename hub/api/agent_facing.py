"""The hub's agent-facing API (`/api/v1/agent/*`, X-Agent-Token): health, heartbeat,
boards, and the board's tasks.

An agent token grants only that agent's own rights. A board agent (lead or worker)
reaches its own board; a gateway's main agent reads the boards of its own gateway and
nothing else (the reference let main agents read any board of any tenant). Changing
tasks belongs to the board's own agents. A board the agent may not reach is a 403,
whether or not it exists, so the answer is no oracle for other tenants' board ids.
"""

from __future__ import annotations

import time
from sqlite3 import Row
from typing import Any

from pydantic import BaseModel, Field

from hub.api.agent_auth import AgentPrincipal
from hub.api.agents import agent_read
from hub.api.core import MULTILINE, Api, Auth, Call, Page, Strict
from hub.api.deps import deps
from hub.api.schemas import AgentRead
from hub.api.tasks import (
    MAX_ID_CHARS,
    BoardTag,
    BoardTags,
    CommentCreate,
    CommentPage,
    CommentRead,
    TaskFilter,
    TaskPage,
    TaskRead,
    TaskStatus,
    comment_page,
    comment_read,
    filtered_tasks,
    task_page,
    task_read,
)
from hub.approvals import task_approvals_in
from hub.boards import agent_boards_in, reachable_board_in
from hub.provisioning.agents import load_agent
from hub.store.database import Connection
from hub.tasks import (
    CommentRow,
    TaskRow,
    add_comment,
    agent_task_changes,
    board_tags_in,
    list_comments,
    reachable_task_in,
    task_on_board_in,
    task_reachable_by,
    update_task,
)
from missioncontrol.agent_api import AGENT_API_PREFIX, MAX_STATUS_CHARS, MAX_TASK_ID_CHARS
from missioncontrol.http import ApiError
from missioncontrol.log import get_logger
from missioncontrol.timefmt import iso
from protos import link_pb2 as pb
from protos.contract import timestamp

log = get_logger("hub.api.agent")

MAIN, LEAD, WORKER = "agent-main", "agent-lead", "agent-worker"
EVERY_AGENT = (MAIN, LEAD, WORKER)
BOARD_AGENTS = (LEAD, WORKER)


class AgentHealth(BaseModel):
    ok: bool = True
    agent_id: str
    board_id: str | None
    gateway_id: str
    status: str
    is_board_lead: bool


class AgentHeartbeatBody(Strict):
    status: str | None = Field(None, max_length=MAX_STATUS_CHARS)
    current_task_id: str | None = Field(None, max_length=MAX_TASK_ID_CHARS)


class AgentBoardRead(BaseModel):
    """A board as its agents see it: what it is for and the rules its tasks follow."""

    id: str
    gateway_id: str
    name: str
    slug: str
    description: str
    board_type: str
    objective: str
    status: str
    require_approval_for_done: bool
    require_review_before_done: bool
    comment_required_for_review: bool
    block_status_changes_with_pending_approval: bool
    only_lead_can_change_status: bool
    max_agents: int
    created_at: str | None
    updated_at: str | None


class AgentBoardPage(BaseModel):
    items: list[AgentBoardRead]
    total: int
    limit: int
    offset: int


class AgentTaskUpdate(Strict):
    """Workers move their own (or unassigned) tasks; the lead also assigns."""

    status: TaskStatus | None = None
    assigned_agent_id: str | None = Field(
        None, min_length=1, max_length=MAX_ID_CHARS, description="lead only; null unassigns"
    )
    comment: str | None = Field(
        None,
        min_length=1,
        max_length=20_000,
        description="added as the agent's comment",
        json_schema_extra=MULTILINE,
    )


def principal(call: Call) -> AgentPrincipal:
    assert isinstance(call.principal, AgentPrincipal)
    return call.principal


def board_view(row: Row) -> AgentBoardRead:
    values: dict[str, Any] = dict(row)
    values["created_at"] = iso(values["created_at"])
    values["updated_at"] = iso(values["updated_at"])
    return AgentBoardRead.model_validate(values)


def register(api: Api) -> None:
    base = AGENT_API_PREFIX

    @api.route(
        "GET",
        base + "/healthz",
        summary="Check the agent's token and see who the hub thinks it is",
        tags=EVERY_AGENT,
        auth=Auth.AGENT,
        response=AgentHealth,
    )
    async def agent_healthz(call: Call) -> AgentHealth:
        agent = principal(call)
        row = await deps(call.request).db.read(lambda conn: load_agent(conn, agent.id))
        if row is None:
            raise ApiError(401, "this agent no longer exists")
        return AgentHealth(
            agent_id=agent.id,
            board_id=agent.board_id,
            gateway_id=agent.gateway_id,
            status=row.status,
            is_board_lead=agent.is_board_lead,
        )

    @api.route(
        "POST",
        base + "/heartbeat",
        summary="Heartbeat: check in and refresh presence",
        tags=EVERY_AGENT,
        auth=Auth.AGENT,
        body=AgentHeartbeatBody,
        response=AgentRead,
    )
    async def agent_heartbeat(call: Call) -> AgentRead:
        agent = principal(call)
        body: AgentHeartbeatBody = call.body
        d = deps(call.request)
        task_id = body.current_task_id
        if task_id and not await d.db.read(lambda conn: task_reachable_by(conn, agent, task_id)):
            raise ApiError(
                422,
                [
                    {
                        "loc": ["current_task_id"],
                        "msg": "no such task on a board this agent can reach",
                        "type": "value_error",
                    }
                ],
            )
        beat = pb.AgentHeartbeat(
            agent_id=agent.gateway_agent_id,
            observed_at=timestamp(),
            status=body.status or "",
            current_task_id=body.current_task_id or "",
        )
        await d.reconciler.heartbeats(agent.gateway_id, pb.HeartbeatBatch(beats=[beat]))
        row = await d.db.read(lambda conn: load_agent(conn, agent.id))
        if row is None:
            raise ApiError(401, "this agent no longer exists")
        return agent_read(row)

    @api.route(
        "GET",
        base + "/boards",
        summary="Boards this agent may reach: its own, or (main agent) its gateway's",
        tags=EVERY_AGENT,
        auth=Auth.AGENT,
        query=Page,
        response=AgentBoardPage,
    )
    async def agent_list_boards(call: Call) -> AgentBoardPage:
        agent = principal(call)
        q: Page = call.query
        rows, total = await deps(call.request).db.read(
            lambda conn: agent_boards_in(conn, agent, q.limit, q.offset)
        )
        return AgentBoardPage(
            items=[board_view(r) for r in rows], total=total, limit=q.limit, offset=q.offset
        )

    @api.route(
        "GET",
        base + "/boards/{board_id}",
        summary="Read a board this agent may reach (403 for any other)",
        tags=EVERY_AGENT,
        auth=Auth.AGENT,
        response=AgentBoardRead,
    )
    async def agent_get_board(call: Call) -> AgentBoardRead:
        agent = principal(call)
        board_id = call.request.match_info["board_id"]
        row = await deps(call.request).db.read(
            lambda conn: reachable_board_in(conn, agent, board_id)
        )
        return board_view(row)

    @api.route(
        "GET",
        base + "/boards/{board_id}/tasks",
        summary="List the board's tasks (filter by status or assignee)",
        tags=EVERY_AGENT,
        auth=Auth.AGENT,
        query=TaskFilter,
        response=TaskPage,
    )
    async def agent_list_tasks(call: Call) -> TaskPage:
        agent = principal(call)
        board_id = call.request.match_info["board_id"]
        q: TaskFilter = call.query

        def op(conn: Connection) -> tuple[list[TaskRow], int]:
            reachable_board_in(conn, agent, board_id)
            return filtered_tasks(conn, board_id, q)

        rows, total = await deps(call.request).db.read(op)
        return task_page(rows, total, q)

    @api.route(
        "GET",
        base + "/boards/{board_id}/tags",
        summary="The tags the board's tasks carry (filter tasks with ?tag=)",
        tags=EVERY_AGENT,
        auth=Auth.AGENT,
        response=BoardTags,
    )
    async def agent_list_tags(call: Call) -> BoardTags:
        agent = principal(call)
        board_id = call.request.match_info["board_id"]

        def op(conn: Connection) -> list[tuple[str, int]]:
            reachable_board_in(conn, agent, board_id)
            return board_tags_in(conn, board_id)

        rows = await deps(call.request).db.read(op)
        return BoardTags(items=[BoardTag(tag=t, tasks=n) for t, n in rows])

    @api.route(
        "PATCH",
        base + "/boards/{board_id}/tasks/{task_id}",
        summary="Move a task (status), optionally with a comment; the lead also assigns",
        tags=BOARD_AGENTS,
        auth=Auth.AGENT,
        body=AgentTaskUpdate,
        response=TaskRead,
    )
    async def agent_update_task(call: Call) -> TaskRead:
        agent = principal(call)
        board_id = call.request.match_info["board_id"]
        task_id = call.request.match_info["task_id"]
        body: AgentTaskUpdate = call.body
        if "status" in body.model_fields_set and body.status is None:
            raise ApiError(
                422,
                [{"loc": ["status"], "msg": "may be left out but not null", "type": "value_error"}],
            )
        sent = {name: getattr(body, name) for name in body.model_fields_set}

        def op(conn: Connection, found: tuple[Row, TaskRow]) -> tuple[TaskRow, TaskRow]:
            board, before = found
            approvals = task_approvals_in(conn, task_id)
            changes = agent_task_changes(agent, board, before, sent, approvals)
            now = time.time()
            after = update_task(conn, before, changes, now=now, by=agent.id)
            if body.comment:
                add_comment(
                    conn,
                    task_id,
                    author_kind="agent",
                    author_id=agent.id,
                    body=body.comment,
                    now=now,
                )
            return before, after

        before, task = await deps(call.request).db.write_checked(
            lambda conn: reachable_task_in(conn, agent, board_id, task_id), op
        )
        log.info(
            "agent.task.updated",
            agent_id=agent.id,
            board_id=board_id,
            task_id=task_id,
            status_from=before.status,
            status_to=task.status,
            commented=bool(body.comment),
        )
        return task_read(task)

    @api.route(
        "GET",
        base + "/boards/{board_id}/tasks/{task_id}/comments",
        summary="Read a task's comments, oldest first",
        tags=EVERY_AGENT,
        auth=Auth.AGENT,
        query=Page,
        response=CommentPage,
    )
    async def agent_list_comments(call: Call) -> CommentPage:
        agent = principal(call)
        board_id = call.request.match_info["board_id"]
        task_id = call.request.match_info["task_id"]
        q: Page = call.query

        def op(conn: Connection) -> tuple[list[CommentRow], int]:
            reachable_board_in(conn, agent, board_id)
            task_on_board_in(conn, board_id, task_id)
            return list_comments(conn, task_id, limit=q.limit, offset=q.offset)

        rows, total = await deps(call.request).db.read(op)
        return comment_page(rows, total, q)

    @api.route(
        "POST",
        base + "/boards/{board_id}/tasks/{task_id}/comments",
        summary="Comment on a task of the agent's board",
        tags=BOARD_AGENTS,
        auth=Auth.AGENT,
        body=CommentCreate,
        response=CommentRead,
        status=201,
    )
    async def agent_comment_task(call: Call) -> CommentRead:
        agent = principal(call)
        board_id = call.request.match_info["board_id"]
        task_id = call.request.match_info["task_id"]
        message = call.body.message

        def op(conn: Connection, _: object) -> CommentRow:
            return add_comment(
                conn,
                task_id,
                author_kind="agent",
                author_id=agent.id,
                body=message,
                now=time.time(),
            )

        comment = await deps(call.request).db.write_checked(
            lambda conn: reachable_task_in(conn, agent, board_id, task_id), op
        )
        log.info("agent.task.commented", agent_id=agent.id, board_id=board_id, task_id=task_id)
        return comment_read(comment)
