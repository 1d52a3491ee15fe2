"""Board webhooks in the store: their rows, stored payloads, and delivery bookkeeping.

Every function takes the connection of a store transaction (`*_in(conn)`), so the
service puts a payload's delivery and the command it queues in one commit.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hub.store.claims import skip_locked
from hub.store.database import Connection
from hub.store.errors import Refusal, StoreError
from missioncontrol.text import displayable
from missioncontrol.timefmt import iso


class WebhookError(StoreError):
    """A webhook request that cannot be carried out; the message says why."""


class NotFound(WebhookError):
    """The board, webhook or payload does not exist (or not under that board)."""

    refusal = Refusal.NOT_FOUND


class InvalidWebhook(WebhookError):
    """The request names something that cannot be used (an agent of another board)."""


class SecretUnreadable(WebhookError):
    """The webhook's sealed secret does not open with this hub's key."""


@dataclass(frozen=True)
class WebhookRow:
    id: str
    board_id: str
    agent_id: str | None
    description: str
    enabled: bool
    secret_sealed: bytes | None = field(repr=False)
    signature_header: str | None
    created_at: float
    updated_at: float

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> WebhookRow:
        return cls(
            id=row["id"],
            board_id=row["board_id"],
            agent_id=row["agent_id"],
            description=row["description"],
            enabled=bool(row["enabled"]),
            secret_sealed=row["secret_sealed"],
            signature_header=row["signature_header"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )

    @property
    def has_secret(self) -> bool:
        return self.secret_sealed is not None

    @property
    def endpoint_path(self) -> str:
        return f"/api/v1/boards/{self.board_id}/webhooks/{self.id}"

    def as_json(self) -> dict[str, Any]:
        """The API shape. The secret is never part of it, only whether there is one."""
        return {
            "id": self.id,
            "board_id": self.board_id,
            "agent_id": self.agent_id,
            "description": self.description,
            "enabled": self.enabled,
            "has_secret": self.has_secret,
            "signature_header": self.signature_header,
            "endpoint_path": self.endpoint_path,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
        }


_PAYLOAD_SUMMARY_COLUMNS = """id, webhook_id, board_id, content_type, headers, received_at,
    delivered_at, delivery_attempts, next_attempt_at, last_error, length(payload) AS size_bytes"""


def payload_json(row: sqlite3.Row, *, with_body: bool) -> dict[str, Any]:
    """A stored payload for the API; the body as JSON when it parses, else as text."""
    out: dict[str, Any] = {
        "id": row["id"],
        "webhook_id": row["webhook_id"],
        "board_id": row["board_id"],
        "content_type": row["content_type"],
        "headers": json.loads(row["headers"]),
        "size_bytes": row["size_bytes"],
        "received_at": iso(row["received_at"]),
        "delivered_at": iso(row["delivered_at"]),
        "delivery_attempts": row["delivery_attempts"],
        "next_attempt_at": iso(row["next_attempt_at"]),
        "last_error": row["last_error"],
    }
    if with_body:
        text = bytes(row["payload"]).decode("utf-8", errors="replace")
        try:
            out["payload"] = json.loads(text)
        except ValueError:
            out["payload"] = text
    return out


def require_board_in(conn: sqlite3.Connection, board_id: str) -> None:
    if conn.execute("SELECT 1 FROM boards WHERE id = ?", (board_id,)).fetchone() is None:
        raise NotFound("board not found")


def require_webhook_in(conn: sqlite3.Connection, board_id: str, webhook_id: str) -> WebhookRow:
    require_board_in(conn, board_id)
    row = conn.execute(
        "SELECT * FROM board_webhooks WHERE id = ? AND board_id = ?", (webhook_id, board_id)
    ).fetchone()
    if row is None:
        raise NotFound(f"webhook {webhook_id} not found on board {board_id}")
    return WebhookRow.from_row(row)


def check_agent_in(conn: sqlite3.Connection, board_id: str, agent_id: str | None) -> None:
    if agent_id is None:
        return
    row = conn.execute("SELECT board_id FROM agents WHERE id = ?", (agent_id,)).fetchone()
    if row is None or row["board_id"] != board_id:
        raise InvalidWebhook(f"field 'agent_id': agent {agent_id} is not an agent of this board")


def list_webhooks_in(
    conn: sqlite3.Connection, board_id: str, limit: int, offset: int
) -> tuple[list[WebhookRow], int]:
    require_board_in(conn, board_id)
    total = conn.execute(
        "SELECT COUNT(*) FROM board_webhooks WHERE board_id = ?", (board_id,)
    ).fetchone()[0]
    rows = conn.execute(
        """SELECT * FROM board_webhooks WHERE board_id = ?
           ORDER BY created_at, id LIMIT ? OFFSET ?""",
        (board_id, limit, offset),
    ).fetchall()
    return [WebhookRow.from_row(r) for r in rows], total


def insert_webhook_in(
    conn: sqlite3.Connection,
    webhook_id: str,
    board_id: str,
    *,
    description: str,
    enabled: bool,
    agent_id: str | None,
    secret_sealed: bytes | None,
    signature_header: str | None,
    now: float,
) -> WebhookRow:
    require_board_in(conn, board_id)
    check_agent_in(conn, board_id, agent_id)
    conn.execute(
        """INSERT INTO board_webhooks (id, board_id, agent_id, description, enabled,
               secret_sealed, signature_header, created_at, updated_at)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        (
            webhook_id,
            board_id,
            agent_id,
            description,
            int(enabled),
            secret_sealed,
            signature_header,
            now,
            now,
        ),
    )
    return require_webhook_in(conn, board_id, webhook_id)


