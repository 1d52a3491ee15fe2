"""Rollouts in the store: their rows, their targets, and the facts their gates read.

Functions named `*_in(conn)` run inside a caller's transaction. Portable SQL only (the
same statements run on PostgreSQL): JSON lives in TEXT columns, times are REAL.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hub.fleet import rollouts as ro
from hub.store.errors import Refusal, StoreError

ACTIVE_STATUSES = tuple(str(s) for s in ro.ACTIVE)


class UnknownRollout(StoreError):
    refusal = Refusal.NOT_FOUND


class RolloutConflict(StoreError):
    """The rollout's state does not allow the request; the message says what does."""

    refusal = Refusal.CONFLICT


@dataclass(frozen=True)
class RolloutRow:
    id: str
    name: str
    selector: str
    agents: str
    change: dict[str, Any]
    plan: dict[str, Any]
    wave_count: int
    current_wave: int
    max_fail_percentage: float
    gate_deadline_s: float
    status: ro.Status
    reason: str | None
    created_at: float
    updated_at: float
    finished_at: float | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> RolloutRow:
        values = dict(row)
        values["change"] = json.loads(values["change"])
        values["plan"] = json.loads(values["plan"])
        values["status"] = ro.Status(values["status"])
        return cls(**values)

    def decision_view(self, link_grace_s: float = ro.LINK_GRACE_S) -> ro.Rollout:
        return ro.Rollout(
            self.id,
            self.status,
            self.current_wave,
            self.wave_count,
            ro.Gate(self.max_fail_percentage, self.gate_deadline_s, link_grace_s),
        )


@dataclass(frozen=True)
class TargetRow:
    rollout_id: str
    gateway_id: str
    wave: int
    position: int
    state: ro.TargetState
    reason: str | None
    applied_at: float | None
    decided_at: float | None
    rolled_back_at: float | None
    agents: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> TargetRow:
        values = dict(row)
        values["state"] = ro.TargetState(values["state"])
        values["agents"] = json.loads(values["agents"])
        return cls(**values)

    def decision_view(self) -> ro.Target:
        return ro.Target(self.gateway_id, self.wave, self.state, self.applied_at)


def insert_rollout_in(
    conn: sqlite3.Connection,
    *,
    rollout_id: str,
    name: str,
    selector: str,
    agents: str,
    change: dict[str, Any],
    plan: dict[str, Any],
    waves: Sequence[Sequence[str]],
    max_fail_percentage: float,
    gate_deadline_s: float,
    now: float,
) -> None:
    conn.execute(
        """INSERT INTO rollouts (id, name, selector, agents, change, plan, wave_count,
               current_wave, max_fail_percentage, gate_deadline_s, status, created_at,
               updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?)""",
        (
            rollout_id,
            name,
            selector,
            agents,
            json.dumps(change, sort_keys=True),
            json.dumps(plan, sort_keys=True),
            len(waves),
            max_fail_percentage,
            gate_deadline_s,
            str(ro.Status.RUNNING),
            now,
            now,
        ),
    )
    position = 0
    for index, wave in enumerate(waves):
        for gateway_id in wave:
            conn.execute(
                "INSERT INTO rollout_targets (rollout_id, gateway_id, wave, position, state) "
                "VALUES (?, ?, ?, ?, ?)",
                (rollout_id, gateway_id, index, position, str(ro.TargetState.PENDING)),
            )
            position += 1


def busy_gateways_in(conn: sqlite3.Connection, gateway_ids: Sequence[str]) -> dict[str, str]:
    """Which of these gateways an active rollout targets: gateway id -> rollout id."""
    marks = ", ".join("?" for _ in ACTIVE_STATUSES)
    rows = conn.execute(
        f"""SELECT t.gateway_id, t.rollout_id FROM rollout_targets t
            JOIN rollouts r ON r.id = t.rollout_id WHERE r.status IN ({marks})""",
        ACTIVE_STATUSES,
    ).fetchall()
    wanted = set(gateway_ids)
    return {r[0]: r[1] for r in rows if r[0] in wanted}


def rollout_in(conn: sqlite3.Connection, rollout_id: str) -> RolloutRow:
    row = conn.execute("SELECT * FROM rollouts WHERE id = ?", (rollout_id,)).fetchone()
    if row is None:
        raise UnknownRollout(
            f"rollout {rollout_id} does not exist; list them with GET /api/v1/rollouts"
        )
    return RolloutRow.from_row(row)


def rollouts_in(
    conn: sqlite3.Connection, *, status: str | None, limit: int, offset: int
) -> tuple[list[RolloutRow], int]:
    where, args = ("WHERE status = ?", [status]) if status else ("", [])
    total = conn.execute(f"SELECT COUNT(*) FROM rollouts {where}", args).fetchone()[0]
    rows = conn.execute(
        f"SELECT * FROM rollouts {where} ORDER BY created_at DESC, id LIMIT ? OFFSET ?",
        (*args, limit, offset),
    ).fetchall()
    return [RolloutRow.from_row(r) for r in rows], int(total)


