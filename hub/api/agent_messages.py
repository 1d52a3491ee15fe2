"""What agents ask of each other through Mission Control, and the agent API's own description.

- A board lead creates workers on its board (within `max_agents`), nudges them, and asks
  the user a question through its gateway's main agent.
- A gateway's main agent hands work or a question to a board's lead (creating the lead
  when the board has none, as the reference does), or broadcasts to every lead.
- `GET /api/v1/agent/openapi.json`: the agent routes, the description the agents' files
  call authoritative.

Messages are queued in the outbox (hub/messages.py) and reach the agent's main session
when its sidecar is connected.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from hub.api.agent_facing import EVERY_AGENT, LEAD, MAIN, principal
from hub.api.agents import agent_read, agent_spec
from hub.api.core import MULTILINE, Api, Auth, Call, Strict
from hub.api.deps import deps
from hub.api.schemas import AgentCreate, AgentRead
from hub.messages import ask_user_in, broadcast_in, nudge_in, nudge_target_in
from missioncontrol.agent_api import AGENT_API_PREFIX, API_SPEC_PATH
from missioncontrol.http import ApiError
from missioncontrol.log import get_logger

log = get_logger("hub.api.agent_messages")

Text: Any = Field(min_length=1, max_length=6_000, json_schema_extra=MULTILINE)
Tags: Any = Field(default_factory=list, max_length=20)
Short = Annotated[str, Field(min_length=1, max_length=64)]


class Nudge(Strict):
    message: str = Text


class AskUser(Strict):
    content: str = Text
    correlation_id: str | None = Field(None, max_length=128)
    preferred_channel: str | None = Field(None, max_length=64)
    reply_tags: list[Short] = Tags
    reply_source: str | None = Field(None, max_length=128)


class LeadMessage(Strict):
    kind: Literal["question", "handoff"] = "question"
    content: str = Text
    correlation_id: str | None = Field(None, max_length=128)
    reply_tags: list[Short] = Tags
    reply_source: str | None = Field(None, max_length=128)


class Broadcast(LeadMessage):
    board_ids: list[Short] | None = Field(None, max_length=200)


class Sent(BaseModel):
    ok: bool = True
    agent_id: str
    agent_name: str


class AskedUser(BaseModel):
    ok: bool = True
    board_id: str
    main_agent_id: str
    main_agent_name: str


class LeadMessaged(BaseModel):
    ok: bool = True
    board_id: str
    lead_agent_id: str
    lead_agent_name: str
    lead_created: bool


class BroadcastResult(BaseModel):
    board_id: str
    lead_agent_id: str | None
    ok: bool
    error: str | None = None


class Broadcasted(BaseModel):
    ok: bool
    sent: int
    failed: int
    results: list[BroadcastResult]


def _with_reply_info(content: str, body: AskUser | LeadMessage) -> str:
    lines = [content]
    if body.correlation_id:
        lines.append(f"(correlation id: {body.correlation_id}; quote it in your answer)")
    if body.reply_tags:
        lines.append(f"(reply with tags: {', '.join(body.reply_tags)})")
    if body.reply_source:
        lines.append(f"(reply to: {body.reply_source})")
    return "\n".join(lines)


def register(api: Api) -> None:
    base = AGENT_API_PREFIX
    spec: dict[str, Any] = {}

    @api.route(
        "GET", API_SPEC_PATH,
        summary="This API's description, for agents: every route they may call, by role tag",
        tags=EVERY_AGENT, auth=Auth.AGENT,
    )  # fmt: skip
    async def agent_openapi(call: Call) -> Any:
        if not spec:
            spec.update(agent_document(api.openapi()))
        return {**spec, "x-agent-role": principal(call).kind}

    @api.route(
        "POST", base + "/agents",
        summary="Create a worker on your board (leads; at most the board's max_agents)",
        tags=(LEAD,), auth=Auth.AGENT, body=AgentCreate, response=AgentRead, status=201,
    )  # fmt: skip
    async def agent_create_worker(call: Call) -> AgentRead:
        agent = principal(call)
        body: AgentCreate = call.body
        if not agent.is_board_lead or agent.board_id is None:
            raise ApiError(403, "only a board lead creates agents (on its own board)")
        if body.is_board_lead or body.is_gateway_main:
            raise ApiError(403, "a lead creates workers; leads and main agents are an admin's")
        if body.board_id not in (None, agent.board_id):
            raise ApiError(403, f"a lead creates agents on its own board ({agent.board_id})")
        worker = body.model_copy(update={"board_id": agent.board_id, "gateway_id": None})
        created = await deps(call.request).provisioning.create_agent(
            agent_spec(worker, created_by_lead=agent.id)
        )
        log.info("agent.worker.created", lead_id=agent.id, agent_id=created.id)
        return agent_read(created)

    @api.route(
        "POST", base + "/boards/{board_id}/agents/{agent_id}/nudge",
        summary="Nudge an agent of your board with a message in its session (leads)",
        tags=(LEAD,), auth=Auth.AGENT, body=Nudge, response=Sent, status=202,
    )  # fmt: skip
    async def agent_nudge(call: Call) -> Sent:
        lead = principal(call)
        info = call.request.match_info
        message = call.body.message
        target = await deps(call.request).db.write_checked(
            lambda conn: nudge_target_in(conn, lead, info["board_id"], info["agent_id"]),
            lambda conn, _: nudge_in(
                conn, lead, info["board_id"], info["agent_id"], message, time.time()
            ),
            urgent=True,
        )
        return Sent(agent_id=target.id, agent_name=target.name)

    @api.route(
        "POST", base + "/boards/{board_id}/gateway/main/ask-user",
        summary="Ask the user a question through the gateway's main agent (leads)",
        tags=(LEAD,), auth=Auth.AGENT, body=AskUser, response=AskedUser, status=202,
    )  # fmt: skip
    async def agent_ask_user(call: Call) -> AskedUser:
        lead = principal(call)
        board_id = call.request.match_info["board_id"]
        content = _with_reply_info(call.body.content, call.body)
        main = await deps(call.request).db.write(
            lambda conn: ask_user_in(conn, lead, board_id, content, time.time()), urgent=True
        )
        return AskedUser(board_id=board_id, main_agent_id=main.id, main_agent_name=main.name)

    @api.route(
        "POST", base + "/gateway/boards/{board_id}/lead/message",
        summary="Hand a board's lead a question or work (main agent); creates a missing lead",
        tags=(MAIN,), auth=Auth.AGENT, body=LeadMessage, response=LeadMessaged, status=202,
    )  # fmt: skip
    async def agent_message_lead(call: Call) -> LeadMessaged:
        main = principal(call)
        board_id = call.request.match_info["board_id"]
        body: LeadMessage = call.body
        lead, created = await deps(call.request).provisioning.message_lead(
            main,
            board_id,
            content=f"[{body.kind}] " + _with_reply_info(body.content, body),
            kind=f"lead_{body.kind}",
        )
        return LeadMessaged(
            board_id=board_id,
            lead_agent_id=lead.id,
            lead_agent_name=lead.name,
            lead_created=created,
        )

    @api.route(
        "POST", base + "/gateway/leads/broadcast",
        summary="Send every board lead of your gateway (or of board_ids) a message (main agent)",
        tags=(MAIN,), auth=Auth.AGENT, body=Broadcast, response=Broadcasted, status=202,
    )  # fmt: skip
    async def agent_broadcast(call: Call) -> Broadcasted:
        main = principal(call)
        body: Broadcast = call.body
        content = f"[{body.kind}] " + _with_reply_info(body.content, body)
        results = await deps(call.request).db.write(
            lambda conn: broadcast_in(
                conn, main, body.board_ids, content=content, kind="broadcast", now=time.time()
            ),
            urgent=True,
        )
        sent = sum(1 for r in results if r["ok"])
        return Broadcasted(
            ok=sent == len(results),
            sent=sent,
            failed=len(results) - sent,
            results=[BroadcastResult(**r) for r in results],
        )


def agent_document(document: dict[str, Any]) -> dict[str, Any]:
    """The agent routes of the hub's OpenAPI document, with paths relative to the agent
    API's base (`<sidecar>/api/v1/agent`), as the agents' files name them."""
    paths = {
        path[len(AGENT_API_PREFIX) :] or "/": operations
        for path, operations in document["paths"].items()
        if path.startswith(AGENT_API_PREFIX + "/")
    }
    return {
        "openapi": document["openapi"],
        "info": {
            **document["info"],
            "title": "Mission Control agent API",
            "description": (
                "Call it through your local sidecar only: <base URL>/api/v1/agent plus a "
                "path below, with your X-Agent-Token. Use the operations tagged with your "
                "role (agent-main, agent-lead, agent-worker)."
            ),
        },
        "servers": [{"url": AGENT_API_PREFIX}],
        "paths": paths,
        "components": document["components"],
    }
