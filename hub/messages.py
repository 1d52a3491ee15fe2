"""Messages to an agent's main session: a lead's nudge, a question for the main agent,
a hand-off to a lead, an approval's outcome.

A message is a `WakeAgent` command with attempt 0 (as webhook deliveries are): it is
queued in the outbox in the caller's transaction, so it reaches the agent once its
sidecar is connected and is never lost, and it is not one of the lifecycle's own wakes
(the lifecycle does not count it, nor expect a check-in for it). The text is bounded
and says who it is from, so the agent can tell it from its user.
"""

from __future__ import annotations

from hub.provisioning.agents import AgentRow
from hub.store.database import Connection
from hub.store.errors import Refusal, StoreError
from hub.store.event_log import add_event
from hub.store.outbox import enqueue_command_in
from protos import link_pb2 as pb

MAX_MESSAGE_CHARS = 8_000


class MessageRefused(StoreError):
    """The message cannot be sent to this agent now; the text says why."""

    refusal = Refusal.CONFLICT


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
    if getattr(agent, "paused_at", None) is not None:
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