def active_rollout_ids_in(conn: sqlite3.Connection) -> list[str]:
    marks = ", ".join("?" for _ in ACTIVE_STATUSES)
    rows = conn.execute(
        f"SELECT id FROM rollouts WHERE status IN ({marks}) ORDER BY created_at, id",
        ACTIVE_STATUSES,
    ).fetchall()
    return [r[0] for r in rows]


def targets_in(conn: sqlite3.Connection, rollout_id: str) -> list[TargetRow]:
    rows = conn.execute(
        "SELECT * FROM rollout_targets WHERE rollout_id = ? ORDER BY position", (rollout_id,)
    ).fetchall()
    return [TargetRow.from_row(r) for r in rows]


def target_in(conn: sqlite3.Connection, rollout_id: str, gateway_id: str) -> TargetRow | None:
    row = conn.execute(
        "SELECT * FROM rollout_targets WHERE rollout_id = ? AND gateway_id = ?",
        (rollout_id, gateway_id),
    ).fetchone()
    return TargetRow.from_row(row) if row else None


def update_target_in(
    conn: sqlite3.Connection, rollout_id: str, gateway_id: str, **values: Any
) -> None:
    allowed = {"state", "reason", "applied_at", "decided_at", "rolled_back_at", "agents"}
    unknown = set(values) - allowed
    if unknown:
        raise ValueError(f"not updatable: {sorted(unknown)}")
    if "agents" in values:
        values["agents"] = json.dumps(values["agents"], sort_keys=True)
    if "state" in values:
        values["state"] = str(values["state"])
    assignments = ", ".join(f"{column} = ?" for column in values)  # whitelisted above
    conn.execute(
        f"UPDATE rollout_targets SET {assignments} WHERE rollout_id = ? AND gateway_id = ?",
        (*values.values(), rollout_id, gateway_id),
    )


def set_status_in(
    conn: sqlite3.Connection,
    rollout_id: str,
    status: ro.Status,
    *,
    now: float,
    reason: str | None = None,
    expect: Sequence[ro.Status] | None = None,
    wave: int | None = None,
) -> bool:
    """Move the rollout to `status` (and `wave`), only from one of `expect`; whether it
    moved. A terminal status records when it finished."""
    finished = status in (
        ro.Status.COMPLETED,
        ro.Status.ABORTED,
        ro.Status.ROLLED_BACK,
        ro.Status.HALTED,
    )
    sql = "UPDATE rollouts SET status = ?, updated_at = ?, reason = COALESCE(?, reason)"
    args: list[Any] = [str(status), now, reason]
    if finished:
        sql += ", finished_at = ?"
        args.append(now)
    else:
        sql += ", finished_at = NULL"
    if wave is not None:
        sql += ", current_wave = ?"
        args.append(wave)
    sql += " WHERE id = ?"
    args.append(rollout_id)
    if expect is not None:
        sql += f" AND status IN ({', '.join('?' for _ in expect)})"
        args.extend(str(s) for s in expect)
    return conn.execute(sql, args).rowcount > 0


def gateway_facts_in(
    conn: sqlite3.Connection, targets: Sequence[TargetRow]
) -> dict[str, ro.GatewayFacts]:
    """What the gate reads for these (applied) targets: each gateway's link as the store
    holds it, and each agent the rollout changed there."""
    facts: dict[str, ro.GatewayFacts] = {}
    for target in targets:
        gateway = conn.execute(
            "SELECT connected, disconnected_at FROM gateways WHERE id = ?", (target.gateway_id,)
        ).fetchone()
        if gateway is None:
            facts[target.gateway_id] = ro.GatewayFacts(False, None, exists=False)
            continue
        agents = []
        for record in target.agents:
            row = conn.execute(
                "SELECT applied_generation, last_seen_at, status, last_provision_error, "
                "gateway_agent_id FROM agents WHERE id = ?",
                (record["agent_id"],),
            ).fetchone()
            generation = int(record["generation"])
            applied = int(row[0]) if row else 0
            if (
                row is not None
                and applied < generation
                and _confirmed_in(conn, target.gateway_id, row[4], generation)
            ):
                applied = generation
            agents.append(
                ro.AgentFacts(
                    agent_id=record["agent_id"],
                    generation=generation,
                    applied_generation=applied,
                    last_seen_at=row[1] if row else None,
                    status=row[2] if row else "deleted",
                    error=row[3] if row else None,
                    exists=row is not None and row[2] != "deleting",
                )
            )
        facts[target.gateway_id] = ro.GatewayFacts(
            bool(gateway[0]), gateway[1], tuple(agents), exists=True
        )
    return facts


def _confirmed_in(
    conn: sqlite3.Connection, gateway_id: str, gateway_agent_id: str, generation: int
) -> bool:
    """Whether the sidecar confirmed an apply of this generation or later: its answer, or
    (when the answer was lost to a hub restart) its Hello's last applied sequence."""
    row = conn.execute(
        """SELECT 1 FROM commands WHERE gateway_id = ? AND agent_id = ?
               AND kind = 'apply_agent' AND generation >= ?
               AND outcome IN ('APPLIED', 'ALREADY_APPLIED', 'CONFIRMED_BY_HELLO') LIMIT 1""",
        (gateway_id, gateway_agent_id, generation),
    ).fetchone()
    return row is not None
