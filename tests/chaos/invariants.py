"""What must hold after every round, read from the files themselves.

The hub's database and the sidecar's state are read directly (read-only SQLite
connections beside the running processes), the workspaces and openclaw.json from
disk, the sidecar's "command.applied" log lines from its log file.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protos import link_pb2 as pb
from sidecar.workspace import TEMP_SUFFIX

SETTLED_STATUSES = ("online", "offline")
# Temp names of the project's atomic writes: workspace files, private files, openclaw.json.
TEMP_GLOBS = (f"*{TEMP_SUFFIX}", ".*.tmp")


def read_only(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    conn.row_factory = sqlite3.Row
    return conn


def integrity(path: Path) -> list[str]:
    """`PRAGMA integrity_check` of one database: [] when it answers ok."""
    if not path.exists():
        return []
    conn = read_only(path)
    try:
        rows = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
    except sqlite3.DatabaseError as exc:  # too damaged to check at all
        rows = [f"{exc}"]
    finally:
        conn.close()
    return [] if rows == ["ok"] else [f"{path.name}: {row}" for row in rows]


@dataclass(frozen=True)
class Unsettled:
    gateway_agent_id: str
    status: str
    phase: str
    generation: int
    applied: int
    reason: str | None

    def __str__(self) -> str:
        return (
            f"{self.gateway_agent_id}: {self.status}/{self.phase} generation {self.generation} "
            f"applied {self.applied} reason {self.reason}"
        )


def unsettled(hub_db: Path, gateway_id: str) -> list[str]:
    """Agents, boards and commands of the gateway still on their way; [] when settled.

    Settled: every agent `online` or `offline` with nothing outstanding (phase idle, its
    generation applied), no agent or board `deleting`, every queued command acked. An
    agent whose command only a Hello confirmed says so (its result was lost on the way).
    """
    conn = read_only(hub_db)
    try:
        agents = conn.execute(
            "SELECT gateway_agent_id, status, phase, lifecycle_generation, applied_generation, "
            "status_reason FROM agents WHERE gateway_id = ?",
            (gateway_id,),
        ).fetchall()
        boards = conn.execute(
            "SELECT id FROM boards WHERE gateway_id = ? AND status = 'deleting'", (gateway_id,)
        ).fetchall()
        pending = conn.execute(
            "SELECT sequence, kind, agent_id FROM commands "
            "WHERE gateway_id = ? AND acked_at IS NULL",
            (gateway_id,),
        ).fetchall()
        by_hello = {
            (r[0], r[1])
            for r in conn.execute(
                "SELECT agent_id, generation FROM commands "
                "WHERE gateway_id = ? AND outcome = 'CONFIRMED_BY_HELLO'",
                (gateway_id,),
            )
        }
    finally:
        conn.close()
    waiting = [
        str(Unsettled(a[0], a[1], a[2], a[3], a[4], a[5]))
        + (
            " (its command was confirmed by a Hello: the result was lost)"
            if (a[0], a[3]) in by_hello
            else ""
        )
        for a in agents
        if a[1] not in SETTLED_STATUSES or a[2] != "idle" or a[4] != a[3]
    ]
    waiting += [f"board {b[0]}: deleting" for b in boards]
    waiting += [f"command {c[0]} ({c[1]} {c[2]}): not acked" for c in pending]
    return waiting


def hub_agents(hub_db: Path, gateway_id: str) -> dict[str, dict[str, Any]]:
    conn = read_only(hub_db)
    try:
        rows = conn.execute(
            "SELECT gateway_agent_id, status, lifecycle_generation, applied_generation "
            "FROM agents WHERE gateway_id = ?",
            (gateway_id,),
        ).fetchall()
    finally:
        conn.close()
    return {r[0]: dict(r) for r in rows}


def last_applies(hub_db: Path, gateway_id: str) -> dict[str, pb.ApplyAgent]:
    """Each agent's newest ApplyAgent: what its workspace must hold now."""
    conn = read_only(hub_db)
    try:
        rows = conn.execute(
            "SELECT agent_id, payload FROM commands WHERE gateway_id = ? AND kind = 'apply_agent' "
            "ORDER BY sequence",
            (gateway_id,),
        ).fetchall()
    finally:
        conn.close()
    newest: dict[str, pb.ApplyAgent] = {}
    for agent_id, payload in rows:
        newest[agent_id] = pb.Command.FromString(payload).apply_agent
    return newest


