"""GET /api/v1/usage: tokens per agent per day and per board per day (UTC), with totals.

What the gateways counted from their sessions' transcripts, as the sidecars relayed it
(hub/usage.py): how much agents' heartbeats and runs cost, before a quota runs out.
"""

from __future__ import annotations

import time

from pydantic import BaseModel, Field

from hub.api.core import Api, Call, Query
from hub.api.deps import deps
from hub.usage import AgentDay, BoardDay, Tokens, UsageRangeError, usage_filter, usage_in
from missioncontrol.http import ApiError

DAY = Field(None, min_length=10, max_length=10, description="a UTC day, YYYY-MM-DD")


class UsageQuery(Query):
    board_id: str | None = None
    agent_id: str | None = None  # the hub's agent id
    gateway_id: str | None = None
    since: str | None = DAY  # default: six days before until
    until: str | None = DAY  # default: today (UTC)


class TokensRead(BaseModel):
    total_tokens: int  # input + output + cache reads and writes
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int


class AgentUsageDay(BaseModel):
    day: str
    gateway_id: str
    gateway_agent_id: str
    agent_id: str | None  # None: the gateway agent is not (or was not yet) known to the hub
    board_id: str | None
    agent_name: str | None
    sessions: int  # gateway sessions of the agent with tokens that day
    tokens: TokensRead


class BoardUsageDay(BaseModel):
    day: str
    board_id: str | None  # None: agents on no board, or not known to the hub
    agents: int
    tokens: TokensRead


class UsageRead(BaseModel):
    since: str
    until: str
    agents: list[AgentUsageDay]
    boards: list[BoardUsageDay]
    total: TokensRead


def _tokens(t: Tokens) -> TokensRead:
    return TokensRead(
        total_tokens=t.total_tokens,
        input_tokens=t.input_tokens,
        output_tokens=t.output_tokens,
        cache_read_tokens=t.cache_read_tokens,
        cache_write_tokens=t.cache_write_tokens,
    )


def _agent(a: AgentDay) -> AgentUsageDay:
    return AgentUsageDay(
        day=a.day,
        gateway_id=a.gateway_id,
        gateway_agent_id=a.gateway_agent_id,
        agent_id=a.agent_id,
        board_id=a.board_id,
        agent_name=a.agent_name,
        sessions=a.sessions,
        tokens=_tokens(a.tokens),
    )


def _board(b: BoardDay) -> BoardUsageDay:
    return BoardUsageDay(day=b.day, board_id=b.board_id, agents=b.agents, tokens=_tokens(b.tokens))


def register(api: Api) -> None:
    @api.route(
        "GET",
        "/api/v1/usage",
        summary="Tokens per agent per day and per board per day (UTC days, both included; "
        "default the last seven), with totals, as the gateways count them",
        tags=("usage",),
        query=UsageQuery,
        response=UsageRead,
    )
    async def usage(call: Call) -> UsageRead:
        q: UsageQuery = call.query
        try:
            f = usage_filter(
                time.time(),
                since=q.since,
                until=q.until,
                board_id=q.board_id,
                agent_id=q.agent_id,
                gateway_id=q.gateway_id,
            )
        except UsageRangeError as exc:
            raise ApiError(422, str(exc)) from None
        summary = await deps(call.request).db.read(lambda conn: usage_in(conn, f))
        return UsageRead(
            since=summary.since,
            until=summary.until,
            agents=[_agent(a) for a in summary.agents],
            boards=[_board(b) for b in summary.boards],
            total=_tokens(summary.total),
        )
