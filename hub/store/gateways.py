"""Gateways in the store: their rows, links, enrollment records, and their outbox's face.

`GatewayStore` is what the link, enrollment and gateway administration call; each
coroutine is one logical change (its rows and its event log entry commit together).
Other parts keep their own tables' SQL beside their rules (boards.py, tasks.py,
provisioning/agents.py, webhooks/store.py) in `*_in(conn)` functions that run inside
a caller's transaction.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from hub.pki.join_tokens import JoinTokenRecord, JoinTokenUsedError
from hub.store.database import Database
from hub.store.errors import Refusal, StoreError, UnknownGateway
from hub.store.event_log import add_event, events_in
from hub.store.outbox import (
    ConfirmedCommand,
    QueuedCommand,
    command_status_in,
    commands_after_in,
    confirm_through_in,
    enqueue_command_in,
)
from protos import link_pb2 as pb


class GatewayInUse(StoreError):
    """The gateway still has boards; they must go first."""

    refusal = Refusal.CONFLICT


@dataclass(frozen=True)
class GatewayRow:
    id: str
    name: str
    created_at: float
    updated_at: float
    workspace_root: str | None
    agent_api_url: str | None
    hostname: str | None
    sidecar_version: str | None
    openclaw_version: str | None
    openclaw_protocol: int | None
    gateway_generation: int
    connected: bool
    connected_at: float | None
    disconnected_at: float | None
    last_seen_at: float | None
    reachable: bool | None
    unreachable_reason: str | None
    config_valid: bool | None
    config_error: str | None
    last_touched_version: str | None
    next_sequence: int
    acked_sequence: int

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> GatewayRow:
        values = dict(row)
        for key in ("connected", "reachable", "config_valid"):
            if values[key] is not None:
                values[key] = bool(values[key])
        return cls(**values)


@dataclass(frozen=True)
class Welcome:
    gateway_name: str
    last_sequence: int


class GatewayStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # ----------------------------------------------------------- gateways

    async def create_gateway(self, gateway_id: str, name: str) -> GatewayRow:
        def op(conn: sqlite3.Connection) -> GatewayRow:
            now = time.time()
            conn.execute(
                "INSERT INTO gateways (id, name, created_at, updated_at) VALUES (?, ?, ?, ?)",
                (gateway_id, name, now, now),
            )
            add_event(conn, "gateway.created", gateway_id=gateway_id, at=now, name=name)
            return gateway_in(conn, gateway_id)

        return await self.db.write(op)

    async def rename_gateway(self, gateway_id: str, name: str) -> GatewayRow:
        def op(conn: sqlite3.Connection) -> GatewayRow:
            gateway_in(conn, gateway_id)
            conn.execute(
                "UPDATE gateways SET name = ?, updated_at = ? WHERE id = ?",
                (name, time.time(), gateway_id),
            )
            return gateway_in(conn, gateway_id)

        return await self.db.write(op, urgent=True)

    async def get_gateway(self, gateway_id: str) -> GatewayRow | None:
        def op(conn: sqlite3.Connection) -> GatewayRow | None:
            row = conn.execute("SELECT * FROM gateways WHERE id = ?", (gateway_id,)).fetchone()
            return GatewayRow.from_row(row) if row else None

        return await self.db.read(op)

    async def list_gateways(
        self, limit: int = 200, offset: int = 0
    ) -> tuple[list[GatewayRow], int]:
        def op(conn: sqlite3.Connection) -> tuple[list[GatewayRow], int]:
            total = conn.execute("SELECT COUNT(*) FROM gateways").fetchone()[0]
            rows = conn.execute(
                "SELECT * FROM gateways ORDER BY created_at, id LIMIT ? OFFSET ?", (limit, offset)
            ).fetchall()
            return [GatewayRow.from_row(r) for r in rows], total

        return await self.db.read(op)

    async def record_hello(
        self, hello: pb.Hello, *, auto_register: bool, now: float | None = None
    ) -> Welcome:
        """Mark the gateway connected with what its Hello says; confirm applied commands.
        (The hub records Hellos through the reconciler, which also learns what the
        confirmed commands did: `record_hello_in`.)"""

        def op(conn: sqlite3.Connection) -> Welcome:
            at = time.time() if now is None else now
            return record_hello_in(conn, hello, auto_register=auto_register, at=at)[0]

        return await self.db.write(op)

    async def record_disconnect(
        self, gateway_id: str, reason: str, *, connected_since: float, now: float | None = None
    ) -> None:
        """Mark the gateway disconnected, unless a newer stream connected meanwhile."""

        def op(conn: sqlite3.Connection) -> None:
            at = time.time() if now is None else now
            conn.execute(
                """UPDATE gateways SET connected = 0, disconnected_at = ?, last_seen_at = ?,
                       updated_at = ?
                   WHERE id = ? AND (connected_at IS NULL OR connected_at <= ?)""",
                (at, at, at, gateway_id, connected_since),
            )
            add_event(conn, "gateway.disconnected", gateway_id=gateway_id, at=at, reason=reason)

        await self.db.write(op)

    async def mark_all_disconnected(self) -> int:
        """At startup: no stream survives a hub restart."""

        def op(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "UPDATE gateways SET connected = 0, disconnected_at = ? WHERE connected = 1",
                (time.time(),),
            ).rowcount

        return await self.db.write(op)

    async def record_gateway_state(self, gateway_id: str, state: pb.GatewayState) -> None:
        await self.db.write(
            lambda conn: record_gateway_state_in(conn, gateway_id, state, time.time())
        )

    async def delete_gateway(self, gateway_id: str) -> list[int]:
        """Delete a gateway without boards; revoke its certificates. Returns revoked serials."""

        def op(conn: sqlite3.Connection) -> list[int]:
            gateway_in(conn, gateway_id)
            boards = conn.execute(
                "SELECT COUNT(*) FROM boards WHERE gateway_id = ?", (gateway_id,)
            ).fetchone()[0]
            if boards:
                raise GatewayInUse(
                    f"gateway {gateway_id} still has {boards} board(s); delete them or move "
                    "them to another gateway first"
                )
            now = time.time()
            serials = [
                int(r[0], 16)
                for r in conn.execute(
                    "SELECT serial FROM certificates WHERE gateway_id = ? AND revoked_at IS NULL",
                    (gateway_id,),
                )
            ]
            conn.execute(
                "UPDATE certificates SET revoked_at = ? "
                "WHERE gateway_id = ? AND revoked_at IS NULL",
                (now, gateway_id),
            )
            conn.execute("DELETE FROM agents WHERE gateway_id = ?", (gateway_id,))
            conn.execute("DELETE FROM join_tokens WHERE gateway_id = ?", (gateway_id,))
            conn.execute("DELETE FROM gateways WHERE id = ?", (gateway_id,))
            add_event(
                conn,
                "gateway.deleted",
                gateway_id=gateway_id,
                at=now,
                revoked_certificates=len(serials),
            )
            return serials

        return await self.db.write(op)

    # -------------------------------------------------------- enrollment

    async def add_join_token(self, record: JoinTokenRecord) -> None:
        def op(conn: sqlite3.Connection) -> None:
            if record.gateway_id is not None:
                gateway_in(conn, record.gateway_id)
            conn.execute(
                """INSERT INTO join_tokens (token_id, secret_hmac, gateway_id, created_at,
                       expires_at, max_uses, uses) VALUES (?, ?, ?, ?, ?, ?, ?)""",
                (
                    record.token_id,
                    record.secret_hmac,
                    record.gateway_id,
                    record.created_at,
                    record.expires_at,
                    record.max_uses,
                    record.uses,
                ),
            )
            add_event(
                conn,
                "gateway.join_token.created",
                gateway_id=record.gateway_id,
                token_id=record.token_id,
                max_uses=record.max_uses,
                expires_at=record.expires_at,
            )

        await self.db.write(op)

    async def join_token(self, token_id: str) -> JoinTokenRecord | None:
        def op(conn: sqlite3.Connection) -> JoinTokenRecord | None:
            row = conn.execute(
                "SELECT * FROM join_tokens WHERE token_id = ?", (token_id,)
            ).fetchone()
            return JoinTokenRecord(**dict(row)) if row else None

        return await self.db.read(op)

    async def enroll(
        self,
        token_id: str,
        gateway_id: str,
        *,
        create_name: str | None,
        serial: int,
        not_after: float,
    ) -> None:
        """Spend one use of the token, create the gateway if asked, record the certificate:
        one transaction, so two hosts cannot both take a token's last use."""

        def op(conn: sqlite3.Connection) -> None:
            now = time.time()
            spent = conn.execute(
                "UPDATE join_tokens SET uses = uses + 1 WHERE token_id = ? AND uses < max_uses",
                (token_id,),
            ).rowcount
            if not spent:
                raise JoinTokenUsedError(f"join token {token_id} was used up meanwhile")
            if create_name is not None:
                conn.execute(
                    "INSERT INTO gateways (id, name, created_at, updated_at) VALUES (?, ?, ?, ?)",
                    (gateway_id, create_name, now, now),
                )
            else:
                gateway_in(conn, gateway_id)
            _record_certificate(conn, gateway_id, serial, not_after, now)
            add_event(
                conn,
                "gateway.enrolled",
                gateway_id=gateway_id,
                at=now,
                token_id=token_id,
                serial=f"{serial:x}",
            )

        await self.db.write(op)

    async def record_certificate(self, gateway_id: str, serial: int, not_after: float) -> None:
        def op(conn: sqlite3.Connection) -> None:
            _record_certificate(conn, gateway_id, serial, not_after, time.time())
            add_event(
                conn, "gateway.certificate.renewed", gateway_id=gateway_id, serial=f"{serial:x}"
            )

        await self.db.write(op)

    async def revoked_serials(self) -> set[int]:
        def op(conn: sqlite3.Connection) -> set[int]:
            rows = conn.execute("SELECT serial FROM certificates WHERE revoked_at IS NOT NULL")
            return {int(r[0], 16) for r in rows}

        return await self.db.read(op)

    # ------------------------------------------------------------ outbox

    async def enqueue_command(self, gateway_id: str, command: pb.Command) -> int:
        """Append a command to the gateway's outbox; return its sequence once durable."""
        return await self.db.write(lambda conn: enqueue_command_in(conn, gateway_id, command))

    async def commands_after(
        self, gateway_id: str, after_sequence: int, limit: int = 100
    ) -> list[QueuedCommand]:
        return await self.db.read(
            lambda conn: commands_after_in(conn, gateway_id, after_sequence, limit)
        )

    async def command_status(self, gateway_id: str, sequence: int) -> dict[str, Any] | None:
        return await self.db.read(lambda conn: command_status_in(conn, gateway_id, sequence))

    async def events(
        self, gateway_id: str | None = None, kind: str | None = None
    ) -> list[dict[str, Any]]:
        return await self.db.read(lambda conn: events_in(conn, gateway_id, kind))