UPDATABLE_COLUMNS = ("description", "enabled", "agent_id", "signature_header", "secret_sealed")


def update_webhook_in(
    conn: sqlite3.Connection,
    board_id: str,
    webhook_id: str,
    columns: Mapping[str, Any],
    now: float,
) -> WebhookRow:
    """Set `columns` (names from UPDATABLE_COLUMNS) on the webhook."""
    require_webhook_in(conn, board_id, webhook_id)
    if columns.get("agent_id") is not None:
        check_agent_in(conn, board_id, columns["agent_id"])
    unknown = set(columns) - set(UPDATABLE_COLUMNS)
    if unknown:
        raise ValueError(f"not updatable: {sorted(unknown)}")
    if columns:
        assignments = ", ".join(f"{name} = ?" for name in columns)  # names checked above
        conn.execute(
            f"UPDATE board_webhooks SET {assignments}, updated_at = ? WHERE id = ?",
            (*columns.values(), now, webhook_id),
        )
    return require_webhook_in(conn, board_id, webhook_id)


def delete_webhook_in(conn: sqlite3.Connection, board_id: str, webhook_id: str) -> int:
    """Delete the webhook and its stored payloads; return how many payloads went."""
    require_webhook_in(conn, board_id, webhook_id)
    payloads = conn.execute(
        "DELETE FROM webhook_payloads WHERE webhook_id = ?", (webhook_id,)
    ).rowcount
    conn.execute("DELETE FROM board_webhooks WHERE id = ?", (webhook_id,))
    return payloads


def list_payloads_in(
    conn: sqlite3.Connection, board_id: str, webhook_id: str, limit: int, offset: int
) -> tuple[list[dict[str, Any]], int]:
    require_webhook_in(conn, board_id, webhook_id)
    total = conn.execute(
        "SELECT COUNT(*) FROM webhook_payloads WHERE webhook_id = ?", (webhook_id,)
    ).fetchone()[0]
    rows = conn.execute(
        f"""SELECT {_PAYLOAD_SUMMARY_COLUMNS} FROM webhook_payloads
            WHERE webhook_id = ? ORDER BY received_at DESC, id LIMIT ? OFFSET ?""",
        (webhook_id, limit, offset),
    ).fetchall()
    return [payload_json(r, with_body=False) for r in rows], total


def get_payload_in(
    conn: sqlite3.Connection, board_id: str, webhook_id: str, payload_id: str
) -> dict[str, Any]:
    require_webhook_in(conn, board_id, webhook_id)
    row = conn.execute(
        f"""SELECT {_PAYLOAD_SUMMARY_COLUMNS}, payload FROM webhook_payloads
            WHERE id = ? AND webhook_id = ?""",
        (payload_id, webhook_id),
    ).fetchone()
    if row is None:
        raise NotFound(f"payload {payload_id} not found on webhook {webhook_id}")
    return payload_json(row, with_body=True)


