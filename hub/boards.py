"""Boards in the store: rows, their goal and rules, and deletion through the sidecars."""

from __future__ import annotations

import json
import re
import sqlite3
import time
import uuid
from typing import Any, Protocol

from hub.board_groups import check_group_in
from hub.provisioning.rendering import BoardProfile, BoardRules
from hub.store.errors import Refusal, StoreError
from hub.store.event_log import add_event

RULES = (
    "require_approval_for_done",
    "require_review_before_done",
    "comment_required_for_review",
    "block_status_changes_with_pending_approval",
    "only_lead_can_change_status",
)
EDITABLE = (
    "name",
    "description",
    "board_type",
    "objective",
    "success_metrics",
    "target_date",
    "goal_confirmed",
    "max_agents",
    "board_group_id",
    *RULES,
)


# What a board's own agents read of it.
AGENT_BOARD_COLUMNS = (
    "id, gateway_id, name, slug, description, board_type, objective, status, "
    "require_approval_for_done, require_review_before_done, comment_required_for_review, "
    "block_status_changes_with_pending_approval, only_lead_can_change_status, max_agents, "
    "created_at, updated_at"
)


class BoardNotFound(StoreError):
    refusal = Refusal.NOT_FOUND


class BoardForbidden(StoreError):
    """An agent asked for a board it may not reach (whether or not the board exists)."""

    refusal = Refusal.FORBIDDEN


class BoardAgent(Protocol):
    """The agent a request acts as, as far as board rules care."""

    @property
    def id(self) -> str: ...

    @property
    def gateway_id(self) -> str: ...

    @property
    def board_id(self) -> str | None: ...

    @property
    def is_board_lead(self) -> bool: ...

    @property
    def is_gateway_main(self) -> bool: ...


def may_reach(agent: BoardAgent, board_id: str, board_gateway_id: str) -> bool:
    """The one access rule: a board agent its own board, a main agent its gateway's boards."""
    if agent.board_id is not None:
        return board_id == agent.board_id
    return agent.is_gateway_main and board_gateway_id == agent.gateway_id


def reachable_board_in(conn: sqlite3.Connection, agent: BoardAgent, board_id: str) -> sqlite3.Row:
    """The board row as agents see it; BoardForbidden when the agent may not reach it, also
    when there is none, so the answer is no oracle for other tenants' board ids."""
    row = None
    if agent.board_id is None or agent.board_id == board_id:
        row = conn.execute(
            f"SELECT {AGENT_BOARD_COLUMNS} FROM boards WHERE id = ?", (board_id,)
        ).fetchone()
    if row is None or not may_reach(agent, row["id"], row["gateway_id"]):
        raise BoardForbidden(f"this agent may not access board {board_id}")
    return row


def agent_boards_in(
    conn: sqlite3.Connection, agent: BoardAgent, limit: int, offset: int
) -> tuple[list[sqlite3.Row], int]:
    """The boards an agent may reach: its own, or (main agent) its gateway's."""
    if agent.board_id is not None:
        where, args = "WHERE id = ?", (agent.board_id,)
    else:
        where, args = "WHERE gateway_id = ?", (agent.gateway_id,)
    total = conn.execute(f"SELECT COUNT(*) FROM boards {where}", args).fetchone()[0]
    rows = conn.execute(
        f"SELECT {AGENT_BOARD_COLUMNS} FROM boards {where} "
        "ORDER BY created_at, id LIMIT ? OFFSET ?",
        (*args, limit, offset),
    ).fetchall()
    return rows, total


def list_boards_in(
    conn: sqlite3.Connection,
    gateway_id: str | None,
    limit: int,
    offset: int,
    *,
    board_group_id: str | None = None,
) -> tuple[list[dict[str, Any]], int]:
    where = "WHERE (? IS NULL OR gateway_id = ?) AND (? IS NULL OR board_group_id = ?)"
    args = (gateway_id, gateway_id, board_group_id, board_group_id)
    total = conn.execute(f"SELECT COUNT(*) FROM boards {where}", args).fetchone()[0]
    rows = conn.execute(
        f"SELECT * FROM boards {where} ORDER BY created_at, id LIMIT ? OFFSET ?",
        (*args, limit, offset),
    ).fetchall()
    return [board_dict(r) for r in rows], total


def board_gateway_in(conn: sqlite3.Connection, board_id: str) -> str:
    """The gateway a board is on; BoardNotFound if there is no such board."""
    row = conn.execute("SELECT gateway_id FROM boards WHERE id = ?", (board_id,)).fetchone()
    if row is None:
        raise BoardNotFound("board not found")
    return str(row["gateway_id"])


