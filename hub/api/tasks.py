"""Board tasks and comments, admin side: list, create, read, update, delete; comments."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator

from hub.api.core import MULTILINE, Api, Call, Page, Strict
from hub.api.deps import deps
from hub.api.schemas import Ok
from hub.store.database import Connection
from hub.tasks import (
    MAX_TAGS,
    TAG_PATTERN,
    CommentRow,
    TaskRow,
    add_comment,
    board_tags_in,
    create_task,
    delete_task,
    list_comments,
    list_tasks,
    require_board_in,
    require_task_in,
    update_task,
)
from missioncontrol.log import get_logger
from missioncontrol.timefmt import iso

log = get_logger("hub.api.tasks")

TaskStatus = Literal["inbox", "in_progress", "review", "done"]
TaskPriority = Literal["low", "medium", "high"]
ADMIN_AUTHOR = "admin"  # the admin token is one local user; comments and tasks name it so
MAX_TITLE_CHARS = 500
MAX_TEXT_CHARS = 20_000
MAX_ID_CHARS = 64
# The Unix epoch to the end of year 9999: every instant SQLite and the API can render.
_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(9999, 12, 31, tzinfo=UTC)


def due_timestamp(value: datetime | None) -> float | None:
    """`due_at` as epoch seconds; a time without an offset is UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        in_range = _EARLIEST <= value <= _LATEST
    except OverflowError:
        in_range = False
    if not in_range:
        raise ValueError("due_at must lie between 1970-01-01 and 9999-12-31 (UTC)")
    return value.timestamp()


Tag = Annotated[str, Field(min_length=1, max_length=64, pattern=TAG_PATTERN)]


class BoardTag(BaseModel):
    tag: str
    tasks: int  # how many of the board's tasks carry it


class BoardTags(BaseModel):
    items: list[BoardTag]


class TaskCreate(Strict):
    title: str = Field(min_length=1, max_length=MAX_TITLE_CHARS)
    description: str = Field("", max_length=MAX_TEXT_CHARS, json_schema_extra=MULTILINE)
    status: TaskStatus = "inbox"
    priority: TaskPriority = "medium"
    due_at: datetime | None = Field(None, description="ISO 8601; without an offset it is UTC")
    assigned_agent_id: str | None = Field(None, min_length=1, max_length=MAX_ID_CHARS)
    tags: list[Tag] = Field(default_factory=list, max_length=MAX_TAGS)

    @field_validator("due_at")
    @classmethod
    def _due_in_range(cls, value: datetime | None) -> datetime | None:
        due_timestamp(value)
        return value


class TaskUpdate(Strict):
    """Only the fields sent change; `due_at` and `assigned_agent_id` may be set to null."""

    title: str | None = Field(None, min_length=1, max_length=MAX_TITLE_CHARS)
    description: str | None = Field(None, max_length=MAX_TEXT_CHARS, json_schema_extra=MULTILINE)
    status: TaskStatus | None = None
    priority: TaskPriority | None = None
    due_at: datetime | None = Field(None, description="ISO 8601; null clears it")
    assigned_agent_id: str | None = Field(None, min_length=1, max_length=MAX_ID_CHARS)
    tags: list[Tag] | None = Field(None, max_length=MAX_TAGS, description="replaces the tags")

    @field_validator("title", "description", "status", "priority", "tags")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("may be left out but not null")
        return value

    @field_validator("due_at")
    @classmethod
    def _due_in_range(cls, value: datetime | None) -> datetime | None:
        due_timestamp(value)
        return value

    def changes(self) -> dict[str, Any]:
        """The columns to update: only the fields the request sent."""
        values = {name: getattr(self, name) for name in self.model_fields_set}
        if "due_at" in values:
            values["due_at"] = due_timestamp(values["due_at"])
        return values


class TaskFilter(Page):
    status: TaskStatus | None = None
    assigned_agent_id: str | None = Field(None, max_length=MAX_ID_CHARS)
    tag: str | None = Field(None, max_length=64, description="only tasks carrying this tag")


