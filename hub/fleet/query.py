"""Fleet queries: one question to every gateway a selector picks, answers streamed back as
they arrive (POST /api/v1/fleet/query, `mc-hub fleet query`), like fleetdm's live queries.

Nothing is queued or replayed: only connected sidecars are asked (a disconnected one is
reported at once), each answer or failure is yielded the moment it is known, and the
whole query ends at its deadline, when a sidecar still silent is reported as
`no_answer`. At most `MAX_IN_FLIGHT` questions are outstanding at once, so asking a
large fleet never floods the hub's streams; a question still waiting for its turn
shares the same deadline.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from hub.link.queries import GatewayQueries, QueryFailed
from hub.provisioning.agents import AgentRow, rendered_files_in
from hub.store.gateways import labels_in
from protos import link_pb2 as pb

MAX_IN_FLIGHT = 256
# The kinds a fleet query may ask, by the name the API and the CLI use.
QUESTIONS: Mapping[str, pb.GatewayQuery.Kind] = {
    "status": pb.GatewayQuery.STATUS,
    "heartbeats": pb.GatewayQuery.HEARTBEATS,
    "file": pb.GatewayQuery.FILE_HASH,
}


class Outcome(StrEnum):
    ANSWERED = "answered"
    FAILED = "failed"  # the sidecar answered that it could not (its reason in `error`)
    NO_ANSWER = "no_answer"  # nothing by the deadline
    DISCONNECTED = "disconnected"  # no stream to ask


@dataclass(frozen=True)
class AgentKnown:
    id: str
    name: str
    rendered_sha256: str | None  # the asked file as the hub last rendered it, if it did


@dataclass(frozen=True)
class GatewayAsked:
    id: str
    name: str
    agents: dict[str, AgentKnown]  # gateway agent id -> the hub's agent
    connected: bool = True  # as the store last recorded it (a stream on any hub)


@dataclass(frozen=True)
class Answer:
    gateway_id: str
    gateway_name: str
    outcome: Outcome
    elapsed_ms: int
    error_code: str | None = None
    error: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


def targets_in(conn: sqlite3.Connection, chosen: list[str], file: str) -> list[GatewayAsked]:
    """The chosen gateways with their agents (and, for a file question, the digest the
    hub rendered for each), read in one pass."""
    wanted = set(chosen)
    names, connected = {}, set()
    for g, n, up in conn.execute("SELECT id, name, connected FROM gateways"):
        if g in wanted:
            names[g] = n
            if up:
                connected.add(g)
    agents: dict[str, dict[str, AgentKnown]] = {g: {} for g in names}
    for row in conn.execute("SELECT * FROM agents WHERE status != 'deleting' ORDER BY id"):
        if row["gateway_id"] not in wanted:
            continue
        agent = AgentRow.from_row(row)
        rendered = None
        if file:
            files = rendered_files_in(conn, agent)
            rendered = next((f.sha256 for f in files[1] if f.name == file), None) if files else None
        agents[agent.gateway_id][agent.gateway_agent_id] = AgentKnown(
            agent.id, agent.name, rendered
        )
    return [GatewayAsked(g, names[g], agents[g], g in connected) for g in chosen if g in names]


def selected_in(conn: sqlite3.Connection, selector: Any) -> list[str]:
    labels = labels_in(conn)
    ids = [row[0] for row in conn.execute("SELECT id FROM gateways ORDER BY id")]
    return list(selector.select((g, labels.get(g, {})) for g in ids))


async def ask_fleet(
    queries: GatewayQueries,
    targets: list[GatewayAsked],
    question: str,
    *,
    file: str = "",
    timeout_s: float,
    in_flight: int = MAX_IN_FLIGHT,
) -> AsyncGenerator[Answer, None]:
    """Each target's answer, in the order they arrive; every target gets exactly one."""
    kind = QUESTIONS[question]
    started = time.monotonic()
    deadline = started + timeout_s
    slots = asyncio.Semaphore(in_flight)

    def elapsed_ms() -> int:
        return round((time.monotonic() - started) * 1000)

    async def one(target: GatewayAsked) -> Answer:
        async with slots:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return _unanswered(target, timeout_s, elapsed_ms())
            try:
                result = await queries.ask(target.id, kind, file=file, timeout_s=remaining)
            except QueryFailed as exc:
                if exc.code == "sidecar_timeout":
                    return _unanswered(target, timeout_s, elapsed_ms())
                return Answer(
                    target.id,
                    target.name,
                    Outcome.DISCONNECTED,
                    elapsed_ms(),
                    error_code=exc.code,
                    error=str(exc),
                )
        if result.error_code:
            return Answer(
                target.id,
                target.name,
                Outcome.FAILED,
                elapsed_ms(),
                error_code=result.error_code,
                error=result.error,
                data=_state(result.state),
            )
        return Answer(
            target.id, target.name, Outcome.ANSWERED, elapsed_ms(), data=_data(kind, result, target)
        )

    asked = []
    for target in targets:
        session = queries.registry.get(target.id)
        # With a relay, another hub may hold the stream: one the store records connected.
        if (session is None or session.closed) and (queries.relay is None or not target.connected):
            yield Answer(
                target.id,
                target.name,
                Outcome.DISCONNECTED,
                elapsed_ms(),
                error_code="sidecar_disconnected",
                error="the gateway's sidecar is not connected",
            )
        else:
            asked.append(target)
    tasks = [asyncio.create_task(one(t), name="fleet-query") for t in asked]
    try:
        for done in asyncio.as_completed(tasks):
            yield await done
    finally:
        # The caller stopped listening (or the stream broke): ask nothing more.
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _unanswered(target: GatewayAsked, timeout_s: float, elapsed_ms: int) -> Answer:
    return Answer(
        target.id,
        target.name,
        Outcome.NO_ANSWER,
        elapsed_ms,
        error_code="sidecar_timeout",
        error=f"no answer within the query's {timeout_s:g} s",
    )