def sidecar_agents(state_db: Path) -> dict[str, dict[str, Any]]:
    conn = read_only(state_db)
    try:
        rows = conn.execute("SELECT agent_id, generation, workspace, files FROM agents").fetchall()
    finally:
        conn.close()
    return {r[0]: {"generation": r[1], "workspace": r[2], "files": json.loads(r[3])} for r in rows}


def agreement(
    hub: dict[str, dict[str, Any]], sidecar: dict[str, dict[str, Any]], roster: Iterable[str]
) -> list[str]:
    """Hub, sidecar state and the gateway's own config hold the same agents, same generations."""
    problems: list[str] = []
    managed = {a for a in roster if a.startswith("mc-")}
    for agent_id in sorted(set(hub) | set(sidecar) | managed):
        row, held = hub.get(agent_id), sidecar.get(agent_id)
        if row is None:
            problems.append(f"{agent_id}: on the gateway/sidecar, unknown to the hub")
            continue
        if held is None:
            problems.append(f"{agent_id}: in the hub ({row['status']}), not in the sidecar's state")
        elif held["generation"] != row["lifecycle_generation"]:
            problems.append(
                f"{agent_id}: sidecar applied generation {held['generation']}, hub is at "
                f"{row['lifecycle_generation']} (applied {row['applied_generation']})"
            )
        if agent_id not in managed:
            problems.append(f"{agent_id}: in the hub, missing from openclaw.json")
    return problems


def workspace_files(
    applies: dict[str, pb.ApplyAgent], sidecar: dict[str, dict[str, Any]]
) -> list[str]:
    """Every file on disk is what the agent's last ApplyAgent carried (and what the
    sidecar's state says it wrote); files the agent owns need only exist."""
    problems: list[str] = []
    for agent_id, held in sorted(sidecar.items()):
        apply = applies.get(agent_id)
        if apply is None:
            problems.append(f"{agent_id}: the sidecar manages it, the hub never applied it")
            continue
        workspace = Path(apply.workspace_path)
        for file in apply.files:
            path = workspace / file.name
            try:
                on_disk = path.read_bytes()
            except OSError as exc:
                problems.append(f"{agent_id}: {file.name} unreadable ({exc})")
                continue
            digest = hashlib.sha256(on_disk).hexdigest()
            if held["files"].get(file.name) != digest:
                problems.append(f"{agent_id}: {file.name} differs from the sidecar's record")
            if file.secret:
                # Sealed at rest in the outbox: the token on disk must be the one whose
                # verifier the command carried.
                verifiers = {bytes(c.sha256) for c in apply.credentials}
                if hashlib.sha256(on_disk.strip()).digest() not in verifiers:
                    problems.append(
                        f"{agent_id}: {file.name} holds no token of generation {apply.generation}"
                    )
            elif not file.preserve_if_present and on_disk != bytes(file.content):
                problems.append(
                    f"{agent_id}: {file.name} is not what generation {apply.generation} wrote "
                    f"({on_disk[:60]!r}...)"
                )
    return problems


def applied_twice(log_path: Path) -> list[str]:
    """Sequences the sidecar logged as APPLIED more than once, across all its lifetimes.

    `command.applied` is logged after the sequence is recorded durably, so a second
    APPLIED for the same sequence is a command done twice (a replay must answer
    ALREADY_APPLIED or be skipped).
    """
    counts: Counter[int] = Counter()
    try:
        lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    for line in lines:
        if '"command.applied"' not in line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a line cut by kill -9
        if entry.get("event") == "command.applied" and entry.get("outcome") == "APPLIED":
            counts[int(entry["sequence"])] += 1
    return [f"command {seq} applied {n} times" for seq, n in sorted(counts.items()) if n > 1]


def temp_files(roots: Iterable[Path]) -> list[str]:
    found: list[str] = []
    for root in roots:
        if not root.exists():
            continue
        for pattern in TEMP_GLOBS:
            found += [str(p) for p in root.rglob(pattern)]
    return sorted(set(found))
