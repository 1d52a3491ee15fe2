"""An agent is never refused the token its file holds: not while a command writes the
file, not after the command is recorded, on every path that writes a token file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hub.app import Hub
from missioncontrol.agent_api import TOKEN_FILE_NAME
from protos import link_pb2 as pb
from sidecar.credentials import CredentialError
from sidecar.workspace import FileToWrite
from tests.support import api, connected_sidecar, hub_config, wait_for

GATEWAY = "gw-handoff"


async def _all_acked(hub: Hub) -> bool:
    pending = await hub.db.read(
        lambda conn: conn.execute(
            "SELECT COUNT(*) FROM commands WHERE gateway_id = ? AND acked_at IS NULL", (GATEWAY,)
        ).fetchone()[0]
    )
    return pending == 0


async def test_every_token_file_write_is_accepted_from_the_moment_it_lands(
    tmp_path: Path,
) -> None:
    hub = Hub(hub_config(tmp_path / "hub"))
    await hub.start()
    try:
        async with connected_sidecar(hub, tmp_path, GATEWAY) as (sidecar, _gateway):
            refused: list[str] = []
            written: list[str] = []

            def check(token: str, when: str) -> None:
                try:
                    sidecar.credentials.verify(token)
                except CredentialError as error:
                    refused.append(f"{when}: {error}")

            # The moment a token file lands (an agent may read it and call at once).
            write = sidecar.writer.write

            def probed_write(workspace_path: str, files: Sequence[FileToWrite]) -> Any:
                hashes = write(workspace_path, files)
                for file in files:
                    if file.name == TOKEN_FILE_NAME:
                        written.append(workspace_path)
                        check(file.content.decode().strip(), f"written in {workspace_path}")
                return hashes

            # The moment a recorded command replaces the agent's accepted set.
            reload_agent = sidecar.credentials.reload_agent

            def probed_reload(agent_id: str) -> int:
                count = reload_agent(agent_id)
                local = sidecar.state.agent(agent_id)
                path = Path(local.workspace) / TOKEN_FILE_NAME if local else None
                if path is not None and path.is_file():
                    check(path.read_text().strip(), f"{agent_id} recorded")
                return count

            sidecar.writer.write = probed_write  # type: ignore[method-assign]
            sidecar.credentials.reload_agent = probed_reload  # type: ignore[method-assign]

            status, board = await api(
                hub, "POST", "/api/v1/boards", {"name": "Ops", "gateway_id": GATEWAY}
            )
            assert status == 201, board
            status, agent = await api(
                hub, "POST", "/api/v1/agents", {"name": "Ada", "board_id": board["id"]}
            )
            assert status == 201, agent
            gateway_agent_id = agent["gateway_agent_id"]

            async def settled(writes: int) -> None:
                await wait_for(lambda: len(written) >= writes, what=f"token write {writes}")
                await wait_for(lambda: _all_acked(hub), what="every command acknowledged")

            await settled(1)  # provisioned: ApplyAgent with the token file
            await hub.provisioning.rotate_token(agent["id"], grace_s=0)
            await settled(2)  # SetAgentCredentials with the token file
            local = sidecar.state.agent(gateway_agent_id)
            assert local is not None
            # A sidecar ahead of its hub: the agent applied again (its token replaced) ...
            ahead = pb.ManagedAgent(
                agent_id=gateway_agent_id, applied_generation=local.generation + 1
            )
            await hub.convergence.sidecar_ahead(GATEWAY, pb.Hello(inventory=[ahead]))
            await settled(3)
            # ... and an agent it lost provisioned again.
            await hub.convergence.sidecar_ahead(GATEWAY, pb.Hello())
            await settled(4)

            assert refused == []
            assert len(written) == 4, written
    finally:
        await hub.stop()
