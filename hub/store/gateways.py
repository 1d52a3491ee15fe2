"""Gateways in the store: their rows, links, enrollment records, and their outbox's face.

`GatewayStore` is what the link, enrollment and gateway administration call; each
coroutine is one logical change (its rows and its event log entry commit together).
Other parts keep their own tables' SQL beside their rules (boards.py, tasks.py,
provisioning/agents.py, webhooks/store.py) in `*_in(conn)` functions that run inside
a caller's transaction.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hub.lifecycle.causes import record_causes_in
from hub.pki.join_tokens import JoinTokenRecord, JoinTokenUsedError
from hub.store.database import Connection, Database
from hub.store.errors import Refusal, StoreError, UnknownGateway
from hub.store.event_log import add_event, events_in
from hub.store.outbox import (
    ConfirmedCommand,
    QueuedCommand,
    command_status_in,
    commands_after_in,
    confirm_through_in,
    enqueue_command_in,
    record_reported_files_in,
)
from hub.store.ownership import (
    check_owner_in,
    hold_ownership_in,
    new_hub_id,
    take_ownership_in,
)
from hub.workspace_root import effective_workspace_root, workspace_root_problem
from missioncontrol.agent_api import DEFAULT_AGENT_API_URL
from protos import link_pb2 as pb

# Notice channel (every hub): a gateway was deleted (its certificates revoked). Payload:
# the gateway's id.
GATEWAY_DELETED = "gateway_deleted"


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
    declared_workspace_root: str | None = None  # the operator's, at create or PATCH
    reported_workspace_root: str | None = None  # the sidecar's, from its last Hello
    follows_hub_workspace_root: bool = False  # the sidecar writes under the declared root
    unmanaged_agents: str = "[]"  # JSON: openclaw.json entries the hub does not manage
    files_stale: bool = False  # rendered with a root or API address the sidecar contradicts
    owner_hub: str | None = None  # the hub instance that owns it (hub/store/ownership.py)
    owner_epoch: int = 0  # raised by each taking of ownership

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> GatewayRow:
        values = dict(row)
        for key in ("follows_hub_workspace_root", "files_stale"):
            values[key] = bool(values.get(key))
        for key in ("connected", "reachable", "config_valid"):
            if values[key] is not None:
                values[key] = bool(values[key])
        return cls(**values)


@dataclass(frozen=True)
class Welcome:
    gateway_name: str
    last_sequence: int
    workspace_root: str = ""  # the declared root a following sidecar writes under
    epoch: int = 0  # the gateway's ownership epoch the Hello took (hub/store/ownership.py)


class GatewayStore:
    def __init__(self, db: Database, *, hub_id: str | None = None) -> None:
        """`hub_id`: this hub process's id, the owner its sessions' Hellos record (a
        fresh one by default: every start is a new owner)."""
        self.db = db
        self.hub_id = hub_id or new_hub_id()

    # ----------------------------------------------------------- gateways

    async def create_gateway(
        self, gateway_id: str, name: str, *, workspace_root: str | None = None
    ) -> GatewayRow:
        """A new gateway; with a declared `workspace_root` its agents can be created before
        its sidecar first connects."""

        def op(conn: sqlite3.Connection) -> GatewayRow:
            now = time.time()
            conn.execute(
                "INSERT INTO gateways (id, name, created_at, updated_at, workspace_root, "
                "declared_workspace_root) VALUES (?, ?, ?, ?, ?, ?)",
                (gateway_id, name, now, now, workspace_root, workspace_root),
            )
            add_event(
                conn,
                "gateway.created",
                gateway_id=gateway_id,
                at=now,
                name=name,
                workspace_root=workspace_root,
            )
            return gateway_in(conn, gateway_id)

        return await self.db.write(op)

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

        def op(conn: Connection) -> Welcome:
            at = time.time() if now is None else now
            return record_hello_in(
                conn, hello, auto_register=auto_register, at=at, hub_id=self.hub_id
            )[0]

        return await self.db.write(op, abandonable=True)  # nothing, if the sidecar gave up

    async def record_disconnect(
        self,
        gateway_id: str,
        reason: str,
        *,
        connected_since: float,
        epoch: int | None = None,
        now: float | None = None,
    ) -> bool:
        """Mark the gateway disconnected, unless a newer stream connected meanwhile (or,
        given the session's `epoch`, unless another session owns the gateway now, here or
        on another hub). Returns whether it was recorded (the session was still the
        gateway's): only then do its agents hear of the disconnect."""

        def op(conn: Connection) -> bool:
            at = time.time() if now is None else now
            if epoch is not None:
                try:
                    hold_ownership_in(conn, gateway_id, self.hub_id, epoch)
                except StoreError:
                    return False
            conn.execute(
                """UPDATE gateways SET connected = 0, disconnected_at = ?, last_seen_at = ?,
                       updated_at = ?
                   WHERE id = ? AND (connected_at IS NULL OR connected_at <= ?)""",
                (at, at, at, gateway_id, connected_since),
            )
            add_event(conn, "gateway.disconnected", gateway_id=gateway_id, at=at, reason=reason)
            return True

        return await self.db.write(op)

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

        def op(conn: Connection) -> list[int]:
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
            conn.notify(GATEWAY_DELETED, gateway_id)
            return serials

        return await self.db.write(op)

    # -------------------------------------------------------- enrollment

    async def add_join_token(self, record: JoinTokenRecord) -> None:
        def op(conn: sqlite3.Connection) -> None:
            if record.gateway_id is not None:
                gateway_in(conn, record.gateway_id)
            conn.execute(
                """INSERT INTO join_tokens (token_id, secret_hmac, gateway_id, created_at,
                       expires_at, max_uses, uses, labels) VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
                (
                    record.token_id,
                    record.secret_hmac,
                    record.gateway_id,
                    record.created_at,
                    record.expires_at,
                    record.max_uses,
                    record.uses,
                    json.dumps(dict(record.labels), sort_keys=True),
                ),
            )
            add_event(
                conn,
                "gateway.join_token.created",
                gateway_id=record.gateway_id,
                token_id=record.token_id,
                max_uses=record.max_uses,
                expires_at=record.expires_at,
                labels=dict(record.labels),
            )

        await self.db.write(op)

    async def join_token(self, token_id: str) -> JoinTokenRecord | None:
        def op(conn: sqlite3.Connection) -> JoinTokenRecord | None:
            row = conn.execute(
                "SELECT * FROM join_tokens WHERE token_id = ?", (token_id,)
            ).fetchone()
            return JoinTokenRecord.from_row(row) if row else None

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
            token = conn.execute(
                "SELECT labels FROM join_tokens WHERE token_id = ?", (token_id,)
            ).fetchone()
            labels = json.loads(token["labels"] or "{}") if token else {}
            if labels:  # the token's labels; ones the gateway has keep theirs unless named
                set_labels_in(conn, gateway_id, labels, replace=False)
            _record_certificate(conn, gateway_id, serial, not_after, now)
            add_event(
                conn,
                "gateway.enrolled",
                gateway_id=gateway_id,
                at=now,
                token_id=token_id,
                serial=f"{serial:x}",
                labels=labels,
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
        self, gateway_id: str, after_sequence: int, limit: int = 100, *, epoch: int | None = None
    ) -> list[QueuedCommand]:
        """The next page of the gateway's outbox. With a session's `epoch`, only while
        this hub still owns the gateway at that epoch, checked after the page is read
        (raises Superseded): a page read before another hub took the gateway is the
        last this session may send."""

        def op(conn: Connection) -> list[QueuedCommand]:
            page = commands_after_in(conn, gateway_id, after_sequence, limit)
            if epoch is not None:
                check_owner_in(conn, gateway_id, self.hub_id, epoch)
            return page

        return await self.db.read(op)

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
    conn: Connection,
    hello: pb.Hello,
    *,
    auto_register: bool,
    at: float,
    hub_id: str | None = None,
) -> tuple[Welcome, list[ConfirmedCommand]]:
    """Mark the gateway connected with what its Hello says (and the gateway state it
    carries), and confirm the commands it says were processed; with `hub_id`, that hub
    takes the gateway's ownership (the Welcome carries the epoch). Returns the Welcome
    and the confirmed commands whose results the hub never got."""
    row = conn.execute("SELECT * FROM gateways WHERE id = ?", (hello.gateway_id,)).fetchone()
    if row is not None:
        before = GatewayRow.from_row(row)
    else:
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
        before = gateway_in(conn, hello.gateway_id)
    reported = hello.workspace_root or None
    if hello.follows_hub_workspace_root and before.declared_workspace_root:
        reported = before.declared_workspace_root  # where it writes from the Welcome on
    root = effective_workspace_root(before.declared_workspace_root, reported)
    stale = _files_stale_in(conn, before, root, hello.agent_api_url or None)
    conn.execute(
        """UPDATE gateways SET connected = 1, connected_at = ?, last_seen_at = ?,
               updated_at = ?, sidecar_version = ?, openclaw_version = ?,
               openclaw_protocol = ?, gateway_generation = ?, workspace_root = ?,
               agent_api_url = ?, hostname = ?, reported_workspace_root = ?,
               follows_hub_workspace_root = ?, files_stale = MAX(files_stale, ?)
           WHERE id = ?""",
        (
            at,
            at,
            at,
            hello.sidecar_version,
            hello.openclaw_version or None,
            hello.openclaw_protocol or None,
            int(hello.gateway_generation),
            root,
            hello.agent_api_url or None,
            hello.hostname or None,
            reported,
            hello.follows_hub_workspace_root,
            stale,
            hello.gateway_id,
        ),
    )
    if hello.unmanaged_reported:
        _record_unmanaged_in(conn, hello.gateway_id, hello.unmanaged)
    for managed in hello.inventory:
        record_reported_files_in(
            conn,
            hello.gateway_id,
            managed.agent_id,
            dict(managed.file_sha256),
            at,
            in_config=managed.present_in_config,
        )
    problem = workspace_root_problem(
        before.declared_workspace_root,
        reported,
        hello.follows_hub_workspace_root,
        connected_once=True,
    )
    if problem is not None:
        add_event(
            conn,
            "gateway.workspace_root.mismatch",
            gateway_id=hello.gateway_id,
            at=at,
            declared=before.declared_workspace_root,
            reported=reported,
            detail=problem,
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
    epoch = take_ownership_in(conn, hello.gateway_id, hub_id) if hub_id is not None else 0
    # None of these is a column the Hello changed: the row as read first tells them.
    welcome = Welcome(
        gateway_name=before.name,
        last_sequence=before.next_sequence - 1,
        workspace_root=before.declared_workspace_root or "",
        epoch=epoch,
    )
    return welcome, confirmed


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
    if state.unmanaged_reported:
        _record_unmanaged_in(conn, gateway_id, state.unmanaged)
    if state.conditions_reported:
        record_causes_in(conn, gateway_id, state.conditions, at)
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


MAX_UNMANAGED = 500


def _record_unmanaged_in(
    conn: sqlite3.Connection, gateway_id: str, agents: Sequence[pb.UnmanagedAgent]
) -> None:
    """Keep the entries of the gateway's openclaw.json its sidecar does not manage."""
    listed = [
        {"agent_id": a.agent_id, "name": a.name, "workspace": a.workspace}
        for a in agents[:MAX_UNMANAGED]
        if a.agent_id
    ]
    conn.execute(
        "UPDATE gateways SET unmanaged_agents = ? WHERE id = ?", (json.dumps(listed), gateway_id)
    )


class GatewayConflict(StoreError):
    """The gateway's current state does not allow the change; the message says why."""

    refusal = Refusal.CONFLICT


def _files_stale_in(
    conn: sqlite3.Connection, before: GatewayRow, root: str | None, api_url: str | None
) -> bool:
    """Whether the agents' files, rendered with the row's root and agent-API address
    (the default address before any Hello), contradict what this Hello says."""
    rendered_url = before.agent_api_url or DEFAULT_AGENT_API_URL
    changed = (before.workspace_root is not None and root != before.workspace_root) or (
        (api_url or DEFAULT_AGENT_API_URL) != rendered_url
    )
    return changed and has_agents_in(conn, before.id)


def has_agents_in(conn: sqlite3.Connection, gateway_id: str, *, applied: bool = False) -> bool:
    """Whether the gateway has agents (only those a sidecar has applied, if `applied`)."""
    row = conn.execute(
        "SELECT 1 FROM agents WHERE gateway_id = ? AND status != 'deleting' "
        "AND (NOT ? OR applied_generation > 0) LIMIT 1",
        (gateway_id, applied),
    ).fetchone()
    return row is not None


def update_gateway_in(
    conn: sqlite3.Connection,
    gateway_id: str,
    *,
    name: str | None = None,
    workspace_root: str | None = None,
    now: float,
) -> tuple[GatewayRow, bool]:
    """Rename a gateway or declare its workspace root; returns the row and whether the
    agents' files must be rendered again (the root changed)."""
    before = gateway_in(conn, gateway_id)
    if name is not None:
        conn.execute(
            "UPDATE gateways SET name = ?, updated_at = ? WHERE id = ?", (name, now, gateway_id)
        )
    moved = workspace_root is not None and workspace_root != before.workspace_root
    if workspace_root is not None and workspace_root != before.declared_workspace_root:
        if moved and has_agents_in(conn, gateway_id, applied=True):
            raise GatewayConflict(
                f"gateway {gateway_id} already has agents whose workspaces its sidecar wrote "
                f"under {before.workspace_root}; a new workspace_root would leave them behind. "
                "Keep the root, or delete those agents and create them again after the change"
            )
        conn.execute(
            "UPDATE gateways SET declared_workspace_root = ?, workspace_root = ?, "
            "updated_at = ? WHERE id = ?",
            (workspace_root, workspace_root, now, gateway_id),
        )
        add_event(
            conn,
            "gateway.workspace_root.declared",
            gateway_id=gateway_id,
            at=now,
            workspace_root=workspace_root,
            previous=before.workspace_root,
        )
    return gateway_in(conn, gateway_id), moved


def take_stale_files_in(conn: sqlite3.Connection, gateway_id: str) -> bool:
    """Clear the gateway's stale-files mark; True if it was set (render its agents again)."""
    return (
        conn.execute(
            "UPDATE gateways SET files_stale = 0 WHERE id = ? AND files_stale = 1", (gateway_id,)
        ).rowcount
        > 0
    )


def labels_in(
    conn: sqlite3.Connection, gateway_ids: Sequence[str] | None = None
) -> dict[str, dict[str, str]]:
    """Each gateway's labels (every gateway's when `gateway_ids` is None)."""
    if gateway_ids is None:
        rows = conn.execute(
            "SELECT gateway_id, label_key, label_value FROM gateway_labels"
        ).fetchall()
    elif not gateway_ids:
        return {}
    else:
        marks = ", ".join("?" for _ in gateway_ids)
        rows = conn.execute(
            "SELECT gateway_id, label_key, label_value FROM gateway_labels "
            f"WHERE gateway_id IN ({marks})",
            list(gateway_ids),
        ).fetchall()
    found: dict[str, dict[str, str]] = {}
    for gateway_id, key, value in rows:
        found.setdefault(gateway_id, {})[key] = value
    return {g: dict(sorted(labels.items())) for g, labels in found.items()}


def set_labels_in(
    conn: sqlite3.Connection, gateway_id: str, labels: dict[str, str], *, replace: bool
) -> dict[str, str]:
    """Give the gateway these labels (already validated); with `replace`, only these.
    Returns its labels after."""
    if replace:
        conn.execute("DELETE FROM gateway_labels WHERE gateway_id = ?", (gateway_id,))
    for key, value in labels.items():
        conn.execute(
            "INSERT INTO gateway_labels (gateway_id, label_key, label_value) VALUES (?, ?, ?) "
            "ON CONFLICT (gateway_id, label_key) DO UPDATE SET label_value = excluded.label_value",
            (gateway_id, key, value),
        )
    return labels_in(conn, [gateway_id]).get(gateway_id, {})


def gateway_in(conn: sqlite3.Connection, gateway_id: str) -> GatewayRow:
    row = conn.execute("SELECT * FROM gateways WHERE id = ?", (gateway_id,)).fetchone()
    if row is None:
        raise UnknownGateway(f"gateway {gateway_id} does not exist")
    return GatewayRow.from_row(row)


def gateways_in(conn: sqlite3.Connection, gateway_ids: list[str]) -> dict[str, GatewayRow]:
    """`gateway_in` for many gateways in one query; one that does not exist is absent."""
    if not gateway_ids:
        return {}
    rows = conn.execute(
        "SELECT * FROM gateways WHERE id IN (SELECT value FROM json_each(?))",
        (json.dumps(gateway_ids),),
    ).fetchall()
    return {row["id"]: GatewayRow.from_row(row) for row in rows}


# ------------------------------------------------------------------ reads (dashboard)

GATEWAY_STATES = ("connected", "disconnected", "never_connected")


def list_gateways_in(
    conn: sqlite3.Connection,
    *,
    state: str | None = None,
    search: str | None = None,
    ids: Sequence[str] | None = None,
    limit: int,
    offset: int,
) -> tuple[list[GatewayRow], int]:
    """One page of gateways by name, narrowed by link state (one of GATEWAY_STATES, as the
    store last recorded it), by a piece of the name, host name or id, and to `ids` (the
    ones a label selector picked) when given."""
    clauses, args = _gateway_filter(state, search)
    if ids is not None:
        if not ids:
            return [], 0
        clauses.append(f"id IN ({', '.join('?' for _ in ids)})")
        args += list(ids)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    total = conn.execute(f"SELECT COUNT(*) FROM gateways {where}", args).fetchone()[0]
    rows = conn.execute(
        f"SELECT * FROM gateways {where} ORDER BY name, id LIMIT ? OFFSET ?",
        (*args, limit, offset),
    ).fetchall()
    return [GatewayRow.from_row(r) for r in rows], int(total)


def _gateway_filter(state: str | None, search: str | None) -> tuple[list[str], list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []
    if state == "connected":
        clauses.append("connected = 1")
    elif state == "disconnected":
        clauses.append("connected = 0 AND connected_at IS NOT NULL")
    elif state == "never_connected":
        clauses.append("connected_at IS NULL")
    if search:
        pattern = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        clauses.append(
            "(name LIKE ? ESCAPE '\\' OR hostname LIKE ? ESCAPE '\\' OR id LIKE ? ESCAPE '\\')"
        )
        args += [pattern, pattern, pattern]
    return clauses, args


def gateway_counts_in(conn: sqlite3.Connection) -> dict[str, int]:
    """How many gateways there are, connected, and never connected (as the store holds it)."""
    row = conn.execute(
        """SELECT COUNT(*), COALESCE(SUM(connected = 1), 0),
                  COALESCE(SUM(connected_at IS NULL), 0) FROM gateways"""
    ).fetchone()
    return {"total": int(row[0]), "connected": int(row[1]), "never_connected": int(row[2])}


def disconnected_gateways_in(conn: sqlite3.Connection, limit: int) -> tuple[list[GatewayRow], int]:
    """Gateways that connected once and are disconnected now, longest gone first."""
    where = "WHERE connected = 0 AND connected_at IS NOT NULL"
    total = conn.execute(f"SELECT COUNT(*) FROM gateways {where}").fetchone()[0]
    rows = conn.execute(
        f"SELECT * FROM gateways {where} ORDER BY disconnected_at, id LIMIT ?", (limit,)
    ).fetchall()
    return [GatewayRow.from_row(r) for r in rows], int(total)


def unhealthy_gateways_in(conn: sqlite3.Connection, limit: int) -> list[GatewayRow]:
    """Connected gateways whose sidecar reports the gateway unreachable or its config invalid."""
    rows = conn.execute(
        """SELECT * FROM gateways WHERE connected = 1 AND (reachable = 0 OR config_valid = 0)
           ORDER BY name, id LIMIT ?""",
        (limit,),
    ).fetchall()
    return [GatewayRow.from_row(r) for r in rows]


def gateway_names_in(conn: sqlite3.Connection, gateway_ids: list[str]) -> dict[str, str]:
    if not gateway_ids:
        return {}
    marks = ", ".join("?" for _ in gateway_ids)
    rows = conn.execute(f"SELECT id, name FROM gateways WHERE id IN ({marks})", gateway_ids)
    return {r[0]: r[1] for r in rows}


def join_tokens_in(conn: sqlite3.Connection, gateway_id: str) -> list[JoinTokenRecord]:
    """The gateway's join tokens, newest first (records only: the secret is never kept)."""
    rows = conn.execute(
        "SELECT * FROM join_tokens WHERE gateway_id = ? ORDER BY created_at DESC LIMIT 50",
        (gateway_id,),
    ).fetchall()
    return [JoinTokenRecord.from_row(r) for r in rows]


@dataclass(frozen=True)
class CertificateRecord:
    serial: str
    gateway_id: str
    issued_at: float
    not_after: float
    revoked_at: float | None


def certificates_in(conn: sqlite3.Connection, gateway_id: str) -> list[CertificateRecord]:
    """The client certificates issued to a gateway, newest first."""
    rows = conn.execute(
        "SELECT * FROM certificates WHERE gateway_id = ? ORDER BY issued_at DESC LIMIT 50",
        (gateway_id,),
    ).fetchall()
    return [CertificateRecord(**dict(r)) for r in rows]


def certificates_expiring_in(
    conn: sqlite3.Connection, before: float, limit: int
) -> list[tuple[str, float]]:
    """(gateway id, expiry) of gateways whose newest valid certificate ends before `before`:
    renewal runs at 70-90 % of a lifetime, so one this close has not been renewed."""
    rows = conn.execute(
        """SELECT c.gateway_id, MAX(c.not_after) AS not_after FROM certificates c
           JOIN gateways g ON g.id = c.gateway_id
           WHERE c.revoked_at IS NULL GROUP BY c.gateway_id HAVING MAX(c.not_after) < ?
           ORDER BY not_after LIMIT ?""",
        (before, limit),
    ).fetchall()
    return [(r[0], float(r[1])) for r in rows]
