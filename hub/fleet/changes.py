"""What a rollout changes on each gateway, and how the previous values are put back.

A change is one of:
- `heartbeat`: one heartbeat_config on the selected agents;
- `templates`: IDENTITY.md and/or SOUL.md template overrides on the selected agents;
- `reapply`: render every selected agent's files again and apply them (after a template
  change on the hub), optionally overwriting files agents edit and resetting sessions;
- `agents`: a set of agents to create on every gateway (its main agent, or agents on the
  board of a given name there). One already there under its name and place is left as
  it is, so a rerun creates no second; a rollback removes only what the rollout created.

Per agent the rollout records the generation it applied and the values it replaced, so
a rollback re-applies exactly those. A `reapply` replaced nothing the hub keeps, so it
cannot be rolled back.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hub.provisioning.agents import AgentRow, RenderOptions, check_override, heartbeat_settings

KINDS = ("heartbeat", "templates", "reapply", "agents")
MAX_AGENTS = 20  # agents one rollout creates per gateway
AGENT_FIELDS = ("identity_profile", "heartbeat_config", "identity_template", "soul_template")
AGENT_SCOPES = ("main", "all")
TEMPLATE_FIELDS = {"identity_template": "IDENTITY.md", "soul_template": "SOUL.md"}


class ChangeError(ValueError):
    """The change is not one a rollout can apply; the message names the field and the fix."""


def check_change(change: Mapping[str, Any]) -> dict[str, Any]:
    """The change, validated (bad cadences and templates are refused before any wave)."""
    kind = change.get("kind")
    if kind == "heartbeat":
        if not isinstance(change.get("heartbeat_config"), Mapping):
            raise ChangeError("change.heartbeat_config: a heartbeat rollout needs one")
        try:
            heartbeat_settings(change["heartbeat_config"])
        except Exception as exc:  # AgentError naming the field
            raise ChangeError(f"change.{exc}") from None
        return {"kind": kind, "heartbeat_config": dict(change["heartbeat_config"])}
    if kind == "templates":
        given = {k: change.get(k) for k in TEMPLATE_FIELDS if k in change}
        if not given:
            raise ChangeError(
                "change: a templates rollout needs identity_template or soul_template "
                "(null resets an override to the default)"
            )
        for key, template in given.items():
            if template is not None:
                try:
                    check_override(TEMPLATE_FIELDS[key], template)
                except Exception as exc:
                    raise ChangeError(f"change.{exc}") from None
        return {"kind": kind, **given}
    if kind == "reapply":
        checked: dict[str, Any] = {
            "kind": kind,
            "overwrite": bool(change.get("overwrite", False)),
            "reset_sessions": bool(change.get("reset_sessions", False)),
        }
        if change.get("agent_ids") is not None:  # only these (the drifted ones, say)
            checked["agent_ids"] = sorted(str(a) for a in change["agent_ids"])
        return checked
    if kind == "agents":
        return {"kind": kind, "agents": _check_agents(change.get("agents"))}
    raise ChangeError(f"change.kind must be one of {', '.join(KINDS)}, not {kind!r}")


def _check_agents(agents: Any) -> list[dict[str, Any]]:
    if not isinstance(agents, list) or not 1 <= len(agents) <= MAX_AGENTS:
        raise ChangeError(
            f"change.agents: an agents rollout needs a list of 1 to {MAX_AGENTS} agents"
        )
    checked: list[dict[str, Any]] = []
    places: set[tuple[str | None, str]] = set()
    leads: set[str | None] = set()
    for index, agent in enumerate(agents):
        where = f"change.agents[{index}]"
        if not isinstance(agent, Mapping):
            raise ChangeError(f"{where}: an agent is an object with at least a name")
        name, board = agent.get("name"), agent.get("board")
        if not isinstance(name, str) or not name.strip():
            raise ChangeError(f"{where}.name: every agent needs a name")
        if board is not None and (not isinstance(board, str) or not board.strip()):
            raise ChangeError(f"{where}.board: a board's name, or null for the main agent")
        lead = bool(agent.get("is_board_lead", False))
        if lead and board is None:
            raise ChangeError(f"{where}.is_board_lead: a lead needs a board")
        place = (None if board is None else board.casefold(), name.casefold())
        if place in places:
            raise ChangeError(f"{where}.name: {name!r} is asked for twice in the same place")
        if board is None and any(b is None for b, _ in places):
            raise ChangeError(f"{where}: a gateway has one main agent; give the others a board")
        if lead and place[0] in leads:
            raise ChangeError(f"{where}.is_board_lead: a board has one lead")
        places.add(place)
        if lead:
            leads.add(place[0])
        try:
            heartbeat_settings(agent.get("heartbeat_config"))
            for key, file in TEMPLATE_FIELDS.items():
                if agent.get(key) is not None:
                    check_override(file, agent[key])
        except Exception as exc:  # AgentError naming the field
            raise ChangeError(f"{where}.{exc}") from None
        entry: dict[str, Any] = {"name": name, "board": board, "is_board_lead": lead}
        entry.update({k: agent[k] for k in AGENT_FIELDS if agent.get(k) is not None})
        checked.append(entry)
    return checked


@dataclass(frozen=True)
class Existing:
    """One agent a gateway has (as `plan_agents` needs it)."""

    id: str
    name: str
    board_id: str | None
    kind: str  # main, lead, worker


@dataclass(frozen=True)
class AgentsPlan:
    create: list[tuple[dict[str, Any], str | None]] = field(default_factory=list)  # board id
    present: list[str] = field(default_factory=list)  # agent ids already there
    conflicts: list[str] = field(default_factory=list)


def plan_agents(
    wanted: list[dict[str, Any]], existing: list[Existing], boards: Mapping[str, str]
) -> AgentsPlan:
    """Which of the `agents` change's agents a gateway gets: created, already there (same
    name, place and kind: left alone), or a conflict that fails the gateway. `boards` maps
    the gateway's board names (casefolded) to their ids."""
    plan = AgentsPlan()
    for agent in wanted:
        name, board = agent["name"], agent["board"]
        kind = "main" if board is None else "lead" if agent["is_board_lead"] else "worker"
        board_id = None if board is None else boards.get(board.casefold())
        if board is not None and board_id is None:
            plan.conflicts.append(f"{name}: no board named {board!r}; create it first")
            continue
        same_place = [e for e in existing if e.board_id == board_id]
        holder = next((e for e in same_place if e.name.casefold() == name.casefold()), None)
        if holder is not None and holder.kind == kind:
            plan.present.append(holder.id)
        elif holder is not None:
            plan.conflicts.append(
                f"{name}: the name is taken by {holder.kind} agent {holder.id}; rename one"
            )
        elif kind in ("main", "lead") and any(e.kind == kind for e in same_place):
            other = next(e for e in same_place if e.kind == kind)
            plan.conflicts.append(
                f"{name}: there is already a {kind} agent, {other.name!r} ({other.id}); "
                f"rename the rollout's {kind} agent to {other.name!r} or change that one"
            )
        else:
            plan.create.append((agent, board_id))
    return plan


