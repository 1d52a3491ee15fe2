"""The activity trail: the event log as operators read it, filtered and summarised.

Every change writes its event in its own transaction (hub/store/event_log.py), so the
trail never claims what did not commit, and there is no row per heartbeat. The trail
shows what happened to agents and boards (provisioned, wake sent, checked in, offline
and why, files drifted and restored, token rotated, task moved, approval resolved,
webhook delivered, ...). The log also keeps the outbox's and the reconciler's own
bookkeeping (each command queued, each deferral); those are `internal` and shown only
when asked for. `summary` is a pure function of an event, tested directly.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Bookkeeping kinds: in the log, not in the trail unless `include_internal`.
INTERNAL_KINDS = frozenset(
    {
        "command.queued",
        "lifecycle.queue.enqueued",
        "lifecycle.reconcile.deferred",
        "lifecycle.reconcile.skip_not_stuck",
        "lifecycle.event.stale",
        "gateway.join_token.created",
    }
)


@dataclass(frozen=True)
class ActivityFilter:
    board_id: str | None = None
    agent_ids: tuple[str, ...] = ()  # the agent's hub id and its gateway agent id
    gateway_id: str | None = None
    kind: str | None = None  # an exact kind, or a prefix ending in "." ("lifecycle.")
    since: float | None = None  # epoch seconds, exclusive
    include_internal: bool = False

    def matches(self, row: Mapping[str, Any]) -> bool:
        """The SQL filter of `list_activity_in`, for rows of the live stream."""
        kind = str(row["kind"])
        if not self.include_internal and kind in INTERNAL_KINDS and self.kind != kind:
            return False
        return (
            (self.board_id is None or row.get("board_id") == self.board_id)
            and (not self.agent_ids or row.get("agent_id") in self.agent_ids)
            and (self.gateway_id is None or row.get("gateway_id") == self.gateway_id)
            and (self.kind is None or _kind_matches(self.kind, kind))
            and (self.since is None or float(row["at"]) > self.since)
        )

    def where(self) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        args: list[Any] = []
        if self.board_id is not None:
            clauses.append("board_id = ?")
            args.append(self.board_id)
        if self.agent_ids:
            clauses.append(f"agent_id IN ({','.join('?' * len(self.agent_ids))})")
            args.extend(self.agent_ids)
        if self.gateway_id is not None:
            clauses.append("gateway_id = ?")
            args.append(self.gateway_id)
        if self.kind is not None:
            if self.kind.endswith("."):
                clauses.append("substr(kind, 1, ?) = ?")
                args.extend([len(self.kind), self.kind])
            else:
                clauses.append("kind = ?")
                args.append(self.kind)
        if self.since is not None:
            clauses.append("at > ?")
            args.append(self.since)
        if not self.include_internal and self.kind not in INTERNAL_KINDS:
            clauses.append(f"kind NOT IN ({','.join('?' * len(INTERNAL_KINDS))})")
            args.extend(sorted(INTERNAL_KINDS))
        return ("WHERE " + " AND ".join(clauses)) if clauses else "", args


def _kind_matches(wanted: str, kind: str) -> bool:
    return kind.startswith(wanted) if wanted.endswith(".") else kind == wanted


def event_row(row: sqlite3.Row) -> dict[str, Any]:
    return {**dict(row), "detail": json.loads(row["detail"])}


def list_activity_in(
    conn: sqlite3.Connection, where: ActivityFilter, *, limit: int, offset: int
) -> tuple[list[dict[str, Any]], int]:
    """One page of the trail, newest first."""
    clause, args = where.where()
    total = conn.execute(f"SELECT COUNT(*) FROM events {clause}", args).fetchone()[0]
    rows = conn.execute(
        f"SELECT * FROM events {clause} ORDER BY id DESC LIMIT ? OFFSET ?",
        (*args, limit, offset),
    ).fetchall()
    return [event_row(r) for r in rows], total


def activity_after_in(
    conn: sqlite3.Connection, where: ActivityFilter, after_id: int, limit: int
) -> list[dict[str, Any]]:
    """The trail's events after `after_id`, oldest first (a stream resuming)."""
    clause, args = where.where()
    clause = f"{clause} AND id > ?" if clause else "WHERE id > ?"
    rows = conn.execute(
        f"SELECT * FROM events {clause} ORDER BY id LIMIT ?", (*args, after_id, limit)
    ).fetchall()
    return [event_row(r) for r in rows]


def activity_before_in(
    conn: sqlite3.Connection, where: ActivityFilter, *, before_id: int | None, limit: int
) -> list[dict[str, Any]]:
    """The trail's events before `before_id` (None: the newest), newest first."""
    clause, args = where.where()
    if before_id is not None:
        clause = f"{clause} AND id < ?" if clause else "WHERE id < ?"
        args = [*args, before_id]
    rows = conn.execute(
        f"SELECT * FROM events {clause} ORDER BY id DESC LIMIT ?", (*args, limit)
    ).fetchall()
    return [event_row(r) for r in rows]


def agent_ids_in(conn: sqlite3.Connection, agent_id: str) -> tuple[str, ...]:
    """The ids an agent's events carry: its hub id, and its gateway agent id."""
    row = conn.execute("SELECT gateway_agent_id FROM agents WHERE id = ?", (agent_id,)).fetchone()
    return (agent_id, row[0]) if row else (agent_id,)