def filtered_tasks(conn: Connection, board_id: str, query: TaskFilter) -> tuple[list[TaskRow], int]:
    """One page of a board's tasks as a TaskFilter asks (admin and agent listings)."""
    return list_tasks(
        conn,
        board_id,
        status=query.status,
        assigned_agent_id=query.assigned_agent_id,
        tag=query.tag,
        limit=query.limit,
        offset=query.offset,
    )


class TaskRead(BaseModel):
    id: str
    board_id: str
    title: str
    description: str
    status: TaskStatus
    priority: str
    due_at: str | None
    assigned_agent_id: str | None
    in_progress_at: str | None
    tags: list[str]
    created_by: str
    created_at: str | None
    updated_at: str | None


class TaskPage(BaseModel):
    items: list[TaskRead]
    total: int
    limit: int
    offset: int


class CommentCreate(Strict):
    message: str = Field(min_length=1, max_length=MAX_TEXT_CHARS, json_schema_extra=MULTILINE)


class CommentRead(BaseModel):
    id: str
    task_id: str
    author_kind: Literal["user", "agent"]
    author_id: str
    message: str
    created_at: str | None


class CommentPage(BaseModel):
    items: list[CommentRead]
    total: int
    limit: int
    offset: int


def task_read(task: TaskRow) -> TaskRead:
    return TaskRead(
        id=task.id,
        board_id=task.board_id,
        title=task.title,
        description=task.description,
        status=task.status,  # type: ignore[arg-type]  # the CHECK constraint keeps it in range
        priority=task.priority,
        due_at=iso(task.due_at),
        assigned_agent_id=task.assigned_agent_id,
        in_progress_at=iso(task.in_progress_at),
        tags=list(task.tags),
        created_by=task.created_by,
        created_at=iso(task.created_at),
        updated_at=iso(task.updated_at),
    )


def comment_read(comment: CommentRow) -> CommentRead:
    return CommentRead(
        id=comment.id,
        task_id=comment.task_id,
        author_kind=comment.author_kind,  # type: ignore[arg-type]
        author_id=comment.author_id,
        message=comment.body,
        created_at=iso(comment.created_at),
    )


def task_page(rows: list[TaskRow], total: int, page: Page) -> TaskPage:
    return TaskPage(
        items=[task_read(t) for t in rows], total=total, limit=page.limit, offset=page.offset
    )


def comment_page(rows: list[CommentRow], total: int, page: Page) -> CommentPage:
    return CommentPage(
        items=[comment_read(c) for c in rows], total=total, limit=page.limit, offset=page.offset
    )


def _ids(call: Call) -> tuple[str, str]:
    info = call.request.match_info
    return info["board_id"], info.get("task_id", "")