def can_roll_back(change: Mapping[str, Any]) -> bool:
    return change.get("kind") != "reapply"


def selects(agent: AgentRow, scope: str, change: Mapping[str, Any]) -> bool:
    """Whether the rollout changes this agent (paused agents are left alone)."""
    if agent.paused_at is not None:
        return False
    if change.get("agent_ids") is not None and agent.id not in change["agent_ids"]:
        return False
    return scope == "all" or agent.kind == "main"


def field_changes(change: Mapping[str, Any]) -> dict[str, Any]:
    """The agent fields the change sets (as `Provisioning.update_agent` takes them)."""
    return {
        k: v
        for k, v in change.items()
        if k not in ("kind", "overwrite", "reset_sessions", "agent_ids")
    }


def render_options(change: Mapping[str, Any]) -> RenderOptions | None:
    if change.get("kind") != "reapply":
        return None
    return RenderOptions(
        overwrite=bool(change.get("overwrite")), reset_session=bool(change.get("reset_sessions"))
    )


def previous_values(agent: AgentRow, change: Mapping[str, Any]) -> dict[str, Any]:
    """The agent's values the change replaces: what a rollback puts back."""
    values: dict[str, Any] = {}
    for key in field_changes(change):
        current = getattr(agent, key)
        values[key] = json.loads(current) if key == "heartbeat_config" else current
    return values
