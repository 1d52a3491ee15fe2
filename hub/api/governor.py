"""The heartbeat governor's settings and state: /api/v1/boards/{id}/heartbeat-governor and
/api/v1/agents/{id}/heartbeat-governor (hub/lifecycle/governor.py has the rule)."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, Field

from hub.api.core import Api, Call, Strict
from hub.api.deps import HttpDeps, deps
from hub.governor import governed_in, next_change, wanted
from hub.lifecycle.governor import (
    DEFAULT_IDLE_AFTER_S,
    DEFAULT_LEAD_MAX_S,
    DEFAULT_STEPS_S,
    MAX_STEPS,
    GovernorError,
    GovernorPolicy,
)
from hub.store.database import Connection
from missioncontrol.http import ApiError
from missioncontrol.timefmt import iso

_DEFAULT = GovernorPolicy(
    steps_s=DEFAULT_STEPS_S, idle_after_s=DEFAULT_IDLE_AFTER_S, lead_max_s=DEFAULT_LEAD_MAX_S
).as_json()


class GovernorSettings(Strict):
    enabled: bool = Field(True, description="false on an agent: never backed off (exempt)")
    steps: list[str] = Field(
        default_factory=lambda: list(_DEFAULT["steps"]),
        min_length=1,
        max_length=MAX_STEPS,
        description="cadences backed off to, one per quiet period, e.g. 30m, 1h, 3h",
    )
    idle_after: str = Field(
        _DEFAULT["idle_after"], max_length=16, description="quiet this long: one step further"
    )
    lead_max: str = Field(
        _DEFAULT["lead_max"], max_length=16, description="a lead never backs off beyond this"
    )

    def policy(self) -> GovernorPolicy:
        try:
            return GovernorPolicy.from_json(self.model_dump())
        except GovernorError as exc:
            raise ApiError(422, f"heartbeat governor: {exc}") from None


class GovernedAgentRead(BaseModel):
    agent_id: str
    name: str
    is_board_lead: bool
    own_every_s: int  # its heartbeat_config's cadence
    every_s: int  # what the gateway runs now
    step: int  # 0: its own cadence
    source: str | None  # the setting that governs it: "agent", "board", "exempt", or none
    next_step_at: str | None  # when it backs off further if the board stays quiet


class BoardGovernorRead(BaseModel):
    board_id: str
    heartbeat_governor: dict[str, Any] | None  # null: not governed
    last_activity_at: str | None  # the last task, approval, memory note or agent message
    agents: list[GovernedAgentRead]  # the board's governed agents


class AgentGovernorRead(BaseModel):
    agent_id: str
    heartbeat_governor: dict[str, Any] | None  # its own setting; null: its board's
    cadence: GovernedAgentRead | None  # null: not governed


def _board_read(conn: Connection, board_id: str, now: float) -> BoardGovernorRead:
    row = conn.execute(
        "SELECT heartbeat_governor, last_activity_at FROM boards WHERE id = ?", (board_id,)
    ).fetchone()
    if row is None:
        raise ApiError(404, "board not found")
    agents = [_agent_read(a, now) for a in governed_in(conn, [board_id])]
    return BoardGovernorRead(
        board_id=board_id,
        heartbeat_governor=json.loads(row[0]) if row[0] else None,
        last_activity_at=iso(row[1]),
        agents=agents,
    )


def _agent_read(agent: Any, now: float) -> GovernedAgentRead:
    target = wanted(agent, now)
    return GovernedAgentRead(
        agent_id=agent.id,
        name=agent.name,
        is_board_lead=agent.lead,
        own_every_s=agent.own_every_s,
        every_s=agent.every_s,
        step=agent.step,
        source=agent.source,
        next_step_at=iso(next_change(agent, now)) if target.every_s == agent.every_s else None,
    )


async def _governed(d: HttpDeps, board_ids: list[str] | None) -> None:
    """Carry a changed setting out now (the governor would on its next pass anyway)."""
    if d.governor is not None:
        await d.governor.govern(board_ids)


def register(api: Api) -> None:
    tags = ("boards",)
    board_path = "/api/v1/boards/{board_id}/heartbeat-governor"
    agent_path = "/api/v1/agents/{agent_id}/heartbeat-governor"

    @api.route(
        "GET",
        board_path,
        summary="The board's heartbeat governor and each governed agent's cadence now",
        tags=tags,
        response=BoardGovernorRead,
    )
    async def get_board_governor(call: Call) -> BoardGovernorRead:
        d = deps(call.request)
        board_id = call.request.match_info["board_id"]
        now = d.reconciler.clock()
        return await d.db.read(lambda conn: _board_read(conn, board_id, now))

    async def set_board(call: Call, setting: str | None) -> BoardGovernorRead:
        d = deps(call.request)
        board_id = call.request.match_info["board_id"]

        def op(conn: Connection) -> None:
            cursor = conn.execute(
                "UPDATE boards SET heartbeat_governor = ? WHERE id = ?", (setting, board_id)
            )
            if cursor.rowcount == 0:
                raise ApiError(404, "board not found")

        await d.db.write(op)
        await _governed(d, [board_id])
        now = d.reconciler.clock()
        return await d.db.read(lambda conn: _board_read(conn, board_id, now))

    @api.route(
        "PUT",
        board_path,
        summary="Govern the board's heartbeats: a quiet board's agents back off in steps, "
        "and snap back on the first task, approval, memory note or message",
        tags=tags,
        body=GovernorSettings,
        response=BoardGovernorRead,
    )
    async def put_board_governor(call: Call) -> BoardGovernorRead:
        body: GovernorSettings = call.body
        return await set_board(call, json.dumps(body.policy().as_json()))

    @api.route(
        "DELETE",
        board_path,
        summary="Stop governing the board: every agent back to its own cadence",
        tags=tags,
        response=BoardGovernorRead,
    )
    async def delete_board_governor(call: Call) -> BoardGovernorRead:
        return await set_board(call, None)

    async def set_agent(call: Call, setting: str | None) -> AgentGovernorRead:
        d = deps(call.request)
        agent_id = call.request.match_info["agent_id"]

        def op(conn: Connection) -> str | None:
            row = conn.execute(
                "SELECT board_id FROM agents WHERE id = ? AND status != 'deleting'", (agent_id,)
            ).fetchone()
            if row is None:
                raise ApiError(404, "agent not found")
            conn.execute(
                "UPDATE agents SET heartbeat_governor = ? WHERE id = ?", (setting, agent_id)
            )
            return row[0]

        board_id = await d.db.write(op)
        await _governed(d, [board_id] if board_id else None)
        return await _agent_state(d, agent_id)

    async def _agent_state(d: HttpDeps, agent_id: str) -> AgentGovernorRead:
        now = d.reconciler.clock()

        def op(conn: Connection) -> AgentGovernorRead:
            row = conn.execute(
                "SELECT board_id, heartbeat_governor FROM agents WHERE id = ?", (agent_id,)
            ).fetchone()
            if row is None:
                raise ApiError(404, "agent not found")
            scope = [row[0]] if row[0] else None
            mine = [a for a in governed_in(conn, scope) if a.id == agent_id]
            return AgentGovernorRead(
                agent_id=agent_id,
                heartbeat_governor=json.loads(row[1]) if row[1] else None,
                cadence=_agent_read(mine[0], now) if mine else None,
            )

        return await d.db.read(op)

    @api.route(
        "GET",
        agent_path,
        summary="The agent's own governor setting and its cadence now",
        tags=("agents",),
        response=AgentGovernorRead,
    )
    async def get_agent_governor(call: Call) -> AgentGovernorRead:
        return await _agent_state(deps(call.request), call.request.match_info["agent_id"])

    @api.route(
        "PUT",
        agent_path,
        summary="The agent's own governor setting, over its board's "
        "(enabled=false: never backed off)",
        tags=("agents",),
        body=GovernorSettings,
        response=AgentGovernorRead,
    )
    async def put_agent_governor(call: Call) -> AgentGovernorRead:
        body: GovernorSettings = call.body
        setting = body.policy().as_json() if body.enabled else {"enabled": False}
        return await set_agent(call, json.dumps(setting))

    @api.route(
        "DELETE",
        agent_path,
        summary="Drop the agent's own governor setting: its board's governs it",
        tags=("agents",),
        response=AgentGovernorRead,
    )
    async def delete_agent_governor(call: Call) -> AgentGovernorRead:
        return await set_agent(call, None)