def board_dict(row: sqlite3.Row) -> dict[str, Any]:
    values = dict(row)
    values["success_metrics"] = json.loads(values["success_metrics"])
    for key in ("goal_confirmed", *RULES):
        values[key] = bool(values[key])
    return values


def load_board(conn: sqlite3.Connection, board_id: str) -> dict[str, Any]:
    row = conn.execute("SELECT * FROM boards WHERE id = ?", (board_id,)).fetchone()
    if row is None:
        raise BoardNotFound(f"board {board_id} does not exist")
    return board_dict(row)


def create_board(
    conn: sqlite3.Connection, gateway_id: str, fields: dict[str, Any]
) -> dict[str, Any]:
    now = time.time()
    board_id = str(uuid.uuid4())
    name = fields["name"]
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or board_id
    conn.execute(
        "INSERT INTO boards (id, gateway_id, name, slug, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (board_id, gateway_id, name, slug, now, now),
    )
    update_board(conn, board_id, {k: v for k, v in fields.items() if k != "name"}, now=now)
    add_event(conn, "board.created", gateway_id=gateway_id, at=now, board_id=board_id)
    return load_board(conn, board_id)


def update_board(
    conn: sqlite3.Connection, board_id: str, fields: dict[str, Any], *, now: float | None = None
) -> dict[str, Any]:
    load_board(conn, board_id)
    changes = {k: v for k, v in fields.items() if k in EDITABLE}
    if changes.get("board_group_id") is not None:
        check_group_in(conn, changes["board_group_id"])
    if "success_metrics" in changes:
        changes["success_metrics"] = json.dumps(changes["success_metrics"])
    if changes:
        assignments = ", ".join(f"{key} = ?" for key in changes)  # keys from EDITABLE only
        conn.execute(
            f"UPDATE boards SET {assignments}, updated_at = ? WHERE id = ?",
            (*changes.values(), now or time.time(), board_id),
        )
    return load_board(conn, board_id)


def board_profile(conn: sqlite3.Connection, board_id: str) -> BoardProfile | None:
    """What the templates know about a board."""
    try:
        board = load_board(conn, board_id)
    except BoardNotFound:
        return None
    return _profile(board)


def board_profiles_in(conn: sqlite3.Connection, board_ids: list[str]) -> dict[str, BoardProfile]:
    """`board_profile` for many boards in one query; a board that does not exist is absent."""
    if not board_ids:
        return {}
    rows = conn.execute(
        "SELECT * FROM boards WHERE id IN (SELECT value FROM json_each(?))",
        (json.dumps(board_ids),),
    ).fetchall()
    return {row["id"]: _profile(board_dict(row)) for row in rows}


def _profile(board: dict[str, Any]) -> BoardProfile:
    return BoardProfile(
        id=board["id"],
        name=board["name"],
        board_type=board["board_type"],
        description=board["description"],
        objective=board["objective"],
        success_metrics=board["success_metrics"],
        target_date=board["target_date"],
        goal_confirmed=board["goal_confirmed"],
        rules=BoardRules(**{k: board[k] for k in RULES}, max_agents=board["max_agents"]),
    )


def set_board_paused_in(
    conn: sqlite3.Connection, board_id: str, paused_at: float | None, now: float
) -> None:
    conn.execute(
        "UPDATE boards SET paused_at = ?, updated_at = ? WHERE id = ?", (paused_at, now, board_id)
    )
    add_event(conn, "board.paused" if paused_at else "board.resumed", board_id=board_id, at=now)


def finish_deleting(conn: sqlite3.Connection, board_id: str | None) -> bool:
    """Delete a board marked `deleting` once its last agent is gone; True if deleted."""
    if board_id is None:
        return False
    row = conn.execute("SELECT status FROM boards WHERE id = ?", (board_id,)).fetchone()
    if row is None or row[0] != "deleting":
        return False
    if conn.execute("SELECT 1 FROM agents WHERE board_id = ? LIMIT 1", (board_id,)).fetchone():
        return False
    conn.execute("DELETE FROM boards WHERE id = ?", (board_id,))
    add_event(conn, "board.deleted", board_id=board_id)
    return True


def board_names_in(conn: sqlite3.Connection, board_ids: list[str]) -> dict[str, str]:
    if not board_ids:
        return {}
    marks = ", ".join("?" for _ in board_ids)
    rows = conn.execute(f"SELECT id, name FROM boards WHERE id IN ({marks})", board_ids)
    return {r[0]: r[1] for r in rows}


def board_count_in(conn: sqlite3.Connection, gateway_id: str | None = None) -> int:
    return int(
        conn.execute(
            "SELECT COUNT(*) FROM boards WHERE (? IS NULL OR gateway_id = ?)",
            (gateway_id, gateway_id),
        ).fetchone()[0]
    )
