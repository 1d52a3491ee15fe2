"""Board tasks and their comments in the store.

Every function takes the connection of a store transaction (`conn`), so callers put a
task change in the same commit as whatever caused it (an agent's deletion, for one).
Times are epoch seconds; the API renders them as ISO 8601 UTC.

Rules kept here, once, for the admin and the agent-facing API alike:

- a task is assigned only to an agent of its own board;
- `in_progress_at` is set each time a task enters `in_progress`;
- an agent's deletion unassigns its tasks and puts its `in_progress` ones back in `inbox`.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from hub.boards import BoardAgent, BoardNotFound, may_reach, reachable_board_in
from hub.store.errors import Refusal, StoreError
from hub.store.event_log import add_event

STATUSES = ("inbox", "in_progress", "review", "done")
PRIORITIES = ("low", "medium", "high")


class TaskError(StoreError):
    """A task change the rules refuse; `field` names the input at fault, if one is."""

    def __init__(
        self,
        message: str,
        field: str | None = None,
        *,
        refusal: Refusal = Refusal.INVALID,
        error_type: str = "value_error",
    ) -> None:
        super().__init__(message)
        self.field = field
        self.refusal = refusal
        self.error_type = error_type


@dataclass(frozen=True)
class TaskRow:
    id: str
    board_id: str
    title: str
    description: str
    status: str
    priority: str
    due_at: float | None
    assigned_agent_id: str | None
    in_progress_at: float | None
    created_by: str
    created_at: float
    updated_at: float
    tags: tuple[str, ...] = ()

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> TaskRow:
        values = {f.name: row[f.name] for f in fields(cls) if f.name != "tags"}
        return cls(**values, tags=tuple(json.loads(row["tags"] or "[]")))


# A task row with its tags (sorted), for every query that builds a TaskRow.
_TASK = (
    "SELECT tasks.*, (SELECT json_group_array(tag) FROM "
    "(SELECT tag FROM task_tags WHERE task_id = tasks.id ORDER BY tag) AS ordered) AS tags "
    "FROM tasks"
)
MAX_TAGS = 20
TAG_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9:._/-]{0,63}$"


@dataclass(frozen=True)
class CommentRow:
    id: str
    task_id: str
    author_kind: str
    author_id: str
    body: str
    created_at: float

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> CommentRow:
        return cls(**{f.name: row[f.name] for f in fields(cls)})


def require_board_in(conn: sqlite3.Connection, board_id: str) -> None:
    if conn.execute("SELECT 1 FROM boards WHERE id = ?", (board_id,)).fetchone() is None:
        raise BoardNotFound("board not found")


def check_assignee(conn: sqlite3.Connection, board_id: str, agent_id: str) -> None:
    """Raise TaskError unless `agent_id` is an agent of `board_id`."""
    row = conn.execute("SELECT board_id FROM agents WHERE id = ?", (agent_id,)).fetchone()
    if row is None:
        raise TaskError(f"no agent {agent_id}", "assigned_agent_id")
    if row["board_id"] != board_id:
        raise TaskError(
            f"agent {agent_id} is not on board {board_id}; assign an agent of this board",
            "assigned_agent_id",
        )


def list_tasks(
    conn: sqlite3.Connection,
    board_id: str,
    *,
    status: str | None = None,
    assigned_agent_id: str | None = None,
    tag: str | None = None,
    limit: int,
    offset: int,
) -> tuple[list[TaskRow], int]:
    where = (
        "WHERE board_id = ? AND (? IS NULL OR status = ?) AND (? IS NULL OR assigned_agent_id = ?)"
        " AND (? IS NULL OR EXISTS (SELECT 1 FROM task_tags t WHERE t.task_id = tasks.id"
        " AND t.tag = ?))"
    )
    args = (board_id, status, status, assigned_agent_id, assigned_agent_id, tag, tag)
    total = conn.execute(f"SELECT COUNT(*) FROM tasks {where}", args).fetchone()[0]
    rows = conn.execute(
        f"{_TASK} {where} ORDER BY created_at, id LIMIT ? OFFSET ?",
        (*args, limit, offset),
    ).fetchall()
    return [TaskRow.from_row(r) for r in rows], total


def get_task(conn: sqlite3.Connection, board_id: str, task_id: str) -> TaskRow | None:
    row = conn.execute(f"{_TASK} WHERE id = ? AND board_id = ?", (task_id, board_id)).fetchone()
    return TaskRow.from_row(row) if row else None


def set_task_tags_in(conn: sqlite3.Connection, task_id: str, tags: list[str]) -> None:
    """Replace a task's tags (labels, unique per task)."""
    conn.execute("DELETE FROM task_tags WHERE task_id = ?", (task_id,))
    conn.executemany(
        "INSERT INTO task_tags (task_id, tag) VALUES (?, ?)",
        [(task_id, tag) for tag in dict.fromkeys(tags)],
    )


