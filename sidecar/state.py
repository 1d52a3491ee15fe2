"""The sidecar's local state: one small SQLite file in the state directory.

It holds what must survive a restart: the gateway id (insecure-dev mode), the
last applied command sequence, what each managed agent was brought to, the
token verifiers, and heartbeats not yet confirmed by the hub. Each change is one
transaction, so "applied" and "recorded as applied" cannot drift apart.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from missioncontrol.private_files import PRIVATE_FILE_MODE, ensure_private_dir
from sidecar.gateway import HeartbeatSpec

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS agents (
        agent_id   TEXT PRIMARY KEY,
        generation INTEGER NOT NULL,
        workspace  TEXT NOT NULL,
        files      TEXT NOT NULL DEFAULT '{}',
        updated_at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS credentials (
        token_id  TEXT PRIMARY KEY,
        agent_id  TEXT NOT NULL,
        sha256    BLOB NOT NULL,
        not_after REAL
    )""",
    "CREATE INDEX IF NOT EXISTS credentials_agent ON credentials(agent_id)",
    # The hub's id of each managed agent (ApplyAgent.hub_agent_id), so its agent API takes
    # either id; a table of its own, so state files of older versions gain it as they open.
    """CREATE TABLE IF NOT EXISTS hub_agent_ids (
        agent_id     TEXT PRIMARY KEY,
        hub_agent_id TEXT NOT NULL
    )""",
    # The heartbeat each managed agent should have on the gateway, as the hub last set it,
    # so a job removed by hand can be noticed and put back (a table of its own, as above).
    """CREATE TABLE IF NOT EXISTS heartbeats (
        agent_id  TEXT PRIMARY KEY,
        every_s   INTEGER NOT NULL,
        target    TEXT NOT NULL,
        checklist TEXT NOT NULL
    )""",
    # Latest heartbeat per agent not yet acknowledged by the hub (written while it is away).
    """CREATE TABLE IF NOT EXISTS pending_beats (
        agent_id        TEXT PRIMARY KEY,
        observed_at     REAL NOT NULL,
        status          TEXT NOT NULL DEFAULT '',
        current_task_id TEXT NOT NULL DEFAULT ''
    )""",
)


@dataclass(frozen=True)
class Credential:
    """A verifier for one agent token: its public id and the sha256 of the raw token."""

    token_id: str
    agent_id: str
    sha256: bytes
    not_after: float | None = None  # end of a rotated token's grace window


@dataclass(frozen=True)
class PendingBeat:
    """An agent's latest heartbeat as the sidecar received it (observed_at: Unix seconds)."""

    agent_id: str
    observed_at: float
    status: str = ""
    current_task_id: str = ""
    runtime: bool = False  # a run the gateway finished, not a call to the agent API


@dataclass(frozen=True)
class AgentState:
    agent_id: str
    generation: int
    workspace: str
    files: dict[str, str] = field(default_factory=dict)  # name -> sha256 hex
    hub_agent_id: str = ""  # the hub's id; "" leaves the one recorded before as it is
    heartbeat: HeartbeatSpec | None = None  # set: the heartbeat the hub just applied


