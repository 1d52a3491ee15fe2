"""The sidecar's named heartbeat takes the agent by either id: the gateway's (`mc-<uuid>`)
and the hub's (the bare id of the REST API), also after a sidecar restart; another
agent's id, by either name, is refused (403) naming both of the caller's ids."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from hub.app import Hub
from sidecar.app import Sidecar
from tests.support import RecordingGateway, api, fast_backoff, sidecar_config, wait_for

GATEWAY = "gw-named"


def _sidecar(hub: Hub, tmp_path: Path) -> Sidecar:
    assert hub.addresses is not None
    config = sidecar_config(
        tmp_path / "sc", hub.addresses.link, gateway_id=GATEWAY, workspace_root=tmp_path / "ws"
    )
    return Sidecar(config, gateway=RecordingGateway(), link_backoff=fast_backoff())


async def _linked(hub: Hub) -> bool:
    row = await hub.store.get_gateway(GATEWAY)
    return bool(row and row.workspace_root and hub.registry.get(GATEWAY))


async def _beat(sidecar: Sidecar, token: str, named: str) -> tuple[int, dict[str, Any]]:
    url = f"{sidecar.agent_api_url}/api/v1/agents/{named}/heartbeat"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, headers={"X-Agent-Token": token}, json={}) as response,
    ):
        return response.status, await response.json()


async def test_named_heartbeat_accepts_the_gateway_id_and_the_hub_id(
    hub: Hub, tmp_path: Path
) -> None:
    sidecar = _sidecar(hub, tmp_path)
    await sidecar.start()
    try:
        await wait_for(lambda: _linked(hub), what="sidecar linked with a workspace root")
        _, board = await api(hub, "POST", "/api/v1/boards", {"name": "B", "gateway_id": GATEWAY})
        agents = []
        for name in ("Ada", "Bea"):
            status, agent = await api(
                hub, "POST", "/api/v1/agents", {"name": name, "board_id": board["id"]}
            )
            assert status == 201, agent
            agents.append(agent)
        ada, bea = agents
        token_file = tmp_path / "ws" / f"workspace-{ada['gateway_agent_id']}" / ".mc-agent-token"
        await wait_for(token_file.exists, what="the token file written")
        token = token_file.read_text().strip()
        await wait_for(
            lambda: bool(sidecar.credentials.agents() >= {ada["gateway_agent_id"]}),
            what="verifiers applied",
        )

        for named in (ada["gateway_agent_id"], ada["id"]):
            status, body = await _beat(sidecar, token, named)
            assert status == 202, body
            assert body["agent_id"] == ada["gateway_agent_id"]
        for named in (bea["gateway_agent_id"], bea["id"]):
            status, body = await _beat(sidecar, token, named)
            assert status == 403, body
            assert ada["gateway_agent_id"] in body["detail"] and ada["id"] in body["detail"]
    finally:
        await sidecar.stop()

    # The hub's id was kept in the sidecar's state: a restarted sidecar knows it at once.
    again = _sidecar(hub, tmp_path)
    await again.start()
    try:
        status, body = await _beat(again, token, ada["id"])
        assert status == 202, body
    finally:
        await again.stop()
