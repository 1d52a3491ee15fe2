"""Drift: agents whose files on disk, or whose openclaw.json entry, differ from what the
hub rendered, fleet-wide.

The sidecar reports each managed agent's file hashes in its Hello (and with every apply
it answers); the hub keeps the last report per agent and compares it with the files of
the agent's latest ApplyAgent (hub/ui/files.py's `compare`). An agent with an apply in
flight is not judged: its report would be of the files before it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from hub.provisioning.agents import AgentRow, rendered_files_in
from hub.ui.files import compare


@dataclass(frozen=True)
class AgentDrift:
    gateway_id: str
    agent_id: str
    agent_name: str
    gateway_agent_id: str
    files: tuple[str, ...]  # files whose bytes differ from the rendered ones
    entry_missing: bool  # openclaw.json lacks the agent's entry
    reported_at: float | None


@dataclass(frozen=True)
class DriftReport:
    checked: int  # agents compared
    unreported: int  # agents no sidecar has reported files for yet
    in_flight: int  # agents with an apply not yet confirmed (not judged)
    drifted: list[AgentDrift]


def drift_in(conn: sqlite3.Connection, gateway_ids: Sequence[str]) -> DriftReport:
    checked = unreported = in_flight = 0
    drifted: list[AgentDrift] = []
    wanted = set(gateway_ids)
    rows = conn.execute(
        "SELECT * FROM agents WHERE status != 'deleting' AND adopted = 0 "
        "ORDER BY gateway_id, created_at, id"
    ).fetchall()
    for row in rows:
        if row["gateway_id"] not in wanted:
            continue
        agent = AgentRow.from_row(row)
        if row["reported_files"] is None:
            unreported += 1
            continue
        rendered = rendered_files_in(conn, agent)
        if rendered is None or agent.applied_generation < agent.lifecycle_generation:
            in_flight += 1
            continue
        checked += 1
        checks = compare(rendered[1], json.loads(row["reported_files"]))
        files = tuple(c.name for c in checks if c.drifted)
        missing = row["reported_in_config"] == 0
        if files or missing:
            drifted.append(
                AgentDrift(
                    gateway_id=agent.gateway_id,
                    agent_id=agent.id,
                    agent_name=agent.name,
                    gateway_agent_id=agent.gateway_agent_id,
                    files=files,
                    entry_missing=missing,
                    reported_at=row["reported_files_at"],
                )
            )
    return DriftReport(checked, unreported, in_flight, drifted)
