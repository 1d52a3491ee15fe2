"""The activity trail: one list of lifecycle and board events, and its live stream."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from hub.activity import ActivityFilter, activity_after_in, agent_ids_in, list_activity_in, summary
from hub.api.core import Api, Call, Page, Query
from hub.api.deps import deps
from hub.api.streams import durable_stream, last_event_id
from hub.feeds import Row
from missioncontrol.http import ApiError
from missioncontrol.timefmt import iso

MAX_ID_CHARS = 64


class ActivityFields(Query):
    board_id: str | None = Field(None, max_length=MAX_ID_CHARS)
    agent_id: str | None = Field(None, max_length=MAX_ID_CHARS)
    gateway_id: str | None = Field(None, max_length=MAX_ID_CHARS)
    kind: str | None = Field(
        None,
        max_length=100,
        pattern=r"^[a-z0-9_.]+$",
        description='an event kind, or a prefix ending in "." (e.g. lifecycle.)',
    )
    since: datetime | None = Field(None, description="ISO 8601: only events after it")
    include_internal: bool = Field(
        False, description="also the outbox's and the reconciler's bookkeeping"
    )


class ActivityQuery(ActivityFields, Page):
    pass


class ActivityStreamQuery(ActivityFields):
    last_event_id: int | None = Field(
        None, ge=0, le=2**63 - 1, description="resume after this id (or send Last-Event-ID)"
    )


class ActivityRead(BaseModel):
    id: int  # lasting and increasing: what Last-Event-ID resumes from
    at: str | None
    kind: str
    summary: str
    gateway_id: str | None
    board_id: str | None
    agent_id: str | None  # the hub's agent id, or the gateway agent id events carry
    detail: dict[str, Any]


class ActivityPage(BaseModel):
    items: list[ActivityRead]
    total: int
    limit: int
    offset: int


def activity_read(row: Row) -> ActivityRead:
    detail = row["detail"] if isinstance(row["detail"], dict) else {}
    return ActivityRead(
        id=row["id"],
        at=iso(row["at"]),
        kind=row["kind"],
        summary=summary(row["kind"], detail),
        gateway_id=row.get("gateway_id"),
        board_id=row.get("board_id"),
        agent_id=row.get("agent_id"),
        detail=detail,
    )


async def activity_filter(call: Call, q: ActivityFields) -> ActivityFilter:
    agent_ids: tuple[str, ...] = ()
    if q.agent_id is not None:
        agent_id = q.agent_id
        agent_ids = await deps(call.request).db.read(lambda conn: agent_ids_in(conn, agent_id))
    since = None
    if q.since is not None:
        try:
            # Times are shown to the microsecond: "after" an event's shown time must not
            # return that event, whose stored time may lie a fraction past it.
            since = q.since.timestamp() + 0.5e-6
        except (OverflowError, ValueError, OSError):
            raise ApiError(422, "since must be an ISO 8601 time between 1970 and 9999") from None
    return ActivityFilter(
        board_id=q.board_id,
        agent_ids=agent_ids,
        gateway_id=q.gateway_id,
        kind=q.kind,
        since=since,
        include_internal=q.include_internal,
    )


def register(api: Api) -> None:
    tags = ("activity",)

    @api.route(
        "GET",
        "/api/v1/activity",
        summary="The activity trail, newest first: lifecycle and board events (not heartbeats)",
        tags=tags,
        query=ActivityQuery,
        response=ActivityPage,
    )
    async def list_activity(call: Call) -> ActivityPage:
        q: ActivityQuery = call.query
        where = await activity_filter(call, q)
        rows, total = await deps(call.request).db.read(
            lambda conn: list_activity_in(conn, where, limit=q.limit, offset=q.offset)
        )
        return ActivityPage(
            items=[activity_read(r) for r in rows], total=total, limit=q.limit, offset=q.offset
        )

    @api.route(
        "GET",
        "/api/v1/activity/stream",
        summary="Server-sent events: the activity trail live, resumable by Last-Event-ID",
        tags=tags,
        query=ActivityStreamQuery,
    )
    async def stream_activity(call: Call) -> Any:
        q: ActivityStreamQuery = call.query
        d = deps(call.request)
        where = await activity_filter(call, q)
        after = last_event_id(call, q.last_event_id)

        async def replay(after_id: int, limit: int) -> list[Row]:
            return await d.db.read(lambda conn: activity_after_in(conn, where, after_id, limit))

        return await durable_stream(
            call,
            d.activity.subscribe(where.matches),
            after=after,
            replay=replay,
            frame=lambda row: ("activity", activity_read(row).model_dump(mode="json")),
        )
