"""Boards: a gateway's agents grouped around a goal, with rules for their tasks."""

from __future__ import annotations

from datetime import date
from typing import Any

from pydantic import BaseModel, Field

from hub.api.core import MULTILINE, Api, Call, Page, Strict
from hub.api.deps import deps
from hub.boards import BoardNotFound, create_board, list_boards_in, load_board, update_board
from missioncontrol.http import ApiError
from missioncontrol.timefmt import iso

Metrics = dict[str, Any] | list[Any] | str | None


class BoardFields(Strict):
    description: str = Field("", max_length=4000, json_schema_extra=MULTILINE)
    board_type: str = Field("goal", min_length=1, max_length=32)
    objective: str = Field("", max_length=4000, json_schema_extra=MULTILINE)
    success_metrics: Metrics = Field(None, json_schema_extra=MULTILINE)
    target_date: date | None = None
    goal_confirmed: bool = False
    require_approval_for_done: bool = True
    require_review_before_done: bool = False
    comment_required_for_review: bool = False
    block_status_changes_with_pending_approval: bool = False
    only_lead_can_change_status: bool = False
    max_agents: int = Field(1, ge=0, le=1000, description="workers its lead may create")
    board_group_id: str | None = Field(None, max_length=64)


class BoardCreate(BoardFields):
    name: str = Field(min_length=1, max_length=200)
    gateway_id: str = Field(min_length=1, max_length=64)


class BoardUpdate(Strict):
    name: str | None = Field(None, min_length=1, max_length=200)
    description: str | None = Field(None, max_length=4000, json_schema_extra=MULTILINE)
    board_type: str | None = Field(None, min_length=1, max_length=32)
    objective: str | None = Field(None, max_length=4000, json_schema_extra=MULTILINE)
    success_metrics: Metrics = Field(None, json_schema_extra=MULTILINE)
    target_date: date | None = None
    goal_confirmed: bool | None = None
    require_approval_for_done: bool | None = None
    require_review_before_done: bool | None = None
    comment_required_for_review: bool | None = None
    block_status_changes_with_pending_approval: bool | None = None
    only_lead_can_change_status: bool | None = None
    max_agents: int | None = Field(None, ge=0, le=1000)
    board_group_id: str | None = Field(None, max_length=64, description="null: no group")


class BoardRead(BaseModel):
    id: str
    gateway_id: str
    name: str
    slug: str
    description: str
    board_type: str
    objective: str
    success_metrics: Metrics
    target_date: str | None
    goal_confirmed: bool
    require_approval_for_done: bool
    require_review_before_done: bool
    comment_required_for_review: bool
    block_status_changes_with_pending_approval: bool
    only_lead_can_change_status: bool
    max_agents: int
    board_group_id: str | None
    paused: bool  # its agents are paused with it (Mission Control's "/pause")
    paused_at: str | None
    status: str
    created_at: str | None
    updated_at: str | None


class BoardFilter(Page):
    gateway_id: str | None = Field(None, max_length=64)
    board_group_id: str | None = Field(None, max_length=64)


class BoardPage(BaseModel):
    items: list[BoardRead]
    total: int
    limit: int
    offset: int


class BoardDeleted(BaseModel):
    ok: bool = True
    status: str  # "deleted", or "deleting" while its agents are removed


def board_read(board: dict[str, Any]) -> BoardRead:
    return BoardRead(
        **{
            **board,
            "created_at": iso(board["created_at"]),
            "updated_at": iso(board["updated_at"]),
            "paused": board.get("paused_at") is not None,
            "paused_at": iso(board.get("paused_at")),
        }
    )


def _values(model: Strict) -> dict[str, Any]:
    values = model.model_dump(exclude_unset=True)
    if values.get("target_date") is not None:
        values["target_date"] = values["target_date"].isoformat()
    return values


def register(api: Api) -> None:
    tags = ("boards",)

    @api.route(
        "GET",
        "/api/v1/boards",
        summary="List boards",
        tags=tags,
        query=BoardFilter,
        response=BoardPage,
    )
    async def list_boards(call: Call) -> BoardPage:
        q = call.query
        boards, total = await deps(call.request).db.read(
            lambda conn: list_boards_in(
                conn, q.gateway_id, q.limit, q.offset, board_group_id=q.board_group_id
            )
        )
        return BoardPage(
            items=[board_read(b) for b in boards], total=total, limit=q.limit, offset=q.offset
        )

    @api.route(
        "POST",
        "/api/v1/boards",
        summary="Create a board on a gateway",
        tags=tags,
        body=BoardCreate,
        response=BoardRead,
        status=201,
    )
    async def create(call: Call) -> BoardRead:
        d = deps(call.request)
        if await d.store.get_gateway(call.body.gateway_id) is None:
            raise ApiError(422, "field 'gateway_id': no such gateway")
        values = _values(call.body)
        gateway_id = values.pop("gateway_id")
        values["name"] = call.body.name
        board = await d.db.write(lambda conn: create_board(conn, gateway_id, values))
        return board_read(board)

    @api.route(
        "GET", "/api/v1/boards/{board_id}", summary="Read a board", tags=tags, response=BoardRead
    )
    async def get_board(call: Call) -> BoardRead:
        board_id = call.request.match_info["board_id"]
        try:
            board = await deps(call.request).db.read(lambda conn: load_board(conn, board_id))
        except BoardNotFound:
            raise ApiError(404, "board not found") from None
        return board_read(board)

    @api.route(
        "PATCH",
        "/api/v1/boards/{board_id}",
        summary="Update a board",
        tags=tags,
        body=BoardUpdate,
        response=BoardRead,
    )
    async def patch_board(call: Call) -> BoardRead:
        board_id = call.request.match_info["board_id"]
        values = _values(call.body)
        try:
            board = await deps(call.request).db.write(
                lambda conn: update_board(conn, board_id, values)
            )
        except BoardNotFound:
            raise ApiError(404, "board not found") from None
        return board_read(board)

    @api.route(
        "POST",
        "/api/v1/boards/{board_id}/pause",
        summary="Pause a board: each of its agents' heartbeat jobs goes off; none is woken",
        tags=tags,
        response=BoardRead,
    )
    async def pause_board(call: Call) -> BoardRead:
        board_id = call.request.match_info["board_id"]
        board = await deps(call.request).provisioning.set_board_paused(board_id, True)
        return board_read(board)

    @api.route(
        "POST",
        "/api/v1/boards/{board_id}/resume",
        summary="Resume a board: its agents paused with it get their heartbeat back and a wake",
        tags=tags,
        response=BoardRead,
    )
    async def resume_board(call: Call) -> BoardRead:
        board_id = call.request.match_info["board_id"]
        board = await deps(call.request).provisioning.set_board_paused(board_id, False)
        return board_read(board)

    @api.route(
        "DELETE",
        "/api/v1/boards/{board_id}",
        summary="Delete a board: its agents are "
        "removed through their sidecars (never fails because a gateway is down)",
        tags=tags,
        response=BoardDeleted,
        status=202,
    )
    async def delete_board(call: Call) -> BoardDeleted:
        try:
            gone = await deps(call.request).provisioning.delete_board(
                call.request.match_info["board_id"]
            )
        except BoardNotFound:
            raise ApiError(404, "board not found") from None
        return BoardDeleted(status="deleted" if gone else "deleting")
