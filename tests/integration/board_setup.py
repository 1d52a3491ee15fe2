"""Gateways, boards and agents with known raw tokens, written straight into a test hub.

Tokens are minted by the hub's own keyring, so the hub's agent authentication checks
them exactly as it checks tokens it minted while provisioning. Agents provisioned
through a real sidecar (for heartbeats and deletion) are made in the tests themselves.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from hub.app import Hub


@dataclass(frozen=True)
class BoardAgent:
    id: str
    board_id: str | None
    gateway_id: str
    kind: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"X-Agent-Token": self.token}


async def add_gateway(hub: Hub, gateway_id: str | None = None) -> str:
    gateway_id = gateway_id or f"gw-{uuid.uuid4().hex[:8]}"
    now = time.time()
    await hub.db.write(
        lambda conn: conn.execute(
            "INSERT INTO gateways (id, name, created_at, updated_at) VALUES (?, ?, ?, ?)",
            (gateway_id, gateway_id, now, now),
        )
    )
    return gateway_id


async def add_board(hub: Hub, gateway_id: str, name: str = "Board", **rules: Any) -> str:
    """A board; `rules` are board columns such as only_lead_can_change_status=1."""
    board_id = str(uuid.uuid4())
    now = time.time()
    columns = {
        "id": board_id,
        "gateway_id": gateway_id,
        "name": name,
        "slug": name.lower(),
        "created_at": now,
        "updated_at": now,
        **rules,
    }
    names = ", ".join(columns)
    marks = ", ".join("?" for _ in columns)
    await hub.db.write(
        lambda conn: conn.execute(
            f"INSERT INTO boards ({names}) VALUES ({marks})", tuple(columns.values())
        )
    )
    return board_id


async def add_agent(
    hub: Hub,
    *,
    gateway_id: str,
    board_id: str | None,
    kind: str = "worker",
    not_after: float | None = None,
) -> BoardAgent:
    """An agent row and one token for it (`not_after`: a previous token in its grace)."""
    agent_id = str(uuid.uuid4())
    gateway_agent_id = {
        "worker": f"mc-{agent_id}",
        "lead": f"lead-{board_id}",
        "main": f"mc-gateway-{gateway_id}",
    }[kind]
    minted = hub.keyring.mint()
    now = time.time()

    def op(conn: Any) -> None:
        conn.execute(
            """INSERT INTO agents (id, gateway_id, board_id, kind, gateway_agent_id, name,
                                   created_at, updated_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
            (agent_id, gateway_id, board_id, kind, gateway_agent_id, kind, now, now),
        )
        conn.execute(
            "INSERT INTO agent_tokens (token_id, agent_id, digest, sidecar_sha256, not_after, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (minted.token_id, agent_id, minted.digest, minted.sidecar_sha256, not_after, now),
        )

    await hub.db.write(op)
    return BoardAgent(agent_id, board_id, gateway_id, kind, minted.raw)


async def call(
    hub: Hub,
    method: str,
    path: str,
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, Mapping[str, str]]:
    """One HTTP call to a test hub with the given headers: (status, JSON, headers)."""
    assert hub.addresses is not None
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
        session.request(
            method, f"http://{hub.addresses.http}{path}", json=body, headers=headers or {}
        ) as response,
    ):
        return response.status, await response.json(), response.headers.copy()


def token_file(tmp_path: Path, gateway_agent_id: str) -> Path:
    return tmp_path / "ws" / f"workspace-{gateway_agent_id}" / ".mc-agent-token"
