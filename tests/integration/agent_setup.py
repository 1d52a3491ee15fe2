"""Setting up agents with real tokens through the real hub -> sidecar command path.

Tokens are minted as the hub mints them; the sidecar learns the verifiers from an
ApplyAgent command queued on the hub, exactly as in production. The hub's own
agents rows are inserted by hand (the hub's own agent API is not under test), so
relayed heartbeats have rows to land on.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from hub.app import Hub
from hub.provisioning.agent_tokens import TokenKeyring
from protos import link_pb2 as pb
from sidecar.agent_api import AgentApiLimits
from sidecar.app import Sidecar
from tests.support import make_sidecar, wait_for

GATEWAY = "gw-agents"
KEYRING = TokenKeyring(b"test-hub-key-" + b"k" * 32)


def new_agent_id() -> str:
    return f"mc-{uuid.uuid4()}"


def apply_with_credentials(agent_id: str, token_id: str, sha256: bytes, root: Path) -> pb.Command:
    return pb.Command(
        apply_agent=pb.ApplyAgent(
            agent_id=agent_id,
            generation=1,
            display_name=agent_id,
            workspace_path=str(root / f"workspace-{agent_id}"),
            files=[pb.WorkspaceFile(name="AGENTS.md", content=b"# Agents\n")],
            credentials=[pb.AgentCredential(token_id=token_id, sha256=sha256)],
        )
    )


async def provision(hub: Hub, root: Path, count: int) -> dict[str, str]:
    """Queue `count` agents with fresh tokens on the hub; returns agent_id -> raw token."""
    if await hub.store.get_gateway(GATEWAY) is None:
        await hub.store.create_gateway(GATEWAY, "agent api gateway")
    tokens: dict[str, str] = {}
    for _ in range(count):
        agent_id = new_agent_id()
        minted = KEYRING.mint()
        command = apply_with_credentials(agent_id, minted.token_id, minted.sidecar_sha256, root)
        await hub.store.enqueue_command(GATEWAY, command)
        await insert_hub_agent(hub, agent_id)
        tokens[agent_id] = minted.raw
    return tokens


async def insert_hub_agent(hub: Hub, agent_id: str) -> None:
    now = time.time()
    await hub.db.write(
        lambda conn: conn.execute(
            """INSERT INTO agents (id, gateway_id, kind, gateway_agent_id, name,
                                   created_at, updated_at)
               VALUES (?, ?, 'worker', ?, ?, ?, ?)""",
            (str(uuid.uuid4()), GATEWAY, agent_id, agent_id, now, now),
        )
    )


async def last_seen(hub: Hub) -> dict[str, float | None]:
    """gateway_agent_id -> agents.last_seen_at, as the hub stored it."""
    rows = await hub.db.read(
        lambda conn: conn.execute(
            "SELECT gateway_agent_id, last_seen_at FROM agents WHERE gateway_id = ?", (GATEWAY,)
        ).fetchall()
    )
    return {row[0]: row[1] for row in rows}


async def all_commands_acked(hub: Hub) -> bool:
    last = await hub.db.read(
        lambda conn: conn.execute(
            "SELECT COUNT(*) FROM commands WHERE gateway_id = ? AND acked_at IS NULL", (GATEWAY,)
        ).fetchone()[0]
    )
    return last == 0


@dataclass
class AgentEnv:
    hub: Hub
    sidecar: Sidecar
    tokens: dict[str, str]  # agent_id -> raw token
    http: aiohttp.ClientSession
    agents: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        return self.sidecar.agent_api.url

    async def beat(
        self, agent_id: str, body: object = None, *, path: str | None = None
    ) -> tuple[int, dict[str, object], Mapping[str, str]]:
        url = self.base + (path or "/api/v1/agent/heartbeat")
        headers = {"X-Agent-Token": self.tokens[agent_id]}
        async with self.http.post(url, json=body, headers=headers) as response:
            return response.status, await response.json(), response.headers


@asynccontextmanager
async def agent_env(
    tmp_path: Path, hub: Hub, *, agents: int = 2, limits: AgentApiLimits | None = None
) -> AsyncIterator[AgentEnv]:
    """A real sidecar connected to `hub`, holding credentials for `agents` fresh agents."""
    tokens = await provision(hub, tmp_path / "workspaces", agents)
    sidecar = make_sidecar(tmp_path, hub, gateway_id=GATEWAY, limits=limits)
    await sidecar.start()
    try:
        await wait_for(lambda: all_commands_acked(hub), timeout_s=20, what="credentials applied")
        assert len(sidecar.credentials) == agents
        async with aiohttp.ClientSession() as http:
            yield AgentEnv(hub, sidecar, tokens, http, list(tokens))
    finally:
        await sidecar.stop()
