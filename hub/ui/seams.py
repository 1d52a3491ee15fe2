"""Where the dashboard meets work that has not landed yet (Mission Control parity, fleet).

Each function here answers "not available" today, and each is the one place to change
when its backend lands; the templates already draw the answer when there is one.

| seam | today | fill with |
|---|---|---|
| `approvals_waiting_in` | the board's pending approvals (hub/approvals.py) | (filled) |
| `pause_state` | whether the agent (or board) is paused | (filled) |
| `PAUSE_ACTIONS` | empty: the pause and resume forms are Actions' own (actions.py) | (filled) |
| `activity_in` | a page of the activity trail (hub/activity.py) | (filled) |
| `rollouts_in` | None: the rollouts page says so | rollouts with their waves |
| `gateway_labels` | the row's `labels` if it has any, else () | the fleet work's labels |
| `LABEL_FILTER` | False: the fleet page has no label filter | True once gateways have labels |
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web

from hub.activity import ActivityFilter, activity_before_in, summary
from hub.approvals import pending_approvals_in

# When True, the fleet page shows a label filter and passes `label` to the fleet read.
LABEL_FILTER = False


@dataclass(frozen=True)
class Approval:
    id: str
    title: str
    created_at: float
    task_id: str | None = None


def approvals_waiting_in(conn: sqlite3.Connection, board_id: str) -> list[Approval] | None:
    """The board's approvals waiting for a decision, oldest first."""
    return [
        Approval(id=a["id"], title=a["title"], created_at=a["created_at"], task_id=a["task_id"])
        for a in pending_approvals_in(conn, board_id, limit=50)
    ]


@dataclass(frozen=True)
class PauseState:
    paused: bool
    since: float | None = None


def pause_state(agent_or_board: dict[str, Any]) -> PauseState | None:
    """Whether an agent (from `agent_json`) or a board (its row) is paused.

    The agent and board pages show a Pause or a Resume button that posts to
    /ui/agents/{id}/pause or /resume (/ui/boards/{id}/…), handled in actions.py."""
    since = agent_or_board.get("paused_at")
    if isinstance(since, str):
        since = datetime.fromisoformat(since.replace("Z", "+00:00")).timestamp()
    return PauseState(paused=since is not None, since=since)


# (method, path, handler) routes for pause/resume, mounted beside the other actions; the
# pause and resume forms are Actions' own methods (they need the hub's services).
PAUSE_ACTIONS: tuple[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]], ...]
PAUSE_ACTIONS = ()


def activity_in(
    conn: sqlite3.Connection, *, before_id: int | None, limit: int
) -> list[dict[str, Any]] | None:
    """One page of the activity trail, newest first, each with its one-line summary."""
    rows = activity_before_in(conn, ActivityFilter(), before_id=before_id, limit=limit)
    return [{**row, "title": summary(row["kind"], row["detail"])} for row in rows]


def rollouts_in(conn: sqlite3.Connection, *, limit: int) -> list[dict[str, Any]] | None:
    """Rollouts with their waves' progress, newest first; None until rollouts exist.
    Live per-wave progress: publish a "rollout" event on the bus; live.js refreshes
    pages whose scope is "all" on every event."""
    return None


def gateway_labels(row: Any) -> tuple[str, ...]:
    """A gateway's labels, when the fleet work has given gateways labels."""
    labels = getattr(row, "labels", None)
    return tuple(labels) if labels else ()
