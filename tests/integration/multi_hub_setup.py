"""Several hubs in one process on one PostgreSQL database, for the multi-hub tests."""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from hub.app import Hub
from missioncontrol.private_files import load_or_create_secret
from protos import link_pb2 as pb
from sidecar.app import Sidecar
from sidecar.commands import Attempt
from tests.support import JumpClock, hub_config


@contextlib.asynccontextmanager
async def hubs(
    tmp_path: Path, url: str, count: int, clocks: list[JumpClock] | None = None
) -> AsyncIterator[list[Hub]]:
    """`count` hubs on one database, sharing the hub key (queued commands' secrets are
    sealed with it, so any hub can send what another queued)."""
    key = tmp_path / "hub-0" / "hub.key"
    load_or_create_secret(key)
    started: list[Hub] = []
    try:
        for index in range(count):
            data_dir = tmp_path / f"hub-{index}"
            if index:
                data_dir.mkdir(mode=0o700)
                shutil.copy2(key, data_dir / "hub.key")
            config = dataclasses.replace(hub_config(data_dir, database=url))
            hub = Hub(config, clock=clocks[index] if clocks else JumpClock())
            await hub.start()
            started.append(hub)
        yield started
    finally:
        for hub in reversed(started):
            await hub.stop()


async def add_gateway_and_board(hub: Hub, gateway_id: str = "gw-shared") -> str:
    """A gateway with a workspace root and a board on it, written straight into the store;
    returns the board's id."""
    board_id = str(uuid.uuid4())
    now = time.time()

    def op(conn: Any) -> None:
        conn.execute(
            "INSERT INTO gateways (id, name, workspace_root, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (gateway_id, gateway_id, "/srv/openclaw", now, now),
        )
        conn.execute(
            "INSERT INTO boards (id, gateway_id, name, slug, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (board_id, gateway_id, f"Ops {gateway_id}", f"ops-{gateway_id}", now, now),
        )

    await hub.db.write(op)
    return board_id


def record_applied(sidecar: Sidecar) -> list[int]:
    """The sequence of every command the sidecar applies (each attempt), in order."""
    applied: list[int] = []
    attempt = sidecar.applier.attempt

    async def recording(command: pb.Command) -> Attempt:
        applied.append(command.sequence)
        return await attempt(command)

    sidecar.applier.attempt = recording  # type: ignore[method-assign]
    return applied
