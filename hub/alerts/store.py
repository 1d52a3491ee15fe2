"""Alerts in the store: rules, deliveries with one row per attempt, the per-subject
cooldown state, and how far the event log has been read.

Every function takes the connection of a store transaction (`*_in(conn)`), so an
alert's delivery row and its cooldown mark commit together, and together with the
cursor past the event that raised it.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hub.alerts.rules import AlertKind, Rule, SubjectState, response_excerpt, rule_problem
from hub.store.claims import skip_locked
from hub.store.database import Connection
from hub.store.errors import Refusal, StoreError
from missioncontrol.timefmt import iso


class AlertError(StoreError):
    """An alert request that cannot be carried out; the message says why."""


class NotFound(AlertError):
    refusal = Refusal.NOT_FOUND


class InvalidRule(AlertError):
    """A rule names something that does not exist, or a field its kind does not take."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def rule_from_row(row: sqlite3.Row) -> Rule:
    return Rule(
        id=row["id"],
        name=row["name"],
        kind=AlertKind(row["kind"]),
        board_id=row["board_id"],
        gateway_id=row["gateway_id"],
        disconnected_for_s=row["disconnected_for_s"],
        expiring_within_days=row["expiring_within_days"],
        cooldown_s=row["cooldown_s"],
    )


@dataclass(frozen=True)
class RuleRow:
    """A stored rule: what it matches, and where and whether it sends."""

    rule: Rule
    url: str
    enabled: bool
    secret_sealed: bytes = field(repr=False)
    created_at: float
    updated_at: float

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> RuleRow:
        return cls(
            rule=rule_from_row(row),
            url=row["url"],
            enabled=bool(row["enabled"]),
            secret_sealed=bytes(row["secret_sealed"]),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )

    def as_json(self) -> dict[str, Any]:
        """The API shape: the secret is never part of it."""
        return {
            **dataclasses.asdict(self.rule),
            "kind": self.rule.kind.value,
            "url": self.url,
            "enabled": self.enabled,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
        }


KEEP_DELIVERIES = 1000  # finished alerts kept per rule

RULE_COLUMNS = (
    "name",
    "kind",
    "url",
    "enabled",
    "board_id",
    "gateway_id",
    "disconnected_for_s",
    "expiring_within_days",
    "cooldown_s",
    "secret_sealed",
)


def check_filters_in(
    conn: sqlite3.Connection, board_id: str | None, gateway_id: str | None
) -> None:
    if board_id is not None and (
        conn.execute("SELECT 1 FROM boards WHERE id = ?", (board_id,)).fetchone() is None
    ):
        raise InvalidRule(
            "board_id", f"board {board_id} does not exist; list boards with GET /api/v1/boards"
        )
    if gateway_id is not None and (
        conn.execute("SELECT 1 FROM gateways WHERE id = ?", (gateway_id,)).fetchone() is None
    ):
        raise InvalidRule(
            "gateway_id",
            f"gateway {gateway_id} does not exist; list gateways with GET /api/v1/gateways",
        )


def check_rule(row: RuleRow) -> None:
    """Refuse a rule (as it would be stored) whose fields do not fit its kind."""
    rule = row.rule
    problem = rule_problem(
        rule.kind,
        board_id=rule.board_id,
        disconnected_for_s=rule.disconnected_for_s,
        expiring_within_days=rule.expiring_within_days,
    )
    if problem is not None:
        raise InvalidRule(*problem)


def require_rule_in(conn: sqlite3.Connection, rule_id: str) -> RuleRow:
    row = conn.execute("SELECT * FROM alert_rules WHERE id = ?", (rule_id,)).fetchone()
    if row is None:
        raise NotFound(f"alert rule {rule_id} not found")
    return RuleRow.from_row(row)


def list_rules_in(
    conn: sqlite3.Connection, kind: str | None, limit: int, offset: int
) -> tuple[list[RuleRow], int]:
    total = conn.execute(
        "SELECT COUNT(*) FROM alert_rules WHERE (? IS NULL OR kind = ?)", (kind, kind)
    ).fetchone()[0]
    rows = conn.execute(
        """SELECT * FROM alert_rules WHERE (? IS NULL OR kind = ?)
           ORDER BY created_at, id LIMIT ? OFFSET ?""",
        (kind, kind, limit, offset),
    ).fetchall()
    return [RuleRow.from_row(r) for r in rows], int(total)


def enabled_rules_in(conn: sqlite3.Connection, kinds: Iterable[AlertKind]) -> list[Rule]:
    wanted = [k.value for k in kinds]
    marks = ", ".join("?" for _ in wanted)
    rows = conn.execute(
        f"SELECT * FROM alert_rules WHERE enabled = 1 AND kind IN ({marks}) ORDER BY id",
        wanted,
    ).fetchall()
    return [rule_from_row(r) for r in rows]


