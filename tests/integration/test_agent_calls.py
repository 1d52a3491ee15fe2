"""Agents reach the hub's agent API only through their sidecar: calls ride the link."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp

from hub.app import Hub
from protos import link_pb2 as pb
from sidecar.app import Sidecar
from sidecar.credentials import CredentialError
from tests.integration.board_setup import add_agent, add_board, add_gateway
from tests.support import api, connected_sidecar, wait_for


async def test_agent_lists_its_board_through_its_sidecar(hub: Hub, tmp_path: Path) -> None:
    async with connected_sidecar(hub, tmp_path, "gw-f") as (sidecar, _):
        _, board = await api(hub, "POST", "/api/v1/boards", {"name": "F", "gateway_id": "gw-f"})
        _, agent = await api(hub, "POST", "/api/v1/agents", {"name": "W", "board_id": board["id"]})
        token_path = tmp_path / "ws" / f"workspace-{agent['gateway_agent_id']}" / ".mc-agent-token"
        await wait_for(token_path.exists, what="token written")
        await wait_for(
            lambda: _verifies(sidecar, token_path.read_text().strip()),
            what="sidecar knows the token",
        )
        headers = {"X-Agent-Token": token_path.read_text().strip()}
        async with aiohttp.ClientSession() as session:
            url = f"{sidecar.agent_api_url}/api/v1/agent/boards"
            async with session.get(url, headers=headers) as response:
                body = await response.json()
                assert response.status == 200, body
                assert [b["id"] for b in body["items"]] == [board["id"]]
            async with session.get(
                f"{sidecar.agent_api_url}/api/v1/agent/boards/other", headers=headers
            ) as response:
                assert response.status == 403  # the hub's verdict, carried back
            async with session.get(url, headers={"X-Agent-Token": "x" * 56}) as response:
                assert response.status == 401  # refused locally, never forwarded


def _verifies(sidecar: Sidecar, raw: str) -> bool:
    """The file is written before the command's credentials are taken in: not yet, then."""
    try:
        return bool(sidecar.credentials.verify(raw))
    except CredentialError:
        return False


async def test_a_sidecar_cannot_forward_another_gateways_agent_token(hub: Hub) -> None:
    other_gateway = await add_gateway(hub)
    board = await add_board(hub, other_gateway)
    stranger = await add_agent(hub, gateway_id=other_gateway, board_id=board)
    direct = await hub.agent_calls.handle(
        other_gateway,
        pb.AgentCall(method="GET", path="/api/v1/agent/boards", agent_token=stranger.token),
    )
    assert direct.status == 200
    forged = await hub.agent_calls.handle(
        "gw-elsewhere",
        pb.AgentCall(method="GET", path="/api/v1/agent/boards", agent_token=stranger.token),
    )
    assert forged.status == 401
    outside = await hub.agent_calls.handle(
        other_gateway,
        pb.AgentCall(method="GET", path="/api/v1/gateways", agent_token=stranger.token),
    )
    assert outside.status == 404 and "agent API" in json.loads(outside.body)["detail"]
