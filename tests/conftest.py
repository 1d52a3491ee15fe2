from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from hub.app import Hub
from missioncontrol import log as logs
from tests.support import hub_config

logs.configure("warning", "json")


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[Hub]:
    """A real hub on loopback: SQLite file, gRPC link server, aiohttp API."""
    instance = Hub(hub_config(tmp_path / "hub"))
    await instance.start()
    yield instance
    await instance.stop()


@pytest.fixture
def free_port() -> Callable[[], int]:
    import socket

    def pick() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    return pick
