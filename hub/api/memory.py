"""Board memory: the board's shared notes, for admins and (through their sidecar) agents.

Read and append, paged newest first, and a live stream that resumes by Last-Event-ID.
An agent reaches the memory of the boards it may reach (its own; a main agent its
gateway's boards), like everything else of a board.
"""

from __future__ import annotations

import re
import time
from typing import Any

from pydantic import BaseModel, Field, field_validator

from hub.api.agent_facing import EVERY_AGENT, principal
from hub.api.core import MULTILINE, Api, Auth, Call, Page, Query, Strict
from hub.api.deps import deps
from hub.api.streams import durable_stream, last_event_id
from hub.boards import reachable_board_in
from hub.feeds import Row
from hub.memory import (
    MAX_CONTENT_CHARS,
    MAX_TAG_CHARS,
    MAX_TAGS,
    TAG_PATTERN,
    add_memory_in,
    list_memory_in,
    memory_after_in,
)
from hub.store.database import Connection
from hub.tasks import require_board_in
from missioncontrol.agent_api import AGENT_API_PREFIX
from missioncontrol.log import get_logger
from missioncontrol.timefmt import iso

log = get_logger("hub.api.memory")

# A note that is exactly one of these pauses or resumes the board, as in Mission Control.
BOARD_COMMANDS = {"/pause": True, "/resume": False}


class MemoryCreate(Strict):
    content: str = Field(min_length=1, max_length=MAX_CONTENT_CHARS, json_schema_extra=MULTILINE)
    tags: list[str] = Field(default_factory=list, max_length=MAX_TAGS)
    source: str = Field("", max_length=100, description="where the note comes from, e.g. a task")

    @field_validator("tags")
    @classmethod
    def _tags(cls, tags: list[str]) -> list[str]:
        for tag in tags:
            if not re.fullmatch(TAG_PATTERN, tag):
                raise ValueError(f"tag {tag[:70]!r}: letters, digits and :._/- (1-64)")
        return tags


class MemoryQuery(Page):
    tag: str | None = Field(None, max_length=MAX_TAG_CHARS)


class MemoryStreamQuery(Query):
    last_event_id: int | None = Field(
        None, ge=0, le=2**63 - 1, description="resume after this id (or send Last-Event-ID)"
    )


class MemoryRead(BaseModel):
    id: int
    board_id: str
    content: str
    tags: list[str]
    source: str
    author_kind: str  # "user" or "agent"
    author_id: str
    created_at: str | None


class MemoryPage(BaseModel):
    items: list[MemoryRead]
    total: int
    limit: int
    offset: int


def memory_read(row: Row) -> MemoryRead:
    return MemoryRead(**{**row, "created_at": iso(row["created_at"])})


def page(rows: list[Row], total: int, q: Page) -> MemoryPage:
    return MemoryPage(
        items=[memory_read(r) for r in rows], total=total, limit=q.limit, offset=q.offset
    )


def register(api: Api) -> None:
    tags = ("memory",)
    base = "/api/v1/boards/{board_id}/memory"

    @api.route(
        "GET", base, summary="Read a board's memory, newest first", tags=tags, query=MemoryQuery,
        response=MemoryPage,
    )  # fmt: skip
    async def list_board_memory(call: Call) -> MemoryPage:
        board_id = call.request.match_info["board_id"]
        q: MemoryQuery = call.query
        rows, total = await deps(call.request).db.read(
            lambda conn: list_memory_in(conn, board_id, tag=q.tag, limit=q.limit, offset=q.offset)
        )
        return page(rows, total, q)

    @api.route(
        "POST", base, summary="Add a note to a board's memory", tags=tags, body=MemoryCreate,
        response=MemoryRead, status=201,
    )  # fmt: skip
    async def add_board_memory(call: Call) -> MemoryRead:
        board_id = call.request.match_info["board_id"]
        body: MemoryCreate = call.body
        d = deps(call.request)
        command = BOARD_COMMANDS.get(body.content.strip())
        if command is not None:
            # Mission Control's board chat commands: the note, and the pause or resume.
            await d.provisioning.set_board_paused(
                board_id, command, note=(body.content.strip(), "admin")
            )
            rows, _ = await d.db.read(
                lambda conn: list_memory_in(conn, board_id, tag=None, limit=1, offset=0)
            )
            return memory_read(rows[0])
        note = await d.db.write_checked(
            lambda conn: require_board_in(conn, board_id),
            lambda conn, _: add_memory_in(
                conn,
                board_id,
                content=body.content,
                tags=body.tags,
                source=body.source,
                author_kind="user",
                author_id="admin",
                now=time.time(),
            ),
            urgent=True,
        )
        log.info("board.memory.added", board_id=board_id, memory_id=note["id"], by="admin")
        return memory_read(note)

    @api.route(
        "GET",
        base + "/stream",
        summary="Server-sent events: notes as they are added, resumable by Last-Event-ID",
        tags=tags,
        query=MemoryStreamQuery,
    )
    async def stream_board_memory(call: Call) -> Any:
        board_id = call.request.match_info["board_id"]
        d = deps(call.request)
        await d.db.read(lambda conn: require_board_in(conn, board_id))
        after = last_event_id(call, call.query.last_event_id)

        async def replay(after_id: int, limit: int) -> list[Row]:
            return await d.db.read(lambda conn: memory_after_in(conn, board_id, after_id, limit))

        return await durable_stream(
            call,
            d.memory.subscribe(lambda row: row["board_id"] == board_id),
            after=after,
            replay=replay,
            frame=lambda row: ("memory", memory_read(row).model_dump(mode="json")),
        )

    # ------------------------------------------------------------ agents

    agent_base = AGENT_API_PREFIX + "/boards/{board_id}/memory"

    @api.route(
        "GET", agent_base, summary="Read the board's shared memory, newest first",
        tags=EVERY_AGENT, auth=Auth.AGENT, query=MemoryQuery, response=MemoryPage,
    )  # fmt: skip
    async def agent_list_memory(call: Call) -> MemoryPage:
        agent = principal(call)
        board_id = call.request.match_info["board_id"]
        q: MemoryQuery = call.query

        def op(conn: Connection) -> tuple[list[Row], int]:
            reachable_board_in(conn, agent, board_id)
            return list_memory_in(conn, board_id, tag=q.tag, limit=q.limit, offset=q.offset)

        rows, total = await deps(call.request).db.read(op)
        return page(rows, total, q)

    @api.route(
        "POST", agent_base,
        summary="Share durable knowledge with the board (decisions, findings, how-tos)",
        tags=EVERY_AGENT, auth=Auth.AGENT, body=MemoryCreate, response=MemoryRead, status=201,
    )  # fmt: skip
    async def agent_add_memory(call: Call) -> MemoryRead:
        agent = principal(call)
        board_id = call.request.match_info["board_id"]
        body: MemoryCreate = call.body
        note = await deps(call.request).db.write_checked(
            lambda conn: reachable_board_in(conn, agent, board_id),
            lambda conn, _: add_memory_in(
                conn,
                board_id,
                content=body.content,
                tags=body.tags,
                source=body.source,
                author_kind="agent",
                author_id=agent.id,
                now=time.time(),
            ),
            urgent=True,
        )
        log.info("board.memory.added", board_id=board_id, memory_id=note["id"], by=agent.id)
        return memory_read(note)