def _record_certificate(
    conn: sqlite3.Connection, gateway_id: str, serial: int, not_after: float, now: float
) -> None:
    conn.execute(
        "INSERT INTO certificates (serial, gateway_id, issued_at, not_after) VALUES (?, ?, ?, ?)",
        (f"{serial:x}", gateway_id, now, not_after),
    )


def record_hello_in(
    conn: sqlite3.Connection, hello: pb.Hello, *, auto_register: bool, at: float
) -> tuple[Welcome, list[ConfirmedCommand]]:
    """Mark the gateway connected with what its Hello says (and the gateway state it
    carries), and confirm the commands it says were processed; returns the Welcome and
    the confirmed commands whose results the hub never got."""
    row = conn.execute("SELECT * FROM gateways WHERE id = ?", (hello.gateway_id,)).fetchone()
    if row is None:
        if not auto_register:
            raise UnknownGateway(f"gateway {hello.gateway_id} is not registered on this hub")
        name = hello.hostname or hello.gateway_id
        conn.execute(
            "INSERT INTO gateways (id, name, created_at, updated_at) VALUES (?, ?, ?, ?)",
            (hello.gateway_id, name, at, at),
        )
        add_event(
            conn,
            "gateway.registered",
            gateway_id=hello.gateway_id,
            at=at,
            via="insecure_dev_hello",
        )
    conn.execute(
        """UPDATE gateways SET connected = 1, connected_at = ?, last_seen_at = ?,
               updated_at = ?, sidecar_version = ?, openclaw_version = ?,
               openclaw_protocol = ?, gateway_generation = ?, workspace_root = ?,
               agent_api_url = ?, hostname = ?
           WHERE id = ?""",
        (
            at,
            at,
            at,
            hello.sidecar_version,
            hello.openclaw_version or None,
            hello.openclaw_protocol or None,
            int(hello.gateway_generation),
            hello.workspace_root or None,
            hello.agent_api_url or None,
            hello.hostname or None,
            hello.gateway_id,
        ),
    )
    if hello.HasField("gateway_state"):
        record_gateway_state_in(conn, hello.gateway_id, hello.gateway_state, at)
    confirmed = confirm_through_in(conn, hello.gateway_id, hello.last_applied_sequence, at)
    add_event(
        conn,
        "gateway.connected",
        gateway_id=hello.gateway_id,
        at=at,
        sidecar_version=hello.sidecar_version,
        last_applied_sequence=hello.last_applied_sequence,
        confirmed_without_result=len(confirmed),
    )
    gateway = gateway_in(conn, hello.gateway_id)
    return Welcome(gateway_name=gateway.name, last_sequence=gateway.next_sequence - 1), confirmed