def insert_rule_in(
    conn: sqlite3.Connection, rule_id: str, columns: Mapping[str, Any], now: float
) -> RuleRow:
    check_filters_in(conn, columns.get("board_id"), columns.get("gateway_id"))
    names = [name for name in RULE_COLUMNS if name in columns]
    conn.execute(
        f"""INSERT INTO alert_rules (id, {", ".join(names)}, created_at, updated_at)
            VALUES (?, {", ".join("?" for _ in names)}, ?, ?)""",  # names from RULE_COLUMNS
        (rule_id, *(columns[n] for n in names), now, now),
    )
    row = require_rule_in(conn, rule_id)
    check_rule(row)  # the job rolls back if it is refused
    return row


def update_rule_in(
    conn: sqlite3.Connection, rule_id: str, columns: Mapping[str, Any], now: float
) -> RuleRow:
    require_rule_in(conn, rule_id)
    unknown = set(columns) - set(RULE_COLUMNS)
    if unknown:
        raise ValueError(f"not updatable: {sorted(unknown)}")
    check_filters_in(conn, columns.get("board_id"), columns.get("gateway_id"))
    if columns:
        assignments = ", ".join(f"{name} = ?" for name in columns)  # names checked above
        conn.execute(
            f"UPDATE alert_rules SET {assignments}, updated_at = ? WHERE id = ?",
            (*columns.values(), now, rule_id),
        )
    row = require_rule_in(conn, rule_id)
    check_rule(row)  # the job rolls back if it is refused
    return row


def delete_rule_in(conn: sqlite3.Connection, rule_id: str) -> int:
    """Delete the rule with its history; return how many deliveries went."""
    require_rule_in(conn, rule_id)
    deliveries = conn.execute(
        "SELECT COUNT(*) FROM alert_deliveries WHERE rule_id = ?", (rule_id,)
    ).fetchone()[0]
    conn.execute("DELETE FROM alert_rules WHERE id = ?", (rule_id,))  # cascades
    return int(deliveries)


# ------------------------------------------------------------------ cursor, cooldowns


def cursor_in(conn: sqlite3.Connection) -> int:
    """The last event id the alert service has read. The first time: the log's end, so
    a new hub does not alert on its history."""
    row = conn.execute("SELECT event_id FROM alert_cursor WHERE id = 1").fetchone()
    if row is not None:
        return int(row[0])
    last = int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0])
    set_cursor_in(conn, last)
    return last


def set_cursor_in(conn: sqlite3.Connection, event_id: int) -> None:
    conn.execute(
        """INSERT INTO alert_cursor (id, event_id) VALUES (1, ?)
           ON CONFLICT (id) DO UPDATE SET event_id = excluded.event_id""",
        (event_id,),
    )


def events_after_in(
    conn: sqlite3.Connection, after_id: int, kinds: Iterable[str], limit: int
) -> tuple[list[dict[str, Any]], int]:
    """The watched events after `after_id` (oldest first, at most `limit`) and the id the
    cursor may move to: the last one returned, or the log's end when none are left."""
    wanted = sorted(kinds)
    marks = ", ".join("?" for _ in wanted)
    rows = conn.execute(
        f"""SELECT * FROM events WHERE id > ? AND kind IN ({marks}) ORDER BY id LIMIT ?""",
        (after_id, *wanted, limit),
    ).fetchall()
    events = [{**dict(r), "detail": json.loads(r["detail"])} for r in rows]
    if len(events) == limit:
        return events, int(events[-1]["id"])
    end = int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0])
    return events, max(after_id, end)


def subject_state_in(conn: sqlite3.Connection, rule_id: str, subject: str) -> SubjectState:
    row = conn.execute(
        """SELECT last_fired_at, fired_occurrence, last_occurrence, suppressed
           FROM alert_subjects WHERE rule_id = ? AND subject = ?""",
        (rule_id, subject),
    ).fetchone()
    return SubjectState() if row is None else SubjectState(row[0], row[1], row[2], int(row[3]))


