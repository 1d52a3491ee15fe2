"""What keeps agents from running, as their sidecar reports it: kept on each agent's row.

A sidecar that checks (GatewayState.conditions_reported) sends the whole set of
conditions whenever it changes: an agent's own (its heartbeat job missing, its runs
failing) and the gateway's (a model provider's sign-in, the gateway unreachable), which
count for each of its agents. The row keeps the most telling one's code, and every
detail, as the cause the lifecycle names when the agent goes quiet. A change is an event
(`agent.cause.found`, `agent.cause.cleared`): the history of what went wrong, and when.

The text comes from a sidecar: codes outside the expected shape are kept as `other`, and
details are made displayable and bounded here too.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass

from hub.store.event_log import add_event
from missioncontrol.text import displayable
from protos import link_pb2 as pb
from protos.contract import epoch_s

# Most telling first: nothing runs behind an unreachable gateway or without a model.
PRIORITY = (
    "gateway_unreachable",
    "model_auth",
    "runs_failing",
    "heartbeat_missing",
    "heartbeat_changed",
)
MAX_DETAIL_CHARS = 1024
MAX_CONDITIONS = 64  # per agent; a sidecar reports at most four kinds
_CODE = re.compile(r"[a-z][a-z0-9_]{0,39}")


@dataclass(frozen=True)
class Cause:
    code: str
    text: str
    since: float


def _rank(code: str) -> int:
    return PRIORITY.index(code) if code in PRIORITY else len(PRIORITY)


def causes_by_agent(
    conditions: Iterable[pb.AgentCondition], agents: Iterable[str], at: float
) -> dict[str, Cause]:
    """Each agent's cause from a sidecar's conditions (gateway-wide ones count for all)."""
    found: dict[str, list[tuple[str, str, float]]] = {}
    every: list[tuple[str, str, float]] = []
    for condition in conditions:
        code = condition.code if _CODE.fullmatch(condition.code) else "other"
        detail = displayable(condition.detail, max_chars=MAX_DETAIL_CHARS) or code
        since = epoch_s(condition.since) if condition.HasField("since") else at
        item = (code, detail, min(since, at))
        if condition.agent_id:
            found.setdefault(condition.agent_id, []).append(item)
        else:
            every.append(item)
    out = {}
    for agent_id in agents:
        items = sorted(found.get(agent_id, []) + every, key=lambda i: _rank(i[0]))
        if items:
            items = items[:MAX_CONDITIONS]
            out[agent_id] = Cause(
                code=items[0][0],
                text="; ".join(f"{code}: {detail}" for code, detail, _ in items),
                since=min(since for _, _, since in items),
            )
    return out


def record_causes_in(
    conn: sqlite3.Connection, gateway_id: str, conditions: Iterable[pb.AgentCondition], at: float
) -> int:
    """Keep the gateway's agents' causes as its sidecar now reports them; returns how many
    agents' causes changed (an event each)."""
    rows = conn.execute(
        "SELECT id, gateway_agent_id, cause_code, cause FROM agents WHERE gateway_id = ?",
        (gateway_id,),
    ).fetchall()
    causes = causes_by_agent(conditions, [r[1] for r in rows], at)
    changed = []
    for agent_id, gateway_agent_id, code, text in rows:
        cause = causes.get(gateway_agent_id)
        if cause is None and code is None:
            continue
        if cause is not None and (cause.code, cause.text) == (code, text):
            continue
        changed.append((agent_id, gateway_agent_id, cause))
    conn.executemany(
        "UPDATE agents SET cause_code = ?, cause = ?, cause_since = ? WHERE id = ?",
        [
            (c.code, c.text, c.since, agent_id) if c else (None, None, None, agent_id)
            for agent_id, _, c in changed
        ],
    )
    for _, gateway_agent_id, cause in changed:
        if cause is None:
            add_event(
                conn,
                "agent.cause.cleared",
                gateway_id=gateway_id,
                agent_id=gateway_agent_id,
                at=at,
            )
        else:
            add_event(
                conn,
                "agent.cause.found",
                gateway_id=gateway_id,
                agent_id=gateway_agent_id,
                at=at,
                code=cause.code,
                cause=cause.text,
            )
    return len(changed)
