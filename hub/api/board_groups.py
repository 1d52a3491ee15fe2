"""Board groups: CRUD, and one call that sets a heartbeat on every agent of a group."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from hub.api.core import MULTILINE, Api, Call, Page, Strict
from hub.api.deps import deps
from hub.api.schemas import HeartbeatConfig, Ok
from hub.board_groups import (
    create_group_in,
    delete_group_in,
    group_in,
    list_groups_in,
    update_group_in,
)
from hub.provisioning.agents import heartbeat_settings
from missioncontrol.log import get_logger
from missioncontrol.timefmt import iso

log = get_logger("hub.api.board_groups")


class BoardGroupCreate(Strict):
    name: str = Field(min_length=1, max_length=200)
    description: str = Field("", max_length=4000, json_schema_extra=MULTILINE)


class BoardGroupUpdate(Strict):
    name: str | None = Field(None, min_length=1, max_length=200)
    description: str | None = Field(None, max_length=4000, json_schema_extra=MULTILINE)


class BoardGroupRead(BaseModel):
    id: str
    name: str
    slug: str
    description: str
    board_ids: list[str]
    created_at: str | None
    updated_at: str | None


class BoardGroupPage(BaseModel):
    items: list[BoardGroupRead]
    total: int
    limit: int
    offset: int


class GroupHeartbeat(HeartbeatConfig):
    """Mission Control's `{every, include_board_leads}`; any heartbeat_config shape works."""

    include_board_leads: bool = False


class GroupHeartbeatResult(BaseModel):
    board_group_id: str
    requested: dict[str, Any]  # the heartbeat every agent now has
    updated_agent_ids: list[str]
    failed_agent_ids: list[str]


def group_read(group: dict[str, Any]) -> BoardGroupRead:
    return BoardGroupRead(
        **{**group, "created_at": iso(group["created_at"]), "updated_at": iso(group["updated_at"])}
    )


def register(api: Api) -> None:
    tags = ("board-groups",)
    base = "/api/v1/board-groups"

    @api.route(
        "GET", base, summary="List board groups", tags=tags, query=Page,
        response=BoardGroupPage,
    )  # fmt: skip
    async def list_board_groups(call: Call) -> BoardGroupPage:
        q: Page = call.query
        groups, total = await deps(call.request).db.read(
            lambda conn: list_groups_in(conn, q.limit, q.offset)
        )
        return BoardGroupPage(
            items=[group_read(g) for g in groups], total=total, limit=q.limit, offset=q.offset
        )

    @api.route(
        "POST", base, summary="Create a board group (boards join it with board_group_id)",
        tags=tags, body=BoardGroupCreate, response=BoardGroupRead, status=201,
    )  # fmt: skip
    async def create_board_group(call: Call) -> BoardGroupRead:
        body: BoardGroupCreate = call.body
        group = await deps(call.request).db.write(
            lambda conn: create_group_in(conn, body.name, body.description), urgent=True
        )
        return group_read(group)

    @api.route(
        "GET", base + "/{group_id}", summary="Read a board group", tags=tags,
        response=BoardGroupRead,
    )  # fmt: skip
    async def get_board_group(call: Call) -> BoardGroupRead:
        group_id = call.request.match_info["group_id"]
        return group_read(await deps(call.request).db.read(lambda conn: group_in(conn, group_id)))

    @api.route(
        "PATCH", base + "/{group_id}", summary="Rename or describe a board group", tags=tags,
        body=BoardGroupUpdate, response=BoardGroupRead,
    )  # fmt: skip
    async def patch_board_group(call: Call) -> BoardGroupRead:
        group_id = call.request.match_info["group_id"]
        body: BoardGroupUpdate = call.body
        group = await deps(call.request).db.write(
            lambda conn: update_group_in(
                conn, group_id, name=body.name, description=body.description
            ),
            urgent=True,
        )
        return group_read(group)

    @api.route(
        "DELETE", base + "/{group_id}", summary="Delete a board group (its boards stay)",
        tags=tags, response=Ok,
    )  # fmt: skip
    async def delete_board_group(call: Call) -> Ok:
        group_id = call.request.match_info["group_id"]
        await deps(call.request).db.write(lambda conn: delete_group_in(conn, group_id), urgent=True)
        return Ok()

    @api.route(
        "POST", base + "/{group_id}/heartbeat",
        summary="Set a heartbeat cadence on every agent of the group's boards (one call)",
        tags=tags, body=GroupHeartbeat, response=GroupHeartbeatResult,
    )  # fmt: skip
    async def apply_group_heartbeat(call: Call) -> GroupHeartbeatResult:
        group_id = call.request.match_info["group_id"]
        body: GroupHeartbeat = call.body
        config = body.config()
        config.pop("include_board_leads", None)
        d = deps(call.request)
        await d.db.read(lambda conn: group_in(conn, group_id))
        updated, failed = await d.provisioning.apply_group_heartbeat(
            group_id, config, include_leads=body.include_board_leads
        )
        log.info(
            "board_group.heartbeat.applied",
            board_group_id=group_id,
            updated=len(updated),
            failed=len(failed),
        )
        return GroupHeartbeatResult(
            board_group_id=group_id,
            requested=heartbeat_settings(config)[0],
            updated_agent_ids=updated,
            failed_agent_ids=failed,
        )