class LocalState:
    def __init__(self, path: Path) -> None:
        ensure_private_dir(path.parent)
        self.path = path
        # Created 0600 before SQLite opens it: its -wal and -shm files take the same mode.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, PRIVATE_FILE_MODE))
        path.chmod(PRIVATE_FILE_MODE)
        self._conn = sqlite3.connect(path, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = FULL")
        for statement in SCHEMA:
            self._conn.execute(statement)
        columns = {r["name"] for r in self._conn.execute("PRAGMA table_info(pending_beats)")}
        if "runtime" not in columns:  # a state file of an older version
            self._conn.execute(
                "ALTER TABLE pending_beats ADD COLUMN runtime INTEGER NOT NULL DEFAULT 0"
            )
        for suffix in ("-wal", "-shm"):  # left by an older version with the umask's mode
            companion = path.with_name(path.name + suffix)
            if companion.exists():
                companion.chmod(PRIVATE_FILE_MODE)

    def close(self) -> None:
        self._conn.close()

    # ---------------------------------------------------------------- meta

    def _get(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def _set(self, key: str, value: str) -> None:
        self._conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def gateway_id(self) -> str:
        """The id this sidecar presents in insecure-dev mode, made once and kept."""
        value = self._get("gateway_id")
        if value is None:
            value = f"gw-{uuid.uuid4()}"
            self._set("gateway_id", value)
        return value

    @property
    def last_applied_sequence(self) -> int:
        return int(self._get("last_applied_sequence") or 0)

    def reset_sequence(self, sequence: int) -> None:
        self._set("last_applied_sequence", str(sequence))

    def record_hub_clock(self, skew_s: float, measured_at: float) -> None:
        """The hub's clock minus ours at the last Welcome (for `mc-sidecar doctor`)."""
        self._set("hub_clock", json.dumps({"skew_s": skew_s, "measured_at": measured_at}))

    def hub_clock(self) -> tuple[float, float] | None:
        """(skew_s, measured_at) of the last Welcome, or None before the first."""
        raw = self._get("hub_clock")
        if raw is None:
            return None
        value = json.loads(raw)
        return float(value["skew_s"]), float(value["measured_at"])

    # -------------------------------------------------------------- agents

    def agent(self, agent_id: str) -> AgentState | None:
        row = self._conn.execute("SELECT * FROM agents WHERE agent_id = ?", (agent_id,)).fetchone()
        return _agent(row) if row else None

    def agents(self) -> list[AgentState]:
        rows = self._conn.execute("SELECT * FROM agents ORDER BY agent_id").fetchall()
        return [_agent(r) for r in rows]

    def record_applied(
        self,
        sequence: int,
        *,
        upsert: Iterable[AgentState] = (),
        remove: Iterable[str] = (),
        credentials: dict[str, list[Credential]] | None = None,
    ) -> None:
        """Record a processed command and its effect on managed agents, atomically."""
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            for agent in upsert:
                self._conn.execute(
                    """INSERT INTO agents (agent_id, generation, workspace, files, updated_at)
                       VALUES (?, ?, ?, ?, ?)
                       ON CONFLICT(agent_id) DO UPDATE SET generation = excluded.generation,
                           workspace = excluded.workspace, files = excluded.files,
                           updated_at = excluded.updated_at""",
                    (
                        agent.agent_id,
                        agent.generation,
                        agent.workspace,
                        json.dumps(agent.files, sort_keys=True),
                        time.time(),
                    ),
                )
                if agent.heartbeat is not None:
                    self._conn.execute(
                        "INSERT OR REPLACE INTO heartbeats (agent_id, every_s, target, checklist) "
                        "VALUES (?, ?, ?, ?)",
                        (
                            agent.agent_id,
                            agent.heartbeat.every_s,
                            agent.heartbeat.target,
                            agent.heartbeat.checklist,
                        ),
                    )
                if agent.hub_agent_id:
                    self._conn.execute(
                        "INSERT OR REPLACE INTO hub_agent_ids (agent_id, hub_agent_id) "
                        "VALUES (?, ?)",
                        (agent.agent_id, agent.hub_agent_id),
                    )
            for agent_id in remove:
                self._conn.execute("DELETE FROM agents WHERE agent_id = ?", (agent_id,))
                self._conn.execute("DELETE FROM credentials WHERE agent_id = ?", (agent_id,))
                self._conn.execute("DELETE FROM hub_agent_ids WHERE agent_id = ?", (agent_id,))
                self._conn.execute("DELETE FROM heartbeats WHERE agent_id = ?", (agent_id,))
            for agent_id, creds in (credentials or {}).items():
                self._conn.execute("DELETE FROM credentials WHERE agent_id = ?", (agent_id,))
                self._conn.executemany(
                    "INSERT OR REPLACE INTO credentials (token_id, agent_id, sha256, not_after) "
                    "VALUES (?, ?, ?, ?)",
                    [(c.token_id, agent_id, c.sha256, c.not_after) for c in creds],
                )
            if sequence > self.last_applied_sequence:
                self._set("last_applied_sequence", str(sequence))

    def hub_agent_ids(self) -> dict[str, str]:
        """Gateway agent id -> the hub's id, for the agents the hub named."""
        rows = self._conn.execute("SELECT agent_id, hub_agent_id FROM hub_agent_ids").fetchall()
        return {r["agent_id"]: r["hub_agent_id"] for r in rows}

    def credentials(self, agent_id: str | None = None) -> list[Credential]:
        """Every token verifier, or one agent's."""
        rows = self._conn.execute(
            "SELECT * FROM credentials WHERE ? IS NULL OR agent_id = ?", (agent_id, agent_id)
        ).fetchall()
        return [Credential(r["token_id"], r["agent_id"], r["sha256"], r["not_after"]) for r in rows]

    def heartbeats(self) -> dict[str, HeartbeatSpec]:
        """The heartbeat the hub last applied to each managed agent (agents applied by an
        older version have none recorded until their next apply)."""
        rows = self._conn.execute("SELECT * FROM heartbeats").fetchall()
        return {
            r["agent_id"]: HeartbeatSpec(r["every_s"], r["target"], r["checklist"]) for r in rows
        }

    # ------------------------------------------------------------ heartbeats

    def pending_beats(self) -> list[PendingBeat]:
        rows = self._conn.execute("SELECT * FROM pending_beats ORDER BY agent_id").fetchall()
        return [
            PendingBeat(
                r["agent_id"],
                r["observed_at"],
                r["status"],
                r["current_task_id"],
                runtime=r["runtime"] == 1,
            )
            for r in rows
        ]

    def save_pending_beats(self, beats: Iterable[PendingBeat]) -> None:
        """Upsert beats in one transaction (one fsync for any number of agents)."""
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany(
                "INSERT OR REPLACE INTO pending_beats "
                "(agent_id, observed_at, status, current_task_id, runtime) VALUES (?, ?, ?, ?, ?)",
                [
                    (b.agent_id, b.observed_at, b.status, b.current_task_id, int(b.runtime))
                    for b in beats
                ],
            )

    def drop_pending_beats(self, acked: Iterable[PendingBeat]) -> None:
        """Forget persisted beats the hub acknowledged; a newer persisted beat stays."""
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany(
                "DELETE FROM pending_beats WHERE agent_id = ? AND observed_at <= ?",
                [(b.agent_id, b.observed_at) for b in acked],
            )


def _agent(row: sqlite3.Row) -> AgentState:
    return AgentState(
        agent_id=row["agent_id"],
        generation=row["generation"],
        workspace=row["workspace"],
        files=json.loads(row["files"]),
    )