def board_tags_in(conn: sqlite3.Connection, board_id: str) -> list[tuple[str, int]]:
    """The tags a board's tasks carry, with how many tasks carry each, by name."""
    rows = conn.execute(
        "SELECT t.tag, COUNT(*) FROM task_tags t JOIN tasks k ON k.id = t.task_id "
        "WHERE k.board_id = ? GROUP BY t.tag ORDER BY t.tag",
        (board_id,),
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def create_task(
    conn: sqlite3.Connection,
    board_id: str,
    *,
    title: str,
    description: str = "",
    status: str = "inbox",
    priority: str = "medium",
    due_at: float | None = None,
    assigned_agent_id: str | None = None,
    created_by: str,
    now: float,
    tags: list[str] | None = None,
) -> TaskRow:
    if assigned_agent_id is not None:
        check_assignee(conn, board_id, assigned_agent_id)
    task_id = str(uuid.uuid4())
    conn.execute(
        """INSERT INTO tasks (id, board_id, title, description, status, priority, due_at,
               assigned_agent_id, in_progress_at, created_by, created_at, updated_at)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        (
            task_id,
            board_id,
            title,
            description,
            status,
            priority,
            due_at,
            assigned_agent_id,
            now if status == "in_progress" else None,
            created_by,
            now,
            now,
        ),
    )
    if tags:
        set_task_tags_in(conn, task_id, tags)
    task = get_task(conn, board_id, task_id)
    assert task is not None
    add_event(
        conn, "task.created", board_id=board_id, at=now, task_id=task_id, title=title, by=created_by
    )
    return task


_UPDATABLE = ("title", "description", "status", "priority", "due_at", "assigned_agent_id")


def update_task(
    conn: sqlite3.Connection,
    task: TaskRow,
    changes: dict[str, Any],
    *,
    now: float,
    by: str = "admin",
) -> TaskRow:
    """Apply `changes` (a subset of the updatable columns) to `task`; returns the new row.
    A status change is a `task.moved` event (the activity trail), `by` who moved it."""
    unknown = set(changes) - set(_UPDATABLE) - {"tags"}
    if unknown:
        raise ValueError(f"not updatable: {sorted(unknown)}")
    if changes.get("assigned_agent_id") is not None:
        check_assignee(conn, task.board_id, changes["assigned_agent_id"])
    values = dict(changes)
    if "tags" in values:
        set_task_tags_in(conn, task.id, values.pop("tags"))
        if not values:
            values["updated_at"] = now
    if values.get("status") == "in_progress" and task.status != "in_progress":
        values["in_progress_at"] = now
    if not values:
        return task
    values["updated_at"] = now
    assignments = ", ".join(f"{column} = ?" for column in values)
    conn.execute(f"UPDATE tasks SET {assignments} WHERE id = ?", (*values.values(), task.id))
    updated = get_task(conn, task.board_id, task.id)
    assert updated is not None
    if updated.status != task.status:
        add_event(
            conn,
            "task.moved",
            board_id=task.board_id,
            agent_id=by if by != "admin" else None,
            at=now,
            task_id=task.id,
            title=task.title,
            by=by,
            **{"from": task.status, "to": updated.status},
        )
    return updated


def delete_task(conn: sqlite3.Connection, board_id: str, task_id: str) -> bool:
    """Delete a task and (by cascade) its comments; False if there was none."""
    cursor = conn.execute("DELETE FROM tasks WHERE id = ? AND board_id = ?", (task_id, board_id))
    return cursor.rowcount > 0


def list_comments(
    conn: sqlite3.Connection, task_id: str, *, limit: int, offset: int
) -> tuple[list[CommentRow], int]:
    total = conn.execute(
        "SELECT COUNT(*) FROM task_comments WHERE task_id = ?", (task_id,)
    ).fetchone()[0]
    rows = conn.execute(
        "SELECT * FROM task_comments WHERE task_id = ? ORDER BY created_at, id LIMIT ? OFFSET ?",
        (task_id, limit, offset),
    ).fetchall()
    return [CommentRow.from_row(r) for r in rows], total


def add_comment(
    conn: sqlite3.Connection,
    task_id: str,
    *,
    author_kind: str,
    author_id: str,
    body: str,
    now: float,
) -> CommentRow:
    comment_id = str(uuid.uuid4())
    conn.execute(
        "INSERT INTO task_comments (id, task_id, author_kind, author_id, body, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (comment_id, task_id, author_kind, author_id, body, now),
    )
    row = conn.execute("SELECT * FROM task_comments WHERE id = ?", (comment_id,)).fetchone()
    board = conn.execute("SELECT board_id FROM tasks WHERE id = ?", (task_id,)).fetchone()
    add_event(
        conn,
        "task.commented",
        board_id=board[0] if board else None,
        agent_id=author_id if author_kind == "agent" else None,
        at=now,
        task_id=task_id,
        by=author_kind,
    )
    return CommentRow.from_row(row)


def unassign_agent_tasks(conn: sqlite3.Connection, agent_id: str, *, now: float) -> int:
    """An agent is going away: unassign its tasks, and put its in-progress ones back in the
    inbox so another agent picks them up. Returns how many tasks changed."""
    cursor = conn.execute(
        """UPDATE tasks SET assigned_agent_id = NULL, updated_at = ?,
               status = CASE WHEN status = 'in_progress' THEN 'inbox' ELSE status END
           WHERE assigned_agent_id = ?""",
        (now, agent_id),
    )
    if cursor.rowcount:
        add_event(conn, "agent.tasks.unassigned", agent_id=agent_id, at=now, tasks=cursor.rowcount)
    return cursor.rowcount


def task_on_board_in(conn: sqlite3.Connection, board_id: str, task_id: str) -> TaskRow:
    task = get_task(conn, board_id, task_id)
    if task is None:
        raise TaskError("task not found on this board", refusal=Refusal.NOT_FOUND)
    return task


def require_task_in(conn: sqlite3.Connection, board_id: str, task_id: str) -> TaskRow:
    """The task on its board; BoardNotFound or TaskError (not found) otherwise."""
    require_board_in(conn, board_id)
    return task_on_board_in(conn, board_id, task_id)


# ------------------------------------------------------------ agents' own rules


def reachable_task_in(
    conn: sqlite3.Connection, agent: BoardAgent, board_id: str, task_id: str
) -> tuple[sqlite3.Row, TaskRow]:
    """The board and task a board agent may change; BoardForbidden or TaskError otherwise."""
    board = reachable_board_in(conn, agent, board_id)
    if agent.board_id is None:
        raise TaskError(
            "a gateway main agent reads its gateway's boards; tasks are changed by the "
            "board's own agents (message the board lead instead)",
            refusal=Refusal.FORBIDDEN,
        )
    return board, task_on_board_in(conn, board_id, task_id)


def task_reachable_by(conn: sqlite3.Connection, agent: BoardAgent, task_id: str) -> bool:
    """Whether the task lies on a board the agent may reach (a heartbeat's current task)."""
    row = conn.execute(
        "SELECT t.board_id, b.gateway_id FROM tasks t JOIN boards b ON b.id = t.board_id "
        "WHERE t.id = ?",
        (task_id,),
    ).fetchone()
    return row is not None and may_reach(agent, row[0], row[1])


@dataclass(frozen=True)
class TaskApprovalState:
    """Whether an approved, or a pending, approval names the task (hub/approvals.py)."""

    approved: bool = False
    pending: bool = False


def agent_task_changes(
    agent: BoardAgent,
    board: sqlite3.Row,
    task: TaskRow,
    sent: Mapping[str, Any],
    approvals: TaskApprovalState | None = None,
) -> dict[str, Any]:
    """The columns an agent's change to `task` may set, under its board's rules.

    `sent` holds only what the agent sent: `status`, `assigned_agent_id`, `comment`.
    Workers move their own (or unassigned) tasks; the lead also assigns. Every rule the
    agents' files state is checked here: only the lead changes status, review before
    done, a comment for review, an approved approval for done, no status change while
    an approval is pending. Raises TaskError saying which rule refused and what to do.
    """
    is_lead = agent.is_board_lead
    approvals = approvals or TaskApprovalState()
    if not is_lead and task.assigned_agent_id not in (None, agent.id):
        raise TaskError(
            "this task is assigned to another agent; only the board lead may change it",
            refusal=Refusal.FORBIDDEN,
        )
    changes: dict[str, Any] = {}
    if "assigned_agent_id" in sent:
        if not is_lead:
            raise TaskError("only the board lead assigns tasks", refusal=Refusal.FORBIDDEN)
        changes["assigned_agent_id"] = sent["assigned_agent_id"]
    status = sent.get("status")
    if status is not None and status != task.status:
        if board["only_lead_can_change_status"] and not is_lead:
            raise TaskError(
                "on this board only the lead changes a task's status", refusal=Refusal.FORBIDDEN
            )
        if board["block_status_changes_with_pending_approval"] and approvals.pending:
            raise TaskError(
                "an approval naming this task is pending, and this board blocks status "
                "changes meanwhile; wait for it to be resolved",
                refusal=Refusal.CONFLICT,
            )
        if status == "done" and board["require_approval_for_done"] and not approvals.approved:
            board_id = board["id"]
            raise TaskError(
                "this board requires an approved approval before done: "
                + (
                    f"request one (POST /boards/{board_id}/approvals with this task in "
                    "task_ids, see APPROVALS.md) and move the task once it is approved"
                    if is_lead
                    else "move the task to review and ask your lead to request one"
                ),
                refusal=Refusal.CONFLICT,
            )
        if status == "done" and board["require_review_before_done"] and task.status != "review":
            raise TaskError(
                "this board requires review before done: move the task to review first",
                refusal=Refusal.CONFLICT,
            )
        if status == "review" and board["comment_required_for_review"] and not sent.get("comment"):
            raise TaskError(
                "this board requires a comment when a task moves to review",
                "comment",
                error_type="missing",
            )
        changes["status"] = status
        if status == "in_progress" and task.assigned_agent_id is None:
            changes.setdefault("assigned_agent_id", agent.id)  # taking up a task claims it
    return changes


# ------------------------------------------------------------------ reads (dashboard)


def task_status_counts_in(
    conn: sqlite3.Connection, board_ids: list[str] | None = None
) -> dict[str, dict[str, int]]:
    """Tasks per status for each board named (None: every board, keyed "*" in total)."""
    if board_ids is None:
        rows = conn.execute("SELECT '*', status, COUNT(*) FROM tasks GROUP BY status").fetchall()
    elif not board_ids:
        return {}
    else:
        marks = ", ".join("?" for _ in board_ids)
        rows = conn.execute(
            f"SELECT board_id, status, COUNT(*) FROM tasks WHERE board_id IN ({marks}) "
            "GROUP BY board_id, status",
            board_ids,
        ).fetchall()
    counts: dict[str, dict[str, int]] = {}
    for board_id, status, count in rows:
        counts.setdefault(board_id, {})[status] = int(count)
    return counts


def tasks_done_between_in(
    conn: sqlite3.Connection, since: float, until: float, bucket_s: float
) -> list[int]:
    """Tasks finished per bucket of `bucket_s` from `since` to `until`, by the time a done
    task last changed (a task is done once; reopening moves it out of done)."""
    buckets = [0] * max(1, int((until - since) // bucket_s))
    rows = conn.execute(
        """SELECT CAST((updated_at - ?) / ? AS INTEGER), COUNT(*) FROM tasks
           WHERE status = 'done' AND updated_at >= ? AND updated_at < ? GROUP BY 1""",
        (since, bucket_s, since, until),
    ).fetchall()
    for index, count in rows:
        if 0 <= index < len(buckets):
            buckets[index] = int(count)
    return buckets
