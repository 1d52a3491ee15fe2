"""Approvals: a board lead asks, an admin approves or rejects, the lead hears the outcome.

A lead asks through its local API for an action it may not take alone (`action_type`,
a `payload` saying what exactly, its `confidence`, rubric scores, the tasks it is
about). An admin resolves it once; the resolution wakes the lead with the outcome (a
message, hub/messages.py) in the same transaction. The board's rules use approvals:

- `require_approval_for_done`: an agent moves a task to `done` only when an approved
  approval names it;
- `block_status_changes_with_pending_approval`: while one that names it is pending, an
  agent does not change the task's status at all.

Requests and resolutions are events of the board's activity trail (`approval.*`), which
the approvals stream serves (their ids resume it by Last-Event-ID).
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from hub.boards import BoardAgent, BoardNotFound
from hub.messages import MessageRefused, message_agent_in
from hub.provisioning.agents import load_agent
from hub.store.database import Connection
from hub.store.errors import Refusal, StoreError
from hub.store.event_log import add_event
from hub.tasks import TaskApprovalState
from missioncontrol.log import get_logger
from missioncontrol.timefmt import iso

log = get_logger("hub.approvals")

STATUSES = ("pending", "approved", "rejected")
MAX_TASKS = 50


class ApprovalError(StoreError):
    def __init__(self, message: str, refusal: Refusal = Refusal.INVALID) -> None:
        super().__init__(message)
        self.refusal = refusal


def approval_view(conn: sqlite3.Connection, row: sqlite3.Row) -> dict[str, Any]:
    tasks = [
        r[0]
        for r in conn.execute(
            "SELECT task_id FROM approval_tasks WHERE approval_id = ? ORDER BY task_id",
            (row["id"],),
        )
    ]
    return {
        "id": row["id"],
        "board_id": row["board_id"],
        "agent_id": row["agent_id"],
        "action_type": row["action_type"],
        "payload": json.loads(row["payload"]),
        "confidence": row["confidence"],
        "rubric_scores": json.loads(row["rubric_scores"]),
        "task_ids": tasks,
        "task_id": tasks[0] if tasks else None,  # Mission Control's single task
        "status": row["status"],
        "resolution": row["resolution"],
        "resolved_by": row["resolved_by"],
        "created_at": iso(row["created_at"]),
        "resolved_at": iso(row["resolved_at"]),
    }


def _board_in(conn: sqlite3.Connection, board_id: str) -> None:
    if conn.execute("SELECT 1 FROM boards WHERE id = ?", (board_id,)).fetchone() is None:
        raise BoardNotFound(f"board {board_id} does not exist")


def request_approval_in(
    conn: Connection,
    board_id: str,
    agent: BoardAgent,
    *,
    action_type: str,
    payload: Mapping[str, Any],
    confidence: float | None,
    rubric_scores: Mapping[str, float],
    task_ids: Sequence[str],
    now: float,
) -> dict[str, Any]:
    """A lead's request; ApprovalError when a worker asks or a task is not on the board."""
    _board_in(conn, board_id)
    if not agent.is_board_lead:
        raise ApprovalError(
            "only the board lead asks for approvals; comment on the task and ask your lead",
            Refusal.FORBIDDEN,
        )
    tasks = list(dict.fromkeys(task_ids))
    for task_id in tasks:
        row = conn.execute("SELECT board_id FROM tasks WHERE id = ?", (task_id,)).fetchone()
        if row is None or row[0] != board_id:
            raise ApprovalError(f"task_ids: task {task_id} is not on board {board_id}")
    approval_id = str(uuid.uuid4())
    conn.execute(
        """INSERT INTO approvals (id, board_id, agent_id, action_type, payload, confidence,
               rubric_scores, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
        (
            approval_id,
            board_id,
            agent.id,
            action_type,
            json.dumps(dict(payload)),
            confidence,
            json.dumps(dict(rubric_scores)),
            now,
        ),
    )
    conn.executemany(
        "INSERT INTO approval_tasks (approval_id, task_id) VALUES (?, ?)",
        [(approval_id, task_id) for task_id in tasks],
    )
    view = require_approval_in(conn, board_id, approval_id)
    add_event(
        conn,
        "approval.requested",
        board_id=board_id,
        agent_id=agent.id,
        at=now,
        approval_id=approval_id,
        action_type=action_type,
        approval=view,
    )
    return view


def require_approval_in(
    conn: sqlite3.Connection, board_id: str, approval_id: str
) -> dict[str, Any]:
    row = conn.execute(
        "SELECT * FROM approvals WHERE id = ? AND board_id = ?", (approval_id, board_id)
    ).fetchone()
    if row is None:
        raise ApprovalError(f"no approval {approval_id} on board {board_id}", Refusal.NOT_FOUND)
    return approval_view(conn, row)


def list_approvals_in(
    conn: sqlite3.Connection, board_id: str, *, status: str | None, limit: int, offset: int
) -> tuple[list[dict[str, Any]], int]:
    """One page of the board's approvals, newest first."""
    _board_in(conn, board_id)
    where = "WHERE board_id = ? AND (? IS NULL OR status = ?)"
    args = (board_id, status, status)
    total = conn.execute(f"SELECT COUNT(*) FROM approvals {where}", args).fetchone()[0]
    rows = conn.execute(
        f"SELECT * FROM approvals {where} ORDER BY created_at DESC, id LIMIT ? OFFSET ?",
        (*args, limit, offset),
    ).fetchall()
    return [approval_view(conn, r) for r in rows], total


def resolve_approval_in(
    conn: Connection,
    board_id: str,
    approval_id: str,
    *,
    status: str,
    resolution: str,
    resolved_by: str,
    now: float,
) -> dict[str, Any]:
    """Approve or reject once; the lead who asked (else the board's lead) is woken with the
    outcome in the same transaction. ApprovalError (conflict) if already resolved."""
    if status not in ("approved", "rejected"):
        raise ApprovalError("status must be approved or rejected")
    before = require_approval_in(conn, board_id, approval_id)
    if before["status"] != "pending":
        raise ApprovalError(
            f"approval {approval_id} was already {before['status']} at {before['resolved_at']}",
            Refusal.CONFLICT,
        )
    conn.execute(
        "UPDATE approvals SET status = ?, resolution = ?, resolved_by = ?, resolved_at = ? "
        "WHERE id = ?",
        (status, resolution, resolved_by, now, approval_id),
    )
    view = require_approval_in(conn, board_id, approval_id)
    woken = _tell_lead_in(conn, view, now)
    add_event(
        conn,
        "approval.resolved",
        board_id=board_id,
        agent_id=view["agent_id"],
        at=now,
        approval_id=approval_id,
        action_type=view["action_type"],
        status=status,
        lead_woken=woken,
        approval=view,
    )
    return view


def _tell_lead_in(conn: Connection, view: Mapping[str, Any], now: float) -> bool:
    """Wake the lead with the outcome; False (logged) when no lead can hear it now."""
    lead = load_agent(conn, view["agent_id"]) if view["agent_id"] else None
    if lead is None:
        row = conn.execute(
            "SELECT id FROM agents WHERE board_id = ? AND kind = 'lead'", (view["board_id"],)
        ).fetchone()
        lead = load_agent(conn, row[0]) if row else None
    if lead is None:
        return False
    tasks = ", ".join(view["task_ids"]) or "none"
    next_step = (
        "Go ahead: carry it out, and move its tasks on as the board's rules allow."
        if view["status"] == "approved"
        else "Do not carry it out. Revise the plan or ask again with what was missing."
    )
    body = (
        f"Your approval request {view['id']} ({view['action_type']}) was {view['status']}"
        f" by {view['resolved_by']}."
        + (f"\nReason: {view['resolution']}" if view["resolution"] else "")
        + f"\nLinked tasks: {tasks}\n{next_step}"
    )
    try:
        message_agent_in(
            conn, lead, sender="the approvals desk", body=body, kind="approval", now=now
        )
    except MessageRefused as exc:
        log.info("approval.lead.not_woken", approval_id=view["id"], why=str(exc))
        return False
    return True


def task_approvals_in(conn: sqlite3.Connection, task_id: str) -> TaskApprovalState:
    """Whether approved, or pending, approvals name the task (the board's task rules)."""
    rows = conn.execute(
        "SELECT DISTINCT a.status FROM approvals a JOIN approval_tasks t ON t.approval_id = a.id "
        "WHERE t.task_id = ?",
        (task_id,),
    ).fetchall()
    statuses = {r[0] for r in rows}
    return TaskApprovalState(approved="approved" in statuses, pending="pending" in statuses)


def pending_approvals_in(
    conn: sqlite3.Connection, board_id: str, *, limit: int
) -> list[dict[str, Any]]:
    """The board's pending approvals, oldest first: id, a title, when, the first task."""
    rows = conn.execute(
        """SELECT a.id, a.action_type, a.created_at,
                  (SELECT task_id FROM approval_tasks t WHERE t.approval_id = a.id
                   ORDER BY task_id LIMIT 1) AS task_id
           FROM approvals a WHERE a.board_id = ? AND a.status = 'pending'
           ORDER BY a.created_at, a.id LIMIT ?""",
        (board_id, limit),
    ).fetchall()
    return [
        {
            "id": r["id"],
            "title": r["action_type"],
            "created_at": r["created_at"],
            "task_id": r["task_id"],
        }
        for r in rows
    ]
