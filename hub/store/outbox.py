"""Each gateway's outbox: numbered commands, persisted until the sidecar acknowledges them.

A command is queued inside the transaction of the change that caused it and gets the
gateway's next sequence number; after the commit the gateway's stream is told (the
OUTBOX notice), and the stream replays everything after what the sidecar applied.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hub.store.database import Connection
from hub.store.errors import StoreError, UnknownGateway
from hub.store.event_log import EventBatch, add_event
from protos import link_pb2 as pb
from protos.contract import MAX_COMMAND_BYTES, epoch_s, timestamp

# Notice channel: payload is the id of a gateway whose outbox grew.
OUTBOX = "outbox"
# The secret box purpose (hub/pki/secrets_box.py) of queued commands' secret files.
OUTBOX_SECRETS = "outbox-secrets"


class CommandTooLarge(StoreError):
    pass


@dataclass(frozen=True)
class QueuedCommand:
    sequence: int
    payload: bytes


_COMMAND_KINDS = {
    "apply_agent": "apply_agent",
    "remove_agent": "remove_agent",
    "wake_agent": "wake_agent",
    "set_heartbeat": "set_heartbeat",
    "set_credentials": "set_credentials",
}


def enqueue_command_in(
    conn: Connection, gateway_id: str, command: pb.Command, *, now: float | None = None
) -> int:
    """Append `command` to the outbox inside the caller's transaction (same commit as the
    row change that caused it); return its sequence. `now`: the caller's clock (the
    lifecycle's, which a command's outcome is then judged by)."""
    # Taking the number is the write that locks the gateway's row: a concurrent hub's
    # transaction waits here, then numbers after this one (no gap, no duplicate).
    row = conn.execute(
        "UPDATE gateways SET next_sequence = next_sequence + 1 WHERE id = ? "
        "RETURNING next_sequence - 1",
        (gateway_id,),
    ).fetchone()
    if row is None:
        raise UnknownGateway(f"gateway {gateway_id} does not exist")
    sequence = row[0]
    values = _command_row(conn, gateway_id, sequence, command, now)
    conn.execute(_INSERT_COMMAND, values)
    conn.notify(OUTBOX, gateway_id)  # the gateway's stream, if any, sends it after the commit
    add_event(
        conn,
        "command.queued",
        gateway_id=gateway_id,
        agent_id=_agent_of(command),
        sequence=sequence,
        command=values[2],
    )
    return sequence


class OutboxBatch:
    """Many `enqueue_command_in` calls as a few statements, in the caller's transaction:
    `add` commands in order, then `flush` once (before `events.flush()`). The same
    guarantees: each gateway's numbers follow on without gap or duplicate, in the order
    the commands were added, and the streams are told after the commit; each command's
    `command.queued` entry takes its place in `events` where it was added."""

    def __init__(self, conn: Connection, events: EventBatch, *, now: float | None = None) -> None:
        self.conn = conn
        self.events = events
        self.now = now
        self._queued: list[tuple[str, pb.Command, dict[str, Any]]] = []

    def add(self, gateway_id: str, command: pb.Command, *, board_id: str | None = None) -> None:
        """Queue `command`; `board_id`: its agent's board, when the caller has the row
        (the event log would look it up)."""
        kind = command.WhichOneof("action")
        detail = self.events.add(
            "command.queued",
            gateway_id=gateway_id,
            agent_id=_agent_of(command),
            board_id=board_id,
            sequence=None,  # numbered at the flush
            command=kind,
        )
        self._queued.append((gateway_id, command, detail))

    def flush(self) -> None:
        """Number, store and announce what was added (its events are written by the
        events' flush)."""
        queued, self._queued = self._queued, []
        if not queued:
            return
        conn = self.conn
        counts: dict[str, int] = {}
        for gateway_id, _, _ in queued:
            counts[gateway_id] = counts.get(gateway_id, 0) + 1
        gateway_ids = sorted(counts)  # one lock order, whoever else numbers these gateways
        # Taking the numbers locks the gateways' rows (as in enqueue_command_in); read
        # back inside the same transaction, they are this batch's alone.
        conn.executemany(
            "UPDATE gateways SET next_sequence = next_sequence + ? WHERE id = ?",
            [(counts[g], g) for g in gateway_ids],
        )
        next_of = {
            r[0]: r[1]
            for r in conn.execute(
                "SELECT id, next_sequence FROM gateways WHERE id IN "
                "(SELECT value FROM json_each(?))",
                (json.dumps(gateway_ids),),
            ).fetchall()
        }
        missing = [g for g in gateway_ids if g not in next_of]
        if missing:
            raise UnknownGateway(f"gateway {missing[0]} does not exist")
        sequence_of = {g: next_of[g] - counts[g] for g in gateway_ids}
        rows = []
        for gateway_id, command, detail in queued:
            sequence = sequence_of[gateway_id]
            sequence_of[gateway_id] = sequence + 1
            rows.append(_command_row(conn, gateway_id, sequence, command, self.now))
            detail["sequence"] = sequence
        conn.executemany(_INSERT_COMMAND, rows)
        for gateway_id in counts:  # the gateway's stream, if any, sends them after the commit
            conn.notify(OUTBOX, gateway_id)


_INSERT_COMMAND = """INSERT INTO commands (gateway_id, sequence, kind, agent_id, generation,
    payload, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)"""


def _agent_of(command: pb.Command) -> str | None:
    kind = command.WhichOneof("action")
    return getattr(getattr(command, kind), "agent_id", None) if kind else None


def _command_row(
    conn: Connection, gateway_id: str, sequence: int, command: pb.Command, now: float | None
) -> tuple[Any, ...]:
    """The commands row of `command` numbered `sequence` (its payload sealed, checked)."""
    command.sequence = sequence
    if not command.HasField("issued_at"):
        command.issued_at.CopyFrom(timestamp())
    payload = _sealed(conn, gateway_id, command).SerializeToString()
    if len(payload) > MAX_COMMAND_BYTES:
        raise CommandTooLarge(
            f"command is {len(payload)} bytes; the link carries at most {MAX_COMMAND_BYTES} "
            "(reduce workspace file sizes)"
        )
    kind = command.WhichOneof("action")
    if kind not in _COMMAND_KINDS:
        raise StoreError("command has no action")
    action = getattr(command, kind)
    return (
        gateway_id,
        sequence,
        kind,
        getattr(action, "agent_id", None) or None,
        getattr(action, "generation", 0),
        payload,
        time.time() if now is None else now,
    )


@dataclass(frozen=True)
class ConfirmedCommand:
    """A command a Hello confirmed whose result never reached the hub."""

    sequence: int
    kind: str
    agent_id: str | None  # the gateway agent id
    generation: int
    payload: bytes
    created_at: float


def confirm_through_in(
    conn: sqlite3.Connection, gateway_id: str, sequence: int, at: float
) -> list[ConfirmedCommand]:
    """The sidecar says it processed everything up to `sequence`: record the acks we
    missed, and return those commands (their outcome is for the lifecycle to learn)."""
    missed = [
        ConfirmedCommand(
            r["sequence"], r["kind"], r["agent_id"], r["generation"], r["payload"], r["created_at"]
        )
        for r in conn.execute(
            """SELECT sequence, kind, agent_id, generation, payload, created_at FROM commands
               WHERE gateway_id = ? AND sequence <= ? AND acked_at IS NULL ORDER BY sequence""",
            (gateway_id, sequence),
        ).fetchall()
    ]
    conn.execute(
        """UPDATE commands SET acked_at = ?, outcome = 'CONFIRMED_BY_HELLO'
           WHERE gateway_id = ? AND sequence <= ? AND acked_at IS NULL""",
        (at, gateway_id, sequence),
    )
    conn.execute(
        "UPDATE gateways SET acked_sequence = MAX(acked_sequence, MIN(?, next_sequence - 1)) "
        "WHERE id = ?",
        (sequence, gateway_id),
    )
    return missed


def record_reported_files_in(
    conn: sqlite3.Connection,
    gateway_id: str,
    gateway_agent_id: str,
    files: dict[str, str],
    at: float,
    *,
    in_config: bool | None = None,
) -> None:
    """Keep what the sidecar says the agent's workspace files hash to (drift reads it)."""
    conn.execute(
        "UPDATE agents SET reported_files = ?, reported_files_at = ?, "
        "reported_in_config = COALESCE(?, reported_in_config) "
        "WHERE gateway_id = ? AND gateway_agent_id = ?",
        (
            json.dumps(files, sort_keys=True),
            at,
            None if in_config is None else int(in_config),
            gateway_id,
            gateway_agent_id,
        ),
    )


def record_command_results_in(
    conn: sqlite3.Connection, gateway_id: str, results: Sequence[pb.CommandResult]
) -> None:
    """Persist acks inside the caller's transaction; an unknown sequence is ignored."""
    for result in results:
        at = epoch_s(result.observed_at) if result.HasField("observed_at") else time.time()
        acked = conn.execute(
            """UPDATE commands SET acked_at = ?, outcome = ?, error_code = ?, error = ?,
                   run_id = ?
               WHERE gateway_id = ? AND sequence = ?
               RETURNING kind""",
            (
                min(at, time.time()),
                pb.CommandResult.Outcome.Name(result.outcome),
                result.error_code or None,
                result.error or None,
                result.run_id or None,
                gateway_id,
                result.sequence,
            ),
        ).fetchone()
        if acked is not None:
            conn.execute(
                "UPDATE gateways SET acked_sequence = MAX(acked_sequence, ?), last_seen_at = ? "
                "WHERE id = ?",
                (result.sequence, time.time(), gateway_id),
            )
            add_event(
                conn,
                "command.acked",
                gateway_id=gateway_id,
                agent_id=result.agent_id or None,
                sequence=result.sequence,
                command=acked[0],
                generation=result.generation,
                outcome=pb.CommandResult.Outcome.Name(result.outcome),
                error=result.error or None,
                # what the sidecar wrote, for the dashboard's comparison with what was rendered
                file_sha256=dict(result.file_sha256) or None,
            )
            if result.file_sha256 and result.agent_id:
                record_reported_files_in(
                    conn, gateway_id, result.agent_id, dict(result.file_sha256), at
                )


def commands_after_in(
    conn: Connection, gateway_id: str, after_sequence: int, limit: int
) -> list[QueuedCommand]:
    """The commands to send a gateway's stream, their secrets opened again."""
    rows = conn.execute(
        """SELECT sequence, payload FROM commands
           WHERE gateway_id = ? AND sequence > ? ORDER BY sequence LIMIT ?""",
        (gateway_id, after_sequence, limit),
    ).fetchall()
    return [QueuedCommand(r["sequence"], _opened(conn, gateway_id, r["payload"])) for r in rows]


# A queued command's secret files (an agent's raw token) are kept sealed, so a copy of
# the database yields no token; the stream opens them just before sending.
_SEALED = b"\x00mc-sealed-v1\x00"


def _secret_files(command: pb.Command) -> list[pb.WorkspaceFile]:
    kind = command.WhichOneof("action")
    if kind == "apply_agent":
        return [f for f in command.apply_agent.files if f.secret]
    if kind == "set_credentials" and command.set_credentials.HasField("token_file"):
        return [command.set_credentials.token_file]
    return []


def _sealed(conn: Connection, gateway_id: str, command: pb.Command) -> pb.Command:
    if conn.secrets is None:
        return command
    stored = pb.Command()
    stored.CopyFrom(command)
    for file in _secret_files(stored):
        if not file.content.startswith(_SEALED):  # a resent command is sealed already
            file.content = _SEALED + conn.secrets.seal(file.content, context=gateway_id.encode())
    return stored


def _opened(conn: Connection, gateway_id: str, payload: bytes) -> bytes:
    if _SEALED not in payload:
        return payload
    command = pb.Command.FromString(payload)
    for file in _secret_files(command):
        if file.content.startswith(_SEALED):
            if conn.secrets is None:
                raise StoreError(
                    "a queued command holds a sealed secret and this store has no key to "
                    "open it; start the hub with the data directory's hub.key"
                )
            file.content = conn.secrets.open(
                file.content[len(_SEALED) :], context=gateway_id.encode()
            )
    return command.SerializeToString()


def command_status_in(
    conn: sqlite3.Connection, gateway_id: str, sequence: int
) -> dict[str, Any] | None:
    row = conn.execute(
        """SELECT sequence, kind, agent_id, generation, created_at, acked_at, outcome,
                  error_code, error, run_id
           FROM commands WHERE gateway_id = ? AND sequence = ?""",
        (gateway_id, sequence),
    ).fetchone()
    return dict(row) if row else None
