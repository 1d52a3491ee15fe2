"""Approvals: leads ask through their local API; admins list, approve and reject.

The approvals stream is the board's activity trail narrowed to `approval.*` events, so
its ids are the events' own and Last-Event-ID resumes it across hub restarts.
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from hub.activity import ActivityFilter, activity_after_in
from hub.api.agent_facing import EVERY_AGENT, LEAD, principal
from hub.api.core import MULTILINE, Api, Auth, Call, Page, Query, Strict
from hub.api.deps import deps
from hub.api.streams import durable_stream, last_event_id
from hub.approvals import (
    MAX_TASKS,
    list_approvals_in,
    request_approval_in,
    require_approval_in,
    resolve_approval_in,
)
from hub.boards import reachable_board_in
from hub.feeds import Row
from hub.store.database import Connection
from hub.tasks import require_board_in
from missioncontrol.agent_api import AGENT_API_PREFIX
from missioncontrol.log import get_logger

log = get_logger("hub.api.approvals")

MAX_PAYLOAD_BYTES = 64 * 1024
MAX_RUBRIC_KEYS = 20
ApprovalStatus = Literal["pending", "approved", "rejected"]


class ApprovalCreate(Strict):
    """What a lead asks to do, how sure it is, and which tasks it is about."""

    action_type: str = Field(
        min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:/-]*$",
        description="what kind of action, e.g. deploy, mark_done, spend",
    )  # fmt: skip
    payload: dict[str, Any] = Field(
        default_factory=dict,
        json_schema_extra=MULTILINE,
        description="exactly what would be done (at most 64 KiB as JSON)",
    )
    confidence: float | None = Field(None, ge=0, le=100, description="0-100")
    rubric_scores: dict[str, float] = Field(default_factory=dict, description="name -> 0-100")
    task_ids: list[str] = Field(default_factory=list, max_length=MAX_TASKS)
    task_id: str | None = Field(None, max_length=64, description="Mission Control's one task")

    @field_validator("payload")
    @classmethod
    def _payload(cls, value: dict[str, Any]) -> dict[str, Any]:
        if len(json.dumps(value)) > MAX_PAYLOAD_BYTES:
            raise ValueError(f"at most {MAX_PAYLOAD_BYTES} bytes as JSON")
        return value

    @field_validator("rubric_scores")
    @classmethod
    def _rubric(cls, value: dict[str, float]) -> dict[str, float]:
        if len(value) > MAX_RUBRIC_KEYS:
            raise ValueError(f"at most {MAX_RUBRIC_KEYS} scores")
        for name, score in value.items():
            if not 1 <= len(name) <= 64 or not 0 <= score <= 100:
                raise ValueError("each score is named (1-64 characters) and 0-100")
        return value

    @field_validator("task_ids")
    @classmethod
    def _task_ids(cls, value: list[str]) -> list[str]:
        if any(not 1 <= len(task_id) <= 64 for task_id in value):
            raise ValueError("task ids are 1-64 characters")
        return value

    def tasks(self) -> list[str]:
        return [*self.task_ids, *([self.task_id] if self.task_id else [])]


class ApprovalResolve(Strict):
    status: Literal["approved", "rejected"]
    reason: str = Field("", max_length=4000, json_schema_extra=MULTILINE)


class ApprovalFilter(Page):
    status: ApprovalStatus | None = None


class ApprovalStreamQuery(Query):
    last_event_id: int | None = Field(
        None, ge=0, le=2**63 - 1, description="resume after this id (or send Last-Event-ID)"
    )


class ApprovalRead(BaseModel):
    id: str
    board_id: str
    agent_id: str | None  # the lead that asked
    action_type: str
    payload: dict[str, Any]
    confidence: float | None
    rubric_scores: dict[str, float]
    task_ids: list[str]
    task_id: str | None
    status: ApprovalStatus
    resolution: str
    resolved_by: str | None
    created_at: str | None
    resolved_at: str | None


class ApprovalPage(BaseModel):
    items: list[ApprovalRead]
    total: int
    limit: int
    offset: int


def page(rows: list[dict[str, Any]], total: int, q: Page) -> ApprovalPage:
    return ApprovalPage(
        items=[ApprovalRead(**r) for r in rows], total=total, limit=q.limit, offset=q.offset
    )


def register(api: Api) -> None:
    tags = ("approvals",)
    base = "/api/v1/boards/{board_id}/approvals"

    @api.route(
        "GET", base, summary="List a board's approvals, newest first (filter by status)",
        tags=tags, query=ApprovalFilter, response=ApprovalPage,
    )  # fmt: skip
    async def list_board_approvals(call: Call) -> ApprovalPage:
        board_id = call.request.match_info["board_id"]
        q: ApprovalFilter = call.query
        rows, total = await deps(call.request).db.read(
            lambda conn: list_approvals_in(
                conn, board_id, status=q.status, limit=q.limit, offset=q.offset
            )
        )
        return page(rows, total, q)

    @api.route(
        "GET", base + "/stream",
        summary="Server-sent events: approvals asked and resolved, resumable by Last-Event-ID",
        tags=tags, query=ApprovalStreamQuery,
    )  # fmt: skip
    async def stream_board_approvals(call: Call) -> Any:
        board_id = call.request.match_info["board_id"]
        d = deps(call.request)
        await d.db.read(lambda conn: require_board_in(conn, board_id))
        where = ActivityFilter(board_id=board_id, kind="approval.")

        async def replay(after_id: int, limit: int) -> list[Row]:
            return await d.db.read(lambda conn: activity_after_in(conn, where, after_id, limit))

        return await durable_stream(
            call,
            d.activity.subscribe(where.matches),
            after=last_event_id(call, call.query.last_event_id),
            replay=replay,
            frame=lambda row: (
                "approval",
                {"kind": row["kind"], "approval": row["detail"].get("approval")},
            ),
        )

    @api.route(
        "GET", base + "/{approval_id}", summary="Read an approval", tags=tags,
        response=ApprovalRead,
    )  # fmt: skip
    async def get_board_approval(call: Call) -> ApprovalRead:
        info = call.request.match_info
        view = await deps(call.request).db.read(
            lambda conn: require_approval_in(conn, info["board_id"], info["approval_id"])
        )
        return ApprovalRead(**view)

    @api.route(
        "PATCH", base + "/{approval_id}",
        summary="Approve or reject (once); the lead that asked is woken with the outcome",
        tags=tags, body=ApprovalResolve, response=ApprovalRead,
    )  # fmt: skip
    async def resolve_board_approval(call: Call) -> ApprovalRead:
        info = call.request.match_info
        body: ApprovalResolve = call.body
        view = await deps(call.request).db.write_checked(
            lambda conn: require_approval_in(conn, info["board_id"], info["approval_id"]),
            lambda conn, _: resolve_approval_in(
                conn,
                info["board_id"],
                info["approval_id"],
                status=body.status,
                resolution=body.reason,
                resolved_by="admin",
                now=time.time(),
            ),
            urgent=True,
        )
        log.info(
            "approval.resolved",
            board_id=info["board_id"],
            approval_id=info["approval_id"],
            status=body.status,
        )
        return ApprovalRead(**view)

    # ------------------------------------------------------------ agents

    agent_base = AGENT_API_PREFIX + "/boards/{board_id}/approvals"

    @api.route(
        "GET", agent_base, summary="List the board's approvals, newest first",
        tags=EVERY_AGENT, auth=Auth.AGENT, query=ApprovalFilter, response=ApprovalPage,
    )  # fmt: skip
    async def agent_list_approvals(call: Call) -> ApprovalPage:
        agent = principal(call)
        board_id = call.request.match_info["board_id"]
        q: ApprovalFilter = call.query

        def op(conn: Connection) -> tuple[list[dict[str, Any]], int]:
            reachable_board_in(conn, agent, board_id)
            return list_approvals_in(
                conn, board_id, status=q.status, limit=q.limit, offset=q.offset
            )

        rows, total = await deps(call.request).db.read(op)
        return page(rows, total, q)

    @api.route(
        "GET", agent_base + "/{approval_id}", summary="Read one of the board's approvals",
        tags=EVERY_AGENT, auth=Auth.AGENT, response=ApprovalRead,
    )  # fmt: skip
    async def agent_get_approval(call: Call) -> ApprovalRead:
        agent = principal(call)
        info = call.request.match_info

        def op(conn: Connection) -> dict[str, Any]:
            reachable_board_in(conn, agent, info["board_id"])
            return require_approval_in(conn, info["board_id"], info["approval_id"])

        return ApprovalRead(**await deps(call.request).db.read(op))

    @api.route(
        "POST", agent_base,
        summary="Ask an admin to approve an action (leads); you are woken with the outcome",
        tags=(LEAD,), auth=Auth.AGENT, body=ApprovalCreate, response=ApprovalRead, status=201,
    )  # fmt: skip
    async def agent_request_approval(call: Call) -> ApprovalRead:
        agent = principal(call)
        board_id = call.request.match_info["board_id"]
        body: ApprovalCreate = call.body
        view = await deps(call.request).db.write_checked(
            lambda conn: reachable_board_in(conn, agent, board_id),
            lambda conn, _: request_approval_in(
                conn,
                board_id,
                agent,
                action_type=body.action_type,
                payload=body.payload,
                confidence=body.confidence,
                rubric_scores=body.rubric_scores,
                task_ids=body.tasks(),
                now=time.time(),
            ),
            urgent=True,
        )
        log.info("approval.requested", board_id=board_id, approval_id=view["id"], agent_id=agent.id)
        return ApprovalRead(**view)
