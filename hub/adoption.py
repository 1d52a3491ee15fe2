"""Adopting existing agents: entries of a gateway's openclaw.json the hub did not create.

The sidecar reports the entries it does not manage (Hello and GatewayState
`unmanaged`); the gateway's inventory lists them beside the managed agents, each saying
whether it can be adopted and, if not, why. Adopting one makes it a managed agent of a
board under its own id and workspace: its files are kept (every file is written only if
missing, Mission Control's `overwrite=false`), it gets its token file, its heartbeat and
a wake, and from then on the lifecycle tracks it like any other. Deleting an adopted
agent later removes it from the gateway but leaves its workspace on disk.
"""

from __future__ import annotations

import json
import posixpath
import re
import sqlite3
from typing import Any

from hub.provisioning.agents import AgentRow
from hub.store.gateways import GatewayRow

_PLAIN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9:._-]{0,199}")


def unmanaged_of(gateway: GatewayRow) -> list[dict[str, str]]:
    try:
        listed = json.loads(gateway.unmanaged_agents)
    except ValueError:
        return []
    return [item for item in listed if isinstance(item, dict) and item.get("agent_id")]


def why_not_adoptable(entry: dict[str, str], gateway: GatewayRow) -> str | None:
    """Why an unmanaged entry cannot be adopted as it is, with what to do; None if it can."""
    agent_id, workspace = entry["agent_id"], entry.get("workspace", "")
    if not _PLAIN_ID.fullmatch(agent_id):
        return f"its id {agent_id!r} is not a plain id (letters, digits, ':', '.', '_', '-')"
    if not workspace:
        return (
            "openclaw.json names no workspace for it; set agents.entries."
            f"{agent_id}.workspace to its directory first"
        )
    if not workspace.startswith("/"):
        return f"its workspace {workspace!r} is relative; make it absolute in openclaw.json"
    root = gateway.workspace_root
    if root is None:
        return "the gateway's workspace root is not known yet; start its sidecar"
    path = posixpath.normpath(workspace)
    if path == root or not path.startswith(root.rstrip("/") + "/"):
        return (
            f"its workspace {workspace} is outside the sidecar's workspace root {root}, where "
            "the sidecar writes nothing; move it under the root, or run the sidecar with a "
            "--workspace-root that contains it"
        )
    return None


def inventory_in(
    conn: sqlite3.Connection, gateway: GatewayRow, managed: list[AgentRow]
) -> dict[str, Any]:
    """The gateway's agents: the hub's, and the ones its openclaw.json has besides."""
    known = {a.gateway_agent_id for a in managed}
    unmanaged = []
    for entry in unmanaged_of(gateway):
        if entry["agent_id"] in known:
            continue  # adopted since the sidecar last reported
        why = why_not_adoptable(entry, gateway)
        unmanaged.append(
            {
                "gateway_agent_id": entry["agent_id"],
                "name": entry.get("name") or "",
                "workspace": entry.get("workspace") or None,
                "adoptable": why is None,
                "why_not": why,
            }
        )
    return {"gateway_id": gateway.id, "managed": managed, "unmanaged": unmanaged}


def unmanaged_entry(gateway: GatewayRow, gateway_agent_id: str) -> dict[str, str] | None:
    return next((e for e in unmanaged_of(gateway) if e["agent_id"] == gateway_agent_id), None)