def replayed_payload_in(
    conn: sqlite3.Connection, webhook_id: str, body_sha256: bytes, since: float
) -> str | None:
    """The id of a payload with this body received by the webhook since `since`, if any."""
    row = conn.execute(
        """SELECT id FROM webhook_payloads
           WHERE webhook_id = ? AND body_sha256 = ? AND received_at >= ?
           ORDER BY received_at LIMIT 1""",
        (webhook_id, body_sha256, since),
    ).fetchone()
    return None if row is None else str(row["id"])


def insert_payload_in(
    conn: sqlite3.Connection,
    webhook: WebhookRow,
    payload_id: str,
    body: bytes,
    content_type: str,
    captured_headers: Mapping[str, str],
    now: float,
    *,
    body_sha256: bytes | None = None,
) -> bool:
    """Store a payload due for delivery now; False if the webhook was deleted meanwhile.
    `body_sha256` (signed webhooks) lets a replay of the same body be recognised."""
    return bool(
        conn.execute(
            """INSERT INTO webhook_payloads (id, webhook_id, board_id, payload, content_type,
                   headers, received_at, next_attempt_at, body_sha256)
               SELECT ?, id, board_id, ?, ?, ?, ?, ?, ? FROM board_webhooks
               WHERE id = ? AND board_id = ?""",
            (
                payload_id,
                body,
                displayable(content_type, max_chars=200),
                json.dumps(dict(captured_headers)),
                now,
                now,
                body_sha256,
                webhook.id,
                webhook.board_id,
            ),
        ).rowcount
    )


def due_payloads_in(
    conn: Connection, now: float, preview_bytes: int, limit: int
) -> list[sqlite3.Row]:
    """Undelivered payloads due at `now`, earliest first, with what their wake needs;
    locked to the caller's commit, which marks them (another hub's pass skips them)."""
    return conn.execute(
        """SELECT p.id, p.webhook_id, p.board_id, p.content_type, p.received_at,
                  p.delivery_attempts, substr(p.payload, 1, ?) AS preview,
                  length(p.payload) AS size_bytes,
                  w.agent_id, w.description, b.name AS board_name
           FROM webhook_payloads p
           JOIN board_webhooks w ON w.id = p.webhook_id
           JOIN boards b ON b.id = w.board_id
           WHERE p.delivered_at IS NULL AND p.next_attempt_at <= ?
           ORDER BY p.next_attempt_at LIMIT ?"""
        + skip_locked(conn, "p"),
        (preview_bytes, now, limit),
    ).fetchall()


def next_due_at_in(conn: sqlite3.Connection) -> float | None:
    value = conn.execute(
        "SELECT MIN(next_attempt_at) FROM webhook_payloads WHERE delivered_at IS NULL"
    ).fetchone()[0]
    return None if value is None else float(value)


def mark_delivered_in(conn: sqlite3.Connection, payload_id: str, attempts: int, now: float) -> None:
    conn.execute(
        """UPDATE webhook_payloads SET delivered_at = ?, delivery_attempts = ?,
               next_attempt_at = NULL, last_error = NULL WHERE id = ?""",
        (now, attempts, payload_id),
    )


def mark_attempt_failed_in(
    conn: sqlite3.Connection,
    payload_id: str,
    attempts: int,
    next_attempt_at: float | None,
    error: str,
) -> None:
    conn.execute(
        """UPDATE webhook_payloads SET delivery_attempts = ?, next_attempt_at = ?,
               last_error = ? WHERE id = ?""",
        (attempts, next_attempt_at, error, payload_id),
    )


def target_agent_in(
    conn: sqlite3.Connection, board_id: str, agent_id: str | None
) -> sqlite3.Row | None:
    """The webhook's own agent if it is still on the board, else the board's lead."""
    columns = "id, gateway_id, gateway_agent_id, lifecycle_generation, paused_at"
    if agent_id is not None:
        row = conn.execute(
            f"""SELECT {columns} FROM agents
                WHERE id = ? AND board_id = ? AND status != 'deleting'""",
            (agent_id, board_id),
        ).fetchone()
        if row is not None:
            return row
    return conn.execute(
        f"""SELECT {columns} FROM agents
            WHERE board_id = ? AND kind = 'lead' AND status != 'deleting'""",
        (board_id,),
    ).fetchone()
