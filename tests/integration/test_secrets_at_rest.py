"""What the hub keeps on disk reveals no agent token: a copy of its database is not a key."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from hub.app import Hub
from tests.support import api, connected_sidecar, wait_for


def _token_file(sidecar_root: Path) -> str:
    found = list(sidecar_root.glob("workspace-*/.mc-agent-token"))
    return found[0].read_text().strip() if found else ""


async def test_no_raw_token_is_kept_in_the_outbox_yet_the_sidecar_receives_it(
    hub: Hub, tmp_path: Path
) -> None:
    async with connected_sidecar(hub, tmp_path, "gw-secrets") as (_sidecar, _gateway):
        status, board = await api(
            hub, "POST", "/api/v1/boards", {"name": "Ops", "gateway_id": "gw-secrets"}
        )
        assert status == 201, board
        status, agent = await api(
            hub, "POST", "/api/v1/agents", {"name": "Worker", "board_id": board["id"]}
        )
        assert status == 201, agent
        first = await wait_for(lambda: _token_file(tmp_path / "ws"), what="token file written")
        status, _ = await api(hub, "POST", f"/api/v1/agents/{agent['id']}/token/rotate", {})
        assert status == 202
        rotated = await wait_for(
            lambda: _rotated(tmp_path / "ws", first), what="rotated token file written"
        )
    stored = await hub.db.read(
        lambda conn: b"".join(bytes(row[0]) for row in conn.execute("SELECT payload FROM commands"))
    )
    dumped = b""
    if hub.config.on_sqlite:  # every row of every table, as text
        conn = sqlite3.connect(hub.config.database_path)
        try:
            dumped = "\n".join(conn.iterdump()).encode()
        finally:
            conn.close()
    for token in (first, rotated):
        secret = token.split(".", 1)[1].encode()
        assert secret not in stored and secret not in dumped


def _rotated(root: Path, first: str) -> str:
    token = _token_file(root)
    return token if token and token != first else ""
