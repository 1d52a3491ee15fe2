"""Boards (issue 5 completes CRUD)."""

from __future__ import annotations

from typing import Any

from hub.api.core import Api, ApiError, Call
from hub.api.deps import deps
from hub.api.schemas import BoardCreate, BoardRead
from missioncontrol.timefmt import iso


def board_read(row: dict[str, Any]) -> BoardRead:
    return BoardRead(
        **{**row, "created_at": iso(row["created_at"]), "updated_at": iso(row["updated_at"])}
    )


def register(api: Api) -> None:
    @api.route(
        "POST",
        "/api/v1/boards",
        summary="Create a board on a gateway",
        tags=("boards",),
        body=BoardCreate,
        response=BoardRead,
        status=201,
    )
    async def create_board(call: Call) -> BoardRead:
        d = deps(call.request)
        if await d.store.get_gateway(call.body.gateway_id) is None:
            raise ApiError(422, "field 'gateway_id': no such gateway")
        row = await d.store.create_board(
            call.body.gateway_id, call.body.name, call.body.description
        )
        return board_read(row)
