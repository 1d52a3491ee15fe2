"""Workspace I/O never runs on the sidecar's event loop: a stuck disk stalls one command,
not every agent's local API.

The disk here is a WorkspaceWriter whose operations can be held (as a FIFO in place
of MEMORY.md, a hung network mount or a full journal would hold them); while one is
held, the agent API must go on answering heartbeats and health checks.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import pytest

from hub.app import Hub
from protos import link_pb2 as pb
from sidecar.app import Sidecar
from sidecar.workspace import FileToWrite, WorkspaceWriter
from tests.integration.agent_setup import (
    GATEWAY,
    KEYRING,
    all_commands_acked,
    apply_with_credentials,
    new_agent_id,
    provision,
)
from tests.support import RecordingGateway, fast_backoff, sidecar_config, wait_for


class StuckDisk(WorkspaceWriter):
    """Holds every workspace operation while `stuck` is set, until `release` is; one
    called on the event loop's thread is recorded in `on_loop` instead (holding it
    there would hold this test too)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.stuck = threading.Event()
        self.entered = threading.Event()
        self.release = threading.Event()
        self.held: list[str] = []
        self.on_loop: list[str] = []

    def _hold(self, operation: str) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass  # a worker thread: as it should be
        else:
            self.on_loop.append(operation)
            return
        if self.stuck.is_set():
            self.held.append(operation)
            self.entered.set()
            self.release.wait(timeout=30)

    def write(self, workspace_path: str, files: Sequence[FileToWrite]) -> dict[str, str]:
        self._hold("write")
        return super().write(workspace_path, files)

    def hashes(self, workspace_path: str) -> dict[str, str]:
        self._hold("hashes")
        return super().hashes(workspace_path)

    def remove_token_file(self, workspace_path: str) -> bool:
        self._hold("remove")
        return super().remove_token_file(workspace_path)

    def remove_workspace(self, workspace_path: str) -> bool:
        self._hold("remove")
        return super().remove_workspace(workspace_path)


async def _hold_one(hub: Hub, sidecar: Sidecar, operation: str, victim: str) -> None:
    """Start something that does workspace I/O of the given kind."""
    root = sidecar.config.workspace_root
    if operation == "write":  # applying an agent writes its files
        minted = KEYRING.mint()
        command = apply_with_credentials(
            new_agent_id(), minted.token_id, minted.sidecar_sha256, root
        )
        await hub.store.enqueue_command(GATEWAY, command)
    elif operation == "hashes":  # every Hello hashes every managed workspace
        session = hub.registry.get(GATEWAY)
        assert session is not None
        session.close("test: reconnect, so the sidecar says Hello again")
    else:  # removing an agent removes its token file, then what the gateway left
        await hub.store.enqueue_command(
            GATEWAY,
            pb.Command(
                remove_agent=pb.RemoveAgent(agent_id=victim, generation=1, delete_files=True)
            ),
        )


@pytest.mark.parametrize("operation", ["write", "hashes", "remove"])
async def test_a_stuck_workspace_operation_does_not_stop_the_agent_api(
    hub: Hub, tmp_path: Path, operation: str
) -> None:
    assert hub.addresses is not None
    root = tmp_path / "workspaces"
    tokens = await provision(hub, root, 2)
    caller, victim = list(tokens)
    disk = StuckDisk(root)
    config = sidecar_config(
        tmp_path / "sc", hub.addresses.link, gateway_id=GATEWAY, workspace_root=root
    )
    sidecar = Sidecar(config, RecordingGateway(), link_backoff=fast_backoff(), writer=disk)
    await sidecar.start()
    try:
        await wait_for(lambda: all_commands_acked(hub), timeout_s=20, what="agents applied")
        disk.stuck.set()
        await _hold_one(hub, sidecar, operation, victim)
        assert await asyncio.to_thread(disk.entered.wait, 10), "the operation never started"
        headers = {"X-Agent-Token": tokens[caller]}
        timeout = aiohttp.ClientTimeout(total=5)  # a blocked loop would answer never
        async with aiohttp.ClientSession(timeout=timeout) as http:
            async with http.post(
                f"{sidecar.agent_api_url}/api/v1/agent/heartbeat", headers=headers
            ) as response:
                assert response.status == 202
            async with http.get(
                f"{sidecar.agent_api_url}/api/v1/agent/healthz", headers=headers
            ) as response:
                assert response.status == 200
        assert disk.held and set(disk.held) == {operation}
        assert not disk.on_loop
        disk.stuck.clear()
        disk.release.set()
        await wait_for(lambda: all_commands_acked(hub), timeout_s=20, what="the held one done")
        await wait_for(lambda: hub.registry.get(GATEWAY), what="linked")
        assert not disk.on_loop
    finally:
        disk.release.set()
        await sidecar.stop()
