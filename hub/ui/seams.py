"""Where the dashboard meets work that has not landed yet (Mission Control parity, fleet).

Each function here answers "not available" today, and each is the one place to change
when its backend lands; the templates already draw the answer when there is one.

| seam | today | fill with |
|---|---|---|
| `approvals_waiting_in` | the board's pending approvals (hub/approvals.py) | (filled) |
| `pause_state` | whether the agent (or board) is paused | (filled) |
| `PAUSE_ACTIONS` | empty: the pause and resume forms are Actions' own (actions.py) | (filled) |
| `activity_in` | a page of the activity trail (hub/activity.py) | (filled) |
| `rollouts_in` | rollouts with their waves (hub/fleet/store.py) | (filled) |
| `gateway_labels` | a gateway's labels as `key=value` (hub/store/gateways.py) | (filled) |
| `LABEL_FILTER` | True: the fleet page filters by a label selector | (filled) |
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web

from hub.activity import ActivityFilter, activity_before_in, summary
from hub.approvals import pending_approvals_in
from hub.fleet.store import rollouts_in as fleet_rollouts_in

# When True, the fleet page shows a label filter and passes `label` to the fleet read.
LABEL_FILTER = True


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
    """Rollouts with their waves' progress, newest first. Live: the rollout driver
    publishes a "rollout" event on the bus at each step; live.js refreshes pages whose
    scope is "all" on every event."""
    rows, _ = fleet_rollouts_in(conn, status=None, limit=limit, offset=0)
    items = []
    for row in rows:
        waves: list[dict[str, Any]] = [
            {"index": i + 1, "size": 0, "counts": {}} for i in range(row.wave_count)
        ]
        for wave, state, count in conn.execute(
            "SELECT wave, state, COUNT(*) FROM rollout_targets WHERE rollout_id = ? "
            "GROUP BY wave, state",
            (row.id,),
        ):
            waves[wave]["size"] += count
            waves[wave]["counts"][state] = count
        items.append(
            {
                "id": row.id,
                "name": row.name or str(row.change.get("kind")),
                "status": str(row.status),
                "reason": row.reason,
                "selector": row.selector,
                "change": str(row.change.get("kind")),
                "current_wave": row.current_wave + 1,
                "wave_count": row.wave_count,
                "created_at": row.created_at,
                "waves": waves,
            }
        )
    return items


def gateway_labels(labels: Mapping[str, str] | None) -> tuple[str, ...]:
    """A gateway's labels as `key=value`, sorted by key."""
    return tuple(f"{k}={v}" for k, v in sorted((labels or {}).items()))