def record_gateway_state_in(
    conn: sqlite3.Connection, gateway_id: str, state: pb.GatewayState, at: float
) -> None:
    conn.execute(
        """UPDATE gateways SET reachable = ?, unreachable_reason = ?,
               openclaw_version = COALESCE(NULLIF(?, ''), openclaw_version),
               openclaw_protocol = COALESCE(NULLIF(?, 0), openclaw_protocol),
               gateway_generation = CASE WHEN ? = 0 THEN gateway_generation ELSE ? END,
               config_valid = ?, config_error = ?, last_touched_version = ?,
               last_seen_at = ?, updated_at = ?
           WHERE id = ?""",
        (
            int(state.reachable),
            state.unreachable_reason or None,
            state.openclaw_version,
            state.openclaw_protocol,
            int(state.generation),
            int(state.generation),
            int(state.config_valid),
            state.config_error or None,
            state.last_touched_version or None,
            at,
            at,
            gateway_id,
        ),
    )
    for drift in state.drift:
        add_event(
            conn,
            "gateway.drift",
            gateway_id=gateway_id,
            agent_id=drift.agent_id,
            at=at,
            drift=pb.Drift.Kind.Name(drift.kind),
            detail=drift.detail,
        )


def gateway_in(conn: sqlite3.Connection, gateway_id: str) -> GatewayRow:
    row = conn.execute("SELECT * FROM gateways WHERE id = ?", (gateway_id,)).fetchone()
    if row is None:
        raise UnknownGateway(f"gateway {gateway_id} does not exist")
    return GatewayRow.from_row(row)
