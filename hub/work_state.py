"""What an agent says it is doing, kept beside the lifecycle's status.

The lifecycle owns `status` (provisioning, updating, online, offline, deleting): it
follows check-ins, wakes and deadlines, and no caller sets it. An agent's heartbeat may
carry its own word for its work (`{"status": "active", "current_task_id": ...}`, as
Mission Control's agents send); the hub keeps that word (`reported_status`), its
meaning (`work_state`) and the task, and shows them beside the status. Mission
Control's states map onto ours like this (the README's table says the same):

| Mission Control | here |
|---|---|
| `provisioning` | `status: provisioning` (never checked in) |
| `ready` | `status: online`; an agent reporting `ready` has `work_state: idle` |
| `active` | `status: online`, `work_state: active` |
| `idle` | `status: online`, `work_state: idle` |
| `paused` | `paused: true` (POST .../pause); the status stays the lifecycle's |
| `deleted` | `status: deleting`, then the row is gone (the agent stream sends `deleted`) |

A beat with a status replaces the task (none given: none); a beat with neither leaves
both alone, so a plain check-in costs nothing here. No row per heartbeat anywhere.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping

from hub.store.database import Connection
from missioncontrol.agent_api import MAX_STATUS_CHARS, MAX_TASK_ID_CHARS
from missioncontrol.text import displayable
from protos import link_pb2 as pb


class WorkState(enum.StrEnum):
    ACTIVE = "active"  # working on something
    IDLE = "idle"  # nothing to do, ready for work
    BLOCKED = "blocked"  # waiting on someone or something
    PAUSED = "paused"  # the agent says it stopped itself (not the lifecycle's pause)
    OTHER = "other"  # a word the hub does not know; `reported_status` has it


# The words agents send, by meaning. Liveness words ("healthy", "ok", Mission Control's
# cron workaround) say nothing about work: they leave the work state alone.
_WORDS: Mapping[WorkState | None, tuple[str, ...]] = {
    WorkState.ACTIVE: ("active", "working", "busy", "in_progress", "running", "executing"),
    WorkState.IDLE: ("idle", "ready", "waiting", "available", "done", "standby"),
    WorkState.BLOCKED: ("blocked", "stuck", "degraded", "error", "failed", "needs_help"),
    WorkState.PAUSED: ("paused", "sleeping"),
    None: ("healthy", "ok", "online", "alive", "up", "heartbeat"),
}
_MEANING = {word: state for state, words in _WORDS.items() for word in words}


def work_state_for(reported: str) -> WorkState | None:
    """What a reported status word means; None for no word or a mere liveness word."""
    word = reported.strip().lower().replace("-", "_").replace(" ", "_")
    if not word:
        return None
    return _MEANING.get(word, WorkState.OTHER)


def record_work_states_in(
    conn: Connection,
    beats: Iterable[tuple[str, pb.AgentHeartbeat]],
    seen: Mapping[tuple[str, str], float],
) -> int:
    """Keep what each beat that says something reports (`beats`: gateway id and beat);
    `seen` holds each beat's clamped time by gateway and gateway agent id. One statement
    for them all; returns the beats kept."""
    rows = []
    for gateway_id, beat in beats:
        if not beat.status and not beat.current_task_id:  # most beats: liveness alone
            continue
        status = displayable(beat.status.strip(), max_chars=MAX_STATUS_CHARS)
        task = displayable(beat.current_task_id.strip(), max_chars=MAX_TASK_ID_CHARS) or None
        if not status and task is None:
            continue
        state = work_state_for(status)
        rows.append(
            {
                "state": state.value if state is not None else None,
                "status": status or None,
                "has_status": bool(status),
                "task": task,
                "at": seen[gateway_id, beat.agent_id],
                "gateway_id": gateway_id,
                "agent_id": beat.agent_id,
            }
        )
    if rows:
        conn.executemany(
            """UPDATE agents SET work_state = COALESCE(:state, work_state),
                   reported_status = COALESCE(:status, reported_status),
                   current_task_id = CASE WHEN :has_status THEN :task
                                          ELSE COALESCE(:task, current_task_id) END,
                   work_state_at = :at
               WHERE gateway_id = :gateway_id AND gateway_agent_id = :agent_id""",
            rows,
        )
    return len(rows)
