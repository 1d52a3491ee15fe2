"""Live reads of a gateway, asked through its sidecar's stream.

The hub holds no live view of a gateway's sessions or runtime; an admin's
`GET /api/v1/gateway/status` or `/gateway/sessions` becomes a GatewayQuery on
the gateway's current stream and waits (bounded) for the matching result.
Queries are not queued: with no connected sidecar the caller learns so at once.
On a database several hubs share, a query for a gateway whose stream another hub holds
is relayed to that hub (hub/link/relay.py).
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from dataclasses import dataclass
from typing import Protocol

from hub.link.server import SessionRegistry
from hub.store.errors import Refusal, StoreError
from hub.store.gateways import GatewayRow
from missioncontrol.log import get_logger
from protos import link_pb2 as pb
from protos.contract import GATEWAY_QUERY_TIMEOUT_S, MAX_QUERY_SESSIONS

log = get_logger("hub.link.queries")


class QueryFailed(Exception):
    """The sidecar could not be asked, or did not answer; `code` names which."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Relay(Protocol):
    async def ask(
        self, gateway_id: str, query: pb.GatewayQuery, timeout_s: float
    ) -> pb.GatewayQueryResult: ...


class GatewayQueries:
    def __init__(self, registry: SessionRegistry, timeout_s: float = GATEWAY_QUERY_TIMEOUT_S):
        self.registry = registry
        self.timeout_s = timeout_s
        self.relay: Relay | None = None  # set on a shared database: asks the owning hub
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[str, asyncio.Future[pb.GatewayQueryResult]]] = {}

    async def ask(
        self,
        gateway_id: str,
        kind: pb.GatewayQuery.Kind,
        *,
        agent_id: str = "",
        limit: int = MAX_QUERY_SESSIONS,
        file: str = "",
        timeout_s: float | None = None,
        relayed: bool = False,
    ) -> pb.GatewayQueryResult:
        """The sidecar's answer; `timeout_s` (default the hub's) is told to the sidecar too,
        so it answers with the reason before the hub stops waiting. Without the stream
        here, the hub that holds it is asked (unless the query was `relayed` here)."""
        session = self.registry.get(gateway_id)
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        query = pb.GatewayQuery(
            query_id=next(self._ids),
            kind=kind,
            agent_id=agent_id,
            limit=limit,
            file=file,
            budget_ms=max(1, round(timeout_s * 1000)),
        )
        if session is None or session.closed:
            if self.relay is not None and not relayed:
                return await self.relay.ask(gateway_id, query, timeout_s)
            raise QueryFailed("sidecar_disconnected", "the gateway's sidecar is not connected")
        future: asyncio.Future[pb.GatewayQueryResult] = asyncio.get_running_loop().create_future()
        self._pending[query.query_id] = (gateway_id, future)
        try:
            async with asyncio.timeout(timeout_s):
                await session.outgoing.put(pb.HubMessage(gateway_query=query))
                return await future
        except TimeoutError:
            raise QueryFailed(
                "sidecar_timeout", f"the sidecar did not answer within {timeout_s:g} s"
            ) from None
        finally:
            self._pending.pop(query.query_id, None)

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def answer(self, gateway_id: str, result: pb.GatewayQueryResult) -> None:
        pending = self._pending.get(result.query_id)
        # Only the gateway that was asked may answer (ids are hub-wide).
        if pending is None or pending[0] != gateway_id or pending[1].done():
            log.debug("gateway.query.stale", gateway_id=gateway_id, query_id=result.query_id)
            return
        pending[1].set_result(result)

    def link_closed(self, gateway_id: str) -> None:
        """The stream ended: answers to it will never come."""
        for owner, future in self._pending.values():
            if owner == gateway_id and not future.done():
                future.set_exception(
                    QueryFailed("sidecar_disconnected", "the sidecar disconnected before answering")
                )


class TargetError(StoreError):
    """A live read names a gateway, board or agent that is not there, or that disagree."""

    def __init__(self, message: str, refusal: Refusal = Refusal.INVALID) -> None:
        super().__init__(message)
        self.refusal = refusal


@dataclass(frozen=True)
class ManagedAgent:
    id: str
    board_id: str | None
    kind: str


@dataclass(frozen=True)
class Target:
    """The gateway a live read asks, and what narrows its answer."""

    gateway: GatewayRow
    agents: dict[str, ManagedAgent]  # gateway agent id -> the hub's agent
    board_id: str | None
    gateway_agent_id: str  # empty: every agent's sessions

    def main_agent_id(self) -> str | None:
        return next((g for g, a in self.agents.items() if a.kind == "main"), None)


def live_target_in(
    conn: sqlite3.Connection,
    *,
    gateway_id: str | None,
    board_id: str | None,
    agent_id: str | None,
) -> Target:
    """The gateway a read names by `gateway_id`, `board_id` (its board's gateway; sessions
    narrowed to the board's agents) or `agent_id` (that agent's sessions)."""
    gateway_agent_id = ""
    if board_id:
        board = conn.execute("SELECT gateway_id FROM boards WHERE id = ?", (board_id,)).fetchone()
        if board is None:
            raise TargetError("board not found", Refusal.NOT_FOUND)
        if gateway_id and board["gateway_id"] != gateway_id:
            raise TargetError(f"the board is not on gateway {gateway_id}")
        gateway_id = board["gateway_id"]
    if agent_id:
        agent = conn.execute(
            "SELECT gateway_id, board_id, gateway_agent_id FROM agents WHERE id = ?", (agent_id,)
        ).fetchone()
        if agent is None:
            raise TargetError("agent not found", Refusal.NOT_FOUND)
        if gateway_id and agent["gateway_id"] != gateway_id:
            raise TargetError("the agent is not on that gateway or board")
        if board_id and agent["board_id"] != board_id:
            raise TargetError("the agent is not on that board")
        gateway_id, gateway_agent_id = agent["gateway_id"], agent["gateway_agent_id"]
    gateway = conn.execute("SELECT * FROM gateways WHERE id = ?", (gateway_id or "",)).fetchone()
    if gateway is None:
        raise TargetError("gateway not found", Refusal.NOT_FOUND)
    rows = conn.execute(
        "SELECT id, gateway_agent_id, board_id, kind FROM agents WHERE gateway_id = ?",
        (gateway["id"],),
    )
    agents = {r["gateway_agent_id"]: ManagedAgent(r["id"], r["board_id"], r["kind"]) for r in rows}
    return Target(GatewayRow.from_row(gateway), agents, board_id, gateway_agent_id)