def summary(kind: str, detail: Mapping[str, Any]) -> str:
    """One line an operator reads for an event."""
    d = detail
    match kind:
        case "agent.created":
            name = f" {d['name']!r}" if d.get("name") else ""
            return f"agent{name} created ({d.get('agent_kind', 'worker')})"
        case "agent.updated":
            fields = ", ".join(d.get("fields") or []) or "nothing (forced)"
            return f"agent updated: {fields}; files rendered again"
        case "agent.deleted":
            return "agent deleted (its sidecar confirmed the removal)"
        case "agent.adopted":
            return f"existing gateway agent {d.get('gateway_agent_id')} adopted; its files kept"
        case "agent.paused":
            return f"paused{' with its board' if d.get('by') == 'board' else ''}: heartbeat off"
        case "agent.resumed":
            return "resumed: heartbeat restored, woken"
        case "agent.token.rotated":
            return f"token rotated; the previous one stays valid {d.get('grace_s', 0):.0f} s"
        case "agent.tasks.unassigned":
            return f"{d.get('tasks')} task(s) unassigned"
        case "agent.run.observed":
            message = f": {d['message']}" if d.get("message") else ""
            return f"wake run ended {str(d.get('outcome', '')).lower()}{message}"
        case "command.acked":
            return _acked(d)
        case "lifecycle.wake.delivered":
            return f"wake sent (attempt {d.get('attempt')})"
        case "lifecycle.wake.undeliverable":
            return f"wake not delivered ({d.get('reason')}): {d.get('error', '')}"
        case "lifecycle.checkin.accepted":
            return f"checked in ({d.get('source', 'heartbeat')})"
        case "lifecycle.presence.offline":
            return (
                f"offline: no heartbeat for {d.get('silent_s')} s "
                f"(it heartbeats every {d.get('interval_s')} s)"
            )
        case "lifecycle.reconcile.max_attempts_reached":
            return f"offline: no check-in after {d.get('attempts')} wakes"
        case "lifecycle.reconcile.retriggered":
            why = d.get("why") or d.get("phase") or f"attempt {d.get('attempt')}"
            return f"woken again ({why})"
        case "lifecycle.apply.failed":
            return f"applying the files failed ({d.get('reason')}): {d.get('error', '')}"
        case "gateway.drift":
            return _drift(d)
        case "gateway.connected":
            return f"sidecar connected (version {d.get('sidecar_version')})"
        case "gateway.disconnected":
            return f"sidecar disconnected: {d.get('reason', '')}"
        case "gateway.workspace_root.mismatch":
            return str(d.get("detail", "workspace root mismatch"))
        case "task.created":
            return f"task {d.get('title', '')!r} created"
        case "task.moved":
            return f"task {d.get('title', '')!r} moved {d.get('from')} → {d.get('to')}"
        case "task.commented":
            return f"comment on a task by {'an agent' if d.get('by') == 'agent' else 'a user'}"
        case "agent.heartbeat.governed":
            how = "backed off" if d.get("to_s", 0) > d.get("from_s", 0) else "restored"
            return f"heartbeat {how}: every {d.get('from_s')} s → {d.get('to_s')} s"
        case "approval.requested":
            return f"approval requested: {d.get('action_type')}"
        case "approval.resolved":
            return f"approval {d.get('action_type')} {d.get('status')}"
        case "webhook.delivery.queued":
            return "webhook payload delivered to the agent as a wake"
        case "board.memory.added":
            return "board memory note added"
        case "board_group.heartbeat.applied":
            return f"group heartbeat set to {d.get('every')} on {d.get('agents')} agent(s)"
        case "gateway.labels.changed":
            labels = ",".join(f"{k}={v}" for k, v in sorted((d.get("labels") or {}).items()))
            return f"labels set: {labels or 'none'}"
    if kind.startswith("rollout."):
        return _rollout(kind, d)
    return kind


def _rollout(kind: str, d: Mapping[str, Any]) -> str:
    rollout = f"rollout {str(d.get('rollout_id', ''))[:8]}"
    why = f": {d['reason']}" if d.get("reason") else ""
    match kind:
        case "rollout.created":
            waves = "/".join(str(n) for n in d.get("waves") or [])
            return (
                f"{rollout} of {d.get('change')} started on {d.get('gateways')} gateway(s), "
                f"waves {waves}"
            )
        case "rollout.wave.started":
            return f"{rollout}: wave {d.get('wave')} started"
        case "rollout.gateway.applied":
            return f"{rollout}: change queued for {d.get('agents')} agent(s), wave {d.get('wave')}"
        case "rollout.gateway.healthy":
            return f"{rollout}: passed the health gate (wave {d.get('wave')})"
        case "rollout.gateway.failed":
            return f"{rollout}: failed the health gate (wave {d.get('wave')}){why}"
        case "rollout.gateway.rolled_back":
            return f"{rollout}: previous values re-applied to {d.get('agents')} agent(s)"
        case "rollout.halted":
            return f"{rollout} halted{why}"
    return f"{rollout} {kind.removeprefix('rollout.').replace('_', ' ').replace('.', ' ')}{why}"


def _acked(d: Mapping[str, Any]) -> str:
    command = str(d.get("command", "command")).replace("_", " ")
    outcome = str(d.get("outcome", ""))
    if outcome in ("APPLIED", "ALREADY_APPLIED", "CONFIRMED_BY_HELLO"):
        if d.get("command") == "apply_agent":
            return f"provisioned: files and entry applied (generation {d.get('generation')})"
        if d.get("command") == "remove_agent":
            return "removed from the gateway"
        return f"{command} applied"
    return f"{command} {outcome.lower()}: {d.get('error') or 'no reason given'}"


def _drift(d: Mapping[str, Any]) -> str:
    what = {
        "REMOVED": "entry removed from openclaw.json by hand",
        "CHANGED": "entry changed by hand",
        "RESTORED": "entry restored by the sidecar",
        "ADDED": "entry with a managed id added by hand",
    }.get(str(d.get("drift")), "files or entry drifted")
    return f"{what}{': ' + str(d['detail']) if d.get('detail') else ''}"