def _state(state: pb.GatewayState) -> dict[str, Any]:
    return {
        "gateway_reachable": state.reachable,
        "gateway_unreachable_reason": state.unreachable_reason or None,
        "openclaw_version": state.openclaw_version or None,
    }


def _data(
    kind: pb.GatewayQuery.Kind, result: pb.GatewayQueryResult, target: GatewayAsked
) -> dict[str, Any]:
    data = _state(result.state)
    if kind == pb.GatewayQuery.STATUS:
        data.update(
            openclaw_protocol=result.state.openclaw_protocol or None,
            pid=result.runtime.pid or None,
            rss_bytes=result.runtime.rss_bytes or None,
            agents=len(result.runtime.agents),
            sessions=result.sessions_total,
        )
    elif kind == pb.GatewayQuery.HEARTBEATS:
        data["agents"] = [
            {
                "gateway_agent_id": a.agent_id,
                "agent_id": _known(target, a.agent_id, "id"),
                "name": _known(target, a.agent_id, "name"),
                "heartbeat_enabled": a.heartbeat_enabled,
                "heartbeat_every_s": a.heartbeat_every_s or None,
            }
            for a in result.runtime.agents
        ]
    else:
        files = []
        for digest in result.files:
            known = target.agents.get(digest.agent_id)
            rendered = known.rendered_sha256 if known else None
            files.append(
                {
                    "gateway_agent_id": digest.agent_id,
                    "agent_id": known.id if known else None,
                    "name": known.name if known else None,
                    "file": digest.file,
                    "sha256": digest.sha256 or None,
                    "problem": digest.problem or None,
                    "rendered_sha256": rendered,
                    "matches_rendered": None if rendered is None else digest.sha256 == rendered,
                }
            )
        data["files"] = files
    return data


def _known(target: GatewayAsked, gateway_agent_id: str, attribute: str) -> str | None:
    known = target.agents.get(gateway_agent_id)
    return getattr(known, attribute) if known else None