def register(api: Api) -> None:
    tags = ("tasks",)
    base = "/api/v1/boards/{board_id}/tasks"

    @api.route(
        "GET",
        base,
        summary="List a board's tasks (filter by status or assignee)",
        tags=tags,
        query=TaskFilter,
        response=TaskPage,
    )
    async def list_board_tasks(call: Call) -> TaskPage:
        board_id, _ = _ids(call)
        q = call.query

        def op(conn: Connection) -> tuple[list[TaskRow], int]:
            require_board_in(conn, board_id)
            return filtered_tasks(conn, board_id, q)

        rows, total = await deps(call.request).db.read(op)
        return task_page(rows, total, q)

    @api.route(
        "POST",
        base,
        summary="Create a task; an assignee must be an agent of the same board",
        tags=tags,
        body=TaskCreate,
        response=TaskRead,
        status=201,
    )
    async def create_board_task(call: Call) -> TaskRead:
        board_id, _ = _ids(call)
        body: TaskCreate = call.body

        clock = deps(call.request).reconciler.clock  # the lifecycle's clock

        def op(conn: Connection, _: None) -> TaskRow:
            return create_task(
                conn,
                board_id,
                title=body.title,
                description=body.description,
                status=body.status,
                priority=body.priority,
                due_at=due_timestamp(body.due_at),
                assigned_agent_id=body.assigned_agent_id,
                created_by=ADMIN_AUTHOR,
                now=clock(),
                tags=body.tags,
            )

        task = await deps(call.request).db.write_checked(
            lambda conn: require_board_in(conn, board_id), op
        )
        log.info("task.created", board_id=board_id, task_id=task.id, status=task.status)
        return task_read(task)

    @api.route("GET", base + "/{task_id}", summary="Read a task", tags=tags, response=TaskRead)
    async def get_board_task(call: Call) -> TaskRead:
        board_id, task_id = _ids(call)
        task = await deps(call.request).db.read(
            lambda conn: require_task_in(conn, board_id, task_id)
        )
        return task_read(task)

    @api.route(
        "PATCH",
        base + "/{task_id}",
        summary="Update a task (only the fields sent)",
        tags=tags,
        body=TaskUpdate,
        response=TaskRead,
    )
    async def patch_board_task(call: Call) -> TaskRead:
        board_id, task_id = _ids(call)
        changes = call.body.changes()

        clock = deps(call.request).reconciler.clock  # the lifecycle's clock

        def op(conn: Connection, before: TaskRow) -> tuple[TaskRow, TaskRow]:
            return before, update_task(conn, before, changes, now=clock())

        before, task = await deps(call.request).db.write_checked(
            lambda conn: require_task_in(conn, board_id, task_id), op
        )
        log.info(
            "task.updated",
            board_id=board_id,
            task_id=task_id,
            fields=sorted(changes),
            status_from=before.status,
            status_to=task.status,
        )
        return task_read(task)

    @api.route(
        "DELETE",
        base + "/{task_id}",
        summary="Delete a task and its comments",
        tags=tags,
        response=Ok,
    )
    async def delete_board_task(call: Call) -> Ok:
        board_id, task_id = _ids(call)
        await deps(call.request).db.write_checked(
            lambda conn: require_task_in(conn, board_id, task_id),
            lambda conn, _: delete_task(conn, board_id, task_id),
        )
        log.info("task.deleted", board_id=board_id, task_id=task_id)
        return Ok()

    @api.route(
        "GET",
        base + "/{task_id}/comments",
        summary="List a task's comments, oldest first",
        tags=tags,
        query=Page,
        response=CommentPage,
    )
    async def list_task_comments(call: Call) -> CommentPage:
        board_id, task_id = _ids(call)
        q = call.query

        def op(conn: Connection) -> tuple[list[CommentRow], int]:
            require_task_in(conn, board_id, task_id)
            return list_comments(conn, task_id, limit=q.limit, offset=q.offset)

        rows, total = await deps(call.request).db.read(op)
        return comment_page(rows, total, q)

    @api.route(
        "POST",
        base + "/{task_id}/comments",
        summary="Comment on a task",
        tags=tags,
        body=CommentCreate,
        response=CommentRead,
        status=201,
    )
    async def create_task_comment(call: Call) -> CommentRead:
        board_id, task_id = _ids(call)
        message = call.body.message

        clock = deps(call.request).reconciler.clock  # the lifecycle's clock

        def op(conn: Connection, _: TaskRow) -> CommentRow:
            return add_comment(
                conn,
                task_id,
                author_kind="user",
                author_id=ADMIN_AUTHOR,
                body=message,
                now=clock(),
            )

        comment = await deps(call.request).db.write_checked(
            lambda conn: require_task_in(conn, board_id, task_id), op
        )
        log.info("task.comment.created", board_id=board_id, task_id=task_id, author_kind="user")
        return comment_read(comment)

    @api.route(
        "GET",
        "/api/v1/boards/{board_id}/tags",
        summary="The tags a board's tasks carry, and how many carry each",
        tags=tags,
        response=BoardTags,
    )
    async def list_board_tags(call: Call) -> BoardTags:
        board_id, _ = _ids(call)

        def op(conn: Connection) -> list[tuple[str, int]]:
            require_board_in(conn, board_id)
            return board_tags_in(conn, board_id)

        rows = await deps(call.request).db.read(op)
        return BoardTags(items=[BoardTag(tag=t, tasks=n) for t, n in rows])
