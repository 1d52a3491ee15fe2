"""Where the dashboard meets work that has not landed yet (Mission Control parity, fleet).

Each function here answers "not available" today, and each is the one place to change
when its backend lands; the templates already draw the answer when there is one.

| seam | today | fill with |
|---|---|---|
| `approvals_waiting_in` | None: the board page says they arrive later | pending approvals |
| `pause_state` | None: no pause/resume buttons | whether the agent (or board) is paused |
| `PAUSE_ACTIONS` | empty: no routes | the pause and resume handlers (actions.py) |
| `activity_in` | None: the activity page says the feed arrives later | a page of the feed |
| `rollouts_in` | None: the rollouts page says so | rollouts with their waves |
| `gateway_labels` | the row's `labels` if it has any, else () | the fleet work's labels |
| `LABEL_FILTER` | False: the fleet page has no label filter | True once gateways have labels |
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

# When True, the fleet page shows a label filter and passes `label` to the fleet read.
LABEL_FILTER = False


@dataclass(frozen=True)
class Approval:
    id: str
    title: str
    created_at: float
    task_id: str | None = None


def approvals_waiting_in(conn: sqlite3.Connection, board_id: str) -> list[Approval] | None:
    """The board's approvals waiting for a decision; None until approvals exist."""
    return None


@dataclass(frozen=True)
class PauseState:
    paused: bool
    since: float | None = None


def pause_state(agent_or_board: dict[str, Any]) -> PauseState | None:
    """Whether an agent (from `agent_json`) or a board is paused; None until pause exists.

    With an answer, the agent and board pages show a Pause or a Resume button that posts
    to /ui/agents/{id}/pause or /resume (/ui/boards/{id}/…), handled by PAUSE_ACTIONS."""
    return None


# (method, path, handler) routes for pause/resume, mounted beside the other actions.
PAUSE_ACTIONS: tuple[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]], ...]
PAUSE_ACTIONS = ()


def activity_in(
    conn: sqlite3.Connection, *, before_id: int | None, limit: int
) -> list[dict[str, Any]] | None:
    """One page of the activity feed, newest first; None until the feed exists."""
    return None


def rollouts_in(conn: sqlite3.Connection, *, limit: int) -> list[dict[str, Any]] | None:
    """Rollouts with their waves' progress, newest first; None until rollouts exist.
    Live per-wave progress: publish a "rollout" event on the bus; live.js refreshes
    pages whose scope is "all" on every event."""
    return None


def gateway_labels(row: Any) -> tuple[str, ...]:
    """A gateway's labels, when the fleet work has given gateways labels."""
    labels = getattr(row, "labels", None)
    return tuple(labels) if labels else ()
