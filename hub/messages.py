"""Messages to an agent's main session: a lead's nudge, a question for the main agent,
a hand-off to a lead, an approval's outcome.

A message is a `WakeAgent` command with attempt 0 (as webhook deliveries are): it is
queued in the outbox in the caller's transaction, so it reaches the agent once its
sidecar is connected and is never lost, and it is not one of the lifecycle's own wakes
(the lifecycle does not count it, nor expect a check-in for it). The text is bounded
and says who it is from, so the agent can tell it from its user.
"""

from __future__ import annotations

from typing import Any

from hub.boards import BoardAgent, reachable_board_in
from hub.provisioning.agents import AgentRow, load_agent
from hub.store.database import Connection
from hub.store.errors import Refusal, StoreError
from hub.store.event_log import add_event
from hub.store.outbox import enqueue_command_in
from protos import link_pb2 as pb

MAX_MESSAGE_CHARS = 8_000


class MessageRefused(StoreError):
    """The message cannot be sent (to this agent, by this caller, now); the text says why."""

    def __init__(self, message: str, refusal: Refusal = Refusal.CONFLICT) -> None:
        super().__init__(message)
        self.refusal = refusal


def message_text(sender: str, body: str) -> str:
    """The chat text: who it is from, then the body, cut to the limit."""
    text = f"Mission Control, from {sender}:\n\n{body.strip()}"
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[: MAX_MESSAGE_CHARS - len(" …[cut]")] + " …[cut]"
    return text


def message_agent_in(
    conn: Connection, agent: AgentRow, *, sender: str, body: str, kind: str, now: float
) -> int:
    """Queue a message to the agent's main session; returns the command's sequence."""
    if agent.status == "deleting":
        raise MessageRefused(f"agent {agent.id} is being deleted; it takes no messages")
    if agent.paused_at is not None:
        raise MessageRefused(
            f"agent {agent.id} is paused, and a paused agent is not woken; resume it "
            f"(POST /api/v1/agents/{agent.id}/resume) or message another agent"
        )
    sequence = enqueue_command_in(
        conn,
        agent.gateway_id,
        pb.Command(
            wake_agent=pb.WakeAgent(
                agent_id=agent.gateway_agent_id,
                generation=agent.lifecycle_generation,
                message=message_text(sender, body),
                attempt=0,  # a message, not one of the lifecycle's wakes
            )
        ),
    )
    add_event(
        conn,
        "agent.message.queued",
        gateway_id=agent.gateway_id,
        agent_id=agent.id,
        at=now,
        message_kind=kind,
        sender=sender,
        sequence=sequence,
    )
    return sequence


# ------------------------------------------------------- who may message whom


def lead_of_in(conn: Connection, board_id: str) -> AgentRow | None:
    row = conn.execute(
        "SELECT id FROM agents WHERE board_id = ? AND kind = 'lead' AND status != 'deleting'",
        (board_id,),
    ).fetchone()
    return load_agent(conn, row[0]) if row else None


def main_agent_in(conn: Connection, gateway_id: str) -> AgentRow:
    row = conn.execute(
        "SELECT id FROM agents WHERE gateway_id = ? AND kind = 'main' AND status != 'deleting'",
        (gateway_id,),
    ).fetchone()
    agent = load_agent(conn, row[0]) if row else None
    if agent is None:
        raise MessageRefused(
            f"gateway {gateway_id} has no main agent to relay this; an admin creates one with "
            f'POST /api/v1/agents {{"name": ..., "gateway_id": "{gateway_id}", "board_id": null}}'
        )
    return agent


def nudge_target_in(conn: Connection, lead: BoardAgent, board_id: str, agent_id: str) -> AgentRow:
    """The agent a board lead may nudge: one of its own board's."""
    reachable_board_in(conn, lead, board_id)
    if not lead.is_board_lead:
        raise MessageRefused("only the board lead nudges agents", Refusal.FORBIDDEN)
    target = load_agent(conn, agent_id)
    if target is None or target.board_id != board_id:
        raise MessageRefused(f"no agent {agent_id} on board {board_id}", Refusal.NOT_FOUND)
    return target


def nudge_in(
    conn: Connection, lead: BoardAgent, board_id: str, agent_id: str, message: str, now: float
) -> AgentRow:
    """A board lead's nudge to an agent of its own board."""
    target = nudge_target_in(conn, lead, board_id, agent_id)
    message_agent_in(conn, target, sender="your board lead", body=message, kind="nudge", now=now)
    return target


def ask_user_in(
    conn: Connection, lead: BoardAgent, board_id: str, content: str, now: float
) -> AgentRow:
    """A lead's question for the user, relayed by its gateway's main agent."""
    board = reachable_board_in(conn, lead, board_id)
    if not lead.is_board_lead:
        raise MessageRefused(
            "only the board lead asks the user; comment on your task for your lead",
            Refusal.FORBIDDEN,
        )
    main = main_agent_in(conn, board["gateway_id"])
    message_agent_in(
        conn,
        main,
        sender=f"the lead of board {board['name']!r} ({board_id})",
        body="A question for the user; ask them, then pass the answer back to the lead:"
        f"\n\n{content}",
        kind="ask_user",
        now=now,
    )
    return main


def check_main_for_board_in(conn: Connection, main: BoardAgent, board_id: str) -> None:
    """The gateway's main agent messages the leads of its gateway's boards."""
    if not main.is_gateway_main:
        raise MessageRefused(
            "only the gateway's main agent messages board leads this way", Refusal.FORBIDDEN
        )
    reachable_board_in(conn, main, board_id)


def broadcast_in(
    conn: Connection,
    main: BoardAgent,
    board_ids: list[str] | None,
    *,
    content: str,
    kind: str,
    now: float,
) -> list[dict[str, Any]]:
    """The main agent's message to the leads of its gateway's boards (or of `board_ids`).
    A board without a lead, or with one that cannot take it now, is reported, not fatal."""
    if not main.is_gateway_main:
        raise MessageRefused(
            "only the gateway's main agent broadcasts to board leads", Refusal.FORBIDDEN
        )
    rows = conn.execute(
        "SELECT id FROM boards WHERE gateway_id = ? ORDER BY created_at, id", (main.gateway_id,)
    ).fetchall()
    boards = [r[0] for r in rows]
    if board_ids is not None:
        boards = [b for b in dict.fromkeys(board_ids)]
    results: list[dict[str, Any]] = []
    for board_id in boards:
        result: dict[str, Any] = {"board_id": board_id, "lead_agent_id": None, "ok": False}
        try:
            reachable_board_in(conn, main, board_id)
            lead = lead_of_in(conn, board_id)
            if lead is None:
                raise MessageRefused(
                    "the board has no lead; POST /gateway/boards/{board_id}/lead/message "
                    "creates one"
                )
            result["lead_agent_id"] = lead.id
            message_agent_in(
                conn, lead, sender="the gateway's main agent", body=content, kind=kind, now=now
            )
            result["ok"] = True
        except StoreError as exc:
            result["error"] = str(exc)
        results.append(result)
    return results