def mark_subject_in(
    conn: sqlite3.Connection,
    rule_id: str,
    subject: str,
    occurrence: str,
    *,
    fired_at: float | None,
) -> None:
    """Remember an occurrence: sent at `fired_at` (the held-back count starts again), or
    held back by the cooldown (`fired_at` None; counted). The kept row's columns are
    named with their table: PostgreSQL refuses them bare beside `excluded`."""
    conn.execute(
        """INSERT INTO alert_subjects (rule_id, subject, last_fired_at, fired_occurrence,
               last_occurrence, suppressed)
           VALUES (?, ?, ?, ?, ?, ?)
           ON CONFLICT (rule_id, subject) DO UPDATE SET
               last_occurrence = excluded.last_occurrence,
               last_fired_at = COALESCE(excluded.last_fired_at, alert_subjects.last_fired_at),
               fired_occurrence = COALESCE(excluded.fired_occurrence,
                                           alert_subjects.fired_occurrence),
               suppressed = CASE WHEN excluded.last_fired_at IS NULL
                                 THEN alert_subjects.suppressed + 1 ELSE 0 END""",
        (
            rule_id,
            subject,
            fired_at,
            occurrence if fired_at is not None else None,
            occurrence,
            0 if fired_at is not None else 1,
        ),
    )


# ------------------------------------------------------------------ deliveries


def insert_delivery_in(
    conn: sqlite3.Connection,
    delivery_id: str,
    rule_id: str,
    *,
    subject: str,
    summary: str,
    event_id: int | None,
    payload: bytes,
    now: float,
) -> None:
    conn.execute(
        """INSERT INTO alert_deliveries (id, rule_id, subject, summary, event_id, payload,
               created_at, state, attempts, next_attempt_at)
           VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?)""",
        (delivery_id, rule_id, subject, summary, event_id, payload, now, now),
    )
    # The history is bounded: a rule keeps its newest finished alerts (pending ones all).
    conn.execute(
        """DELETE FROM alert_deliveries WHERE id IN (
               SELECT id FROM alert_deliveries WHERE rule_id = ? AND state != 'pending'
               ORDER BY created_at DESC, id LIMIT -1 OFFSET ?)""",
        (rule_id, KEEP_DELIVERIES),
    )


def _not_in(column: str, ids: tuple[str, ...]) -> str:
    return f"{column} NOT IN ({', '.join('?' for _ in ids)})" if ids else "1 = 1"


def due_deliveries_in(
    conn: sqlite3.Connection, now: float, exclude: tuple[str, ...], limit: int
) -> list[sqlite3.Row]:
    """Pending deliveries due at `now` (not those under way), earliest first, with the
    rule's destination and sealed secret."""
    return conn.execute(
        f"""SELECT d.id, d.rule_id, d.payload, d.attempts, r.url, r.secret_sealed
            FROM alert_deliveries d JOIN alert_rules r ON r.id = d.rule_id
            WHERE d.state = 'pending' AND d.next_attempt_at <= ? AND {_not_in("d.id", exclude)}
            ORDER BY d.next_attempt_at LIMIT ?""",
        (now, *exclude, limit),
    ).fetchall()


def claim_due_deliveries_in(
    conn: Connection, now: float, exclude: tuple[str, ...], limit: int, lease_s: float
) -> list[sqlite3.Row]:
    """Like `due_deliveries_in`, for a hub among others: the rows are locked where they
    are read (another hub's claim skips them) and not due again for `lease_s`, so no
    other hub sends them meanwhile; the attempt's outcome sets when they are due next.
    A hub that dies mid-attempt leaves them due once the lease ends."""
    rows = conn.execute(
        f"""SELECT d.id, d.rule_id, d.payload, d.attempts, r.url, r.secret_sealed
            FROM alert_deliveries d JOIN alert_rules r ON r.id = d.rule_id
            WHERE d.state = 'pending' AND d.next_attempt_at <= ? AND {_not_in("d.id", exclude)}
            ORDER BY d.next_attempt_at LIMIT ?"""
        + skip_locked(conn, "d"),
        (now, *exclude, limit),
    ).fetchall()
    if rows:
        conn.executemany(
            "UPDATE alert_deliveries SET next_attempt_at = ? WHERE id = ?",
            [(now + lease_s, row["id"]) for row in rows],
        )
    return rows


def next_due_at_in(conn: sqlite3.Connection, exclude: tuple[str, ...] = ()) -> float | None:
    value = conn.execute(
        f"""SELECT MIN(next_attempt_at) FROM alert_deliveries
            WHERE state = 'pending' AND {_not_in("id", exclude)}""",
        exclude,
    ).fetchone()[0]
    return None if value is None else float(value)


