"""A real restore under a connected sidecar: the sidecar applied commands the restored
database never had, and converges without anyone acting."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from pathlib import Path
from typing import Any

from hub.app import Hub
from hub.store.backup import restore_backup, take_backup
from missioncontrol.agent_api import TOKEN_FILE_NAME
from tests.support import api, connected_sidecar, hub_config, wait_for

GATEWAY = "gw-restore"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def create_agent(hub: Hub, board_id: str, name: str) -> dict[str, Any]:
    status, agent = await api(hub, "POST", "/api/v1/agents", {"name": name, "board_id": board_id})
    assert status == 201, agent
    return agent


async def hub_agent(hub: Hub, agent_id: str) -> dict[str, Any]:
    status, body = await api(hub, "GET", f"/api/v1/agents/{agent_id}")
    assert status == 200, body
    return body


async def test_a_sidecar_ahead_of_a_restored_hub_converges_to_the_hubs_view(
    tmp_path: Path,
) -> None:
    config = dataclasses.replace(hub_config(tmp_path / "hub", link_port=free_port()))
    hub = Hub(config)
    await hub.start()
    try:
        async with connected_sidecar(hub, tmp_path, GATEWAY) as (sidecar, gateway):
            status, board = await api(
                hub, "POST", "/api/v1/boards", {"name": "Ops", "gateway_id": GATEWAY}
            )
            assert status == 201, board
            kept = await create_agent(hub, board["id"], "Kept")
            kept_gw = kept["gateway_agent_id"]
            await wait_for(lambda: sidecar.state.agent(kept_gw), what="first agent applied")
            backup = await asyncio.to_thread(
                take_backup, config.database_path, tmp_path / "before.sqlite3"
            )

            # After the backup: a new agent, a new generation and token for the first one.
            late = await create_agent(hub, board["id"], "Late")
            await hub.provisioning.reapply(kept["id"])
            await hub.provisioning.rotate_token(kept["id"], grace_s=0)
            await wait_for(
                lambda: (
                    sidecar.state.agent(late["gateway_agent_id"])
                    and (a := sidecar.state.agent(kept_gw))
                    and a.generation == 2
                    and (hub.registry.get(GATEWAY) is not None)
                ),
                what="the later commands applied by the sidecar",
            )
            await wait_for(lambda: _all_acked(hub), what="every command acknowledged")
            ahead = sidecar.state.last_applied_sequence

            await hub.stop()
            restore_backup(backup.path, config.data_dir, config.database_path)
            hub = Hub(config)
            await hub.start()

            # The sidecar reconnects ahead of the hub and is brought back to its view.
            await wait_for(
                lambda: sidecar.state.agent(late["gateway_agent_id"]) is None,
                timeout_s=20,
                what="the agent the restored hub never had removed from the gateway",
            )
            assert ("remove_agent", late["gateway_agent_id"], False) in gateway.calls

            async def kept_converged() -> bool:
                row = await hub_agent(hub, kept["id"])
                local = sidecar.state.agent(kept_gw)
                return bool(
                    local
                    and local.generation > 2
                    and row["applied_generation"] == row["lifecycle_generation"] == local.generation
                )

            await wait_for(kept_converged, timeout_s=20, what="the changed agent applied again")
            # Its token file holds a token both ends accept again.
            token = (Path(sidecar.state.agent(kept_gw).workspace) / TOKEN_FILE_NAME).read_text()
            assert sidecar.credentials.verify(token.strip()) == kept_gw
            assert sidecar.state.last_applied_sequence < ahead + 10

            # New work after the restore reaches the sidecar (its numbers were reused).
            fresh = await create_agent(hub, board["id"], "Fresh")
            await wait_for(
                lambda: sidecar.state.agent(fresh["gateway_agent_id"]),
                timeout_s=20,
                what="an agent created after the restore applied",
            )
            row = await hub_agent(hub, fresh["id"])
            await wait_for(
                lambda: _applied(hub, fresh["id"]), timeout_s=20, what="its apply confirmed"
            )
            assert row["gateway_id"] == GATEWAY
    finally:
        await hub.stop()


async def _all_acked(hub: Hub) -> bool:
    pending = await hub.db.read(
        lambda conn: conn.execute(
            "SELECT COUNT(*) FROM commands WHERE gateway_id = ? AND acked_at IS NULL", (GATEWAY,)
        ).fetchone()[0]
    )
    return pending == 0


async def _applied(hub: Hub, agent_id: str) -> bool:
    row = await hub_agent(hub, agent_id)
    return bool(row["applied_generation"] >= 1)
