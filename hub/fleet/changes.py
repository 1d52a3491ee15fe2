"""What a rollout changes on each gateway, and how the previous values are put back.

A change is one of:
- `heartbeat`: one heartbeat_config on the selected agents;
- `templates`: IDENTITY.md and/or SOUL.md template overrides on the selected agents;
- `reapply`: render every selected agent's files again and apply them (after a template
  change on the hub), optionally overwriting files agents edit and resetting sessions.

Per agent the rollout records the generation it applied and the values it replaced, so
a rollback re-applies exactly those. A `reapply` replaced nothing the hub keeps, so it
cannot be rolled back.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from hub.provisioning.agents import AgentRow, RenderOptions, check_override, heartbeat_settings

KINDS = ("heartbeat", "templates", "reapply")
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
    raise ChangeError(f"change.kind must be one of {', '.join(KINDS)}, not {kind!r}")


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