def record_attempt_in(
    conn: sqlite3.Connection,
    delivery_id: str,
    *,
    attempt: int,
    at: float,
    status: int | None,
    error: str | None,
    response: bytes,
    duration_ms: float,
    next_attempt_at: float | None,
) -> str | None:
    """Keep one attempt and move its delivery on: delivered (no error), pending again
    (`next_attempt_at`), or failed for good. Returns the delivery's new state, or None
    when the delivery is gone (its rule was deleted while the attempt ran)."""
    exists = conn.execute("SELECT 1 FROM alert_deliveries WHERE id = ?", (delivery_id,)).fetchone()
    if exists is None:
        return None
    conn.execute(
        """INSERT INTO alert_attempts (delivery_id, attempt, at, status, error,
               response_excerpt, duration_ms)
           VALUES (?, ?, ?, ?, ?, ?, ?)""",
        (delivery_id, attempt, at, status, error, response_excerpt(response), duration_ms),
    )
    if error is None:
        state = "delivered"
    elif next_attempt_at is not None:
        state = "pending"
    else:
        state = "failed"
    conn.execute(
        """UPDATE alert_deliveries SET state = ?, attempts = ?, next_attempt_at = ?,
               delivered_at = CASE WHEN ? = 'delivered' THEN ? END, last_error = ?
           WHERE id = ?""",
        (state, attempt, next_attempt_at, state, at, error, delivery_id),
    )
    return state


def _delivery_json(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "rule_id": row["rule_id"],
        "subject": row["subject"],
        "summary": row["summary"],
        "event_id": row["event_id"],
        "state": row["state"],
        "attempts": row["attempts"],
        "created_at": iso(row["created_at"]),
        "next_attempt_at": iso(row["next_attempt_at"]),
        "delivered_at": iso(row["delivered_at"]),
        "last_error": row["last_error"],
    }


_DELIVERY_COLUMNS = """id, rule_id, subject, summary, event_id, state, attempts, created_at,
    next_attempt_at, delivered_at, last_error"""


def list_deliveries_in(
    conn: sqlite3.Connection, rule_id: str, state: str | None, limit: int, offset: int
) -> tuple[list[dict[str, Any]], int]:
    require_rule_in(conn, rule_id)
    total = conn.execute(
        """SELECT COUNT(*) FROM alert_deliveries
           WHERE rule_id = ? AND (? IS NULL OR state = ?)""",
        (rule_id, state, state),
    ).fetchone()[0]
    rows = conn.execute(
        f"""SELECT {_DELIVERY_COLUMNS} FROM alert_deliveries
            WHERE rule_id = ? AND (? IS NULL OR state = ?)
            ORDER BY created_at DESC, id LIMIT ? OFFSET ?""",
        (rule_id, state, state, limit, offset),
    ).fetchall()
    return [_delivery_json(r) for r in rows], int(total)


def delivery_summary_in(conn: sqlite3.Connection, delivery_id: str) -> dict[str, Any]:
    row = conn.execute(
        f"SELECT {_DELIVERY_COLUMNS} FROM alert_deliveries WHERE id = ?", (delivery_id,)
    ).fetchone()
    if row is None:
        raise NotFound(f"delivery {delivery_id} not found")
    return _delivery_json(row)


def get_delivery_in(conn: sqlite3.Connection, rule_id: str, delivery_id: str) -> dict[str, Any]:
    """One delivery with its payload and every attempt, oldest first."""
    require_rule_in(conn, rule_id)
    row = conn.execute(
        f"SELECT {_DELIVERY_COLUMNS}, payload FROM alert_deliveries WHERE id = ? AND rule_id = ?",
        (delivery_id, rule_id),
    ).fetchone()
    if row is None:
        raise NotFound(f"delivery {delivery_id} not found for alert rule {rule_id}")
    attempts = conn.execute(
        """SELECT attempt, at, status, error, response_excerpt, duration_ms FROM alert_attempts
           WHERE delivery_id = ? ORDER BY attempt""",
        (delivery_id,),
    ).fetchall()
    return {
        **_delivery_json(row),
        "payload": json.loads(bytes(row["payload"])),
        "attempt_log": [
            {
                "attempt": a["attempt"],
                "at": iso(a["at"]),
                "status": a["status"],
                "error": a["error"],
                "response_excerpt": a["response_excerpt"],
                "duration_ms": a["duration_ms"],
            }
            for a in attempts
        ],
    }


# ------------------------------------------------------------------ timed conditions


def disconnected_gateways_in(conn: sqlite3.Connection) -> list[tuple[str, str, float]]:
    """(id, name, disconnected_at) of every gateway that connected once and is away now."""
    rows = conn.execute(
        """SELECT id, name, disconnected_at FROM gateways
           WHERE connected = 0 AND connected_at IS NOT NULL AND disconnected_at IS NOT NULL"""
    ).fetchall()
    return [(r[0], r[1], float(r[2])) for r in rows]
