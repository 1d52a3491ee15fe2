"""The dashboard shows what the Mission Control parity work added (its seams filled):
a board's pending approvals, the activity trail, and pause and resume forms."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from hub.app import Hub
from hub.approvals import request_approval_in
from hub.boards import BoardAgent
from tests.integration.test_dashboard import Client
from tests.integration.test_documented_calls import MC_AGENT, board_on, gateway_with_root
from tests.support import api


@pytest.fixture
async def logged_in(hub: Hub) -> AsyncIterator[Client]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        client = Client(hub, session)
        status, _, _ = await client.log_in()
        assert status == 200
        yield client


class Lead:
    def __init__(self, agent_id: str, board_id: str, gateway_id: str) -> None:
        self.id, self.board_id, self.gateway_id = agent_id, board_id, gateway_id
        self.is_board_lead, self.is_gateway_main = True, False


async def test_the_board_page_lists_pending_approvals_and_pauses_the_board(
    hub: Hub, logged_in: Client
) -> None:
    gateway = await gateway_with_root(hub)
    board = await board_on(hub, gateway["id"])
    _, lead = await api(
        hub, "POST", "/api/v1/agents", {**MC_AGENT, "board_id": board["id"], "is_board_lead": True}
    )
    asking: BoardAgent = Lead(lead["id"], board["id"], gateway["id"])
    await hub.db.write(
        lambda conn: request_approval_in(
            conn,
            board["id"],
            asking,
            action_type="deploy_to_production",
            payload={},
            confidence=70,
            rubric_scores={},
            task_ids=[],
            now=time.time(),
        )
    )
    status, page, _ = await logged_in.get(f"/ui/boards/{board['id']}")
    assert status == 200 and "deploy_to_production" in page and 'data-seam="approvals"' not in page
    assert "Pause board" in page
    status, page, _ = await logged_in.post(f"/ui/boards/{board['id']}/pause", {})
    assert status == 200 and "Board paused with its agents." in page and "Resume board" in page
    _, read = await api(hub, "GET", f"/api/v1/agents/{lead['id']}")
    assert read["paused"] and read["paused_by"] == "board"
    status, page, _ = await logged_in.post(f"/ui/boards/{board['id']}/resume", {})
    assert "Board resumed." in page


async def test_the_activity_page_is_the_trail(hub: Hub, logged_in: Client, tmp_path: Path) -> None:
    gateway = await gateway_with_root(hub, tmp_path / "ws")
    board = await board_on(hub, gateway["id"])
    await api(hub, "POST", f"/api/v1/boards/{board['id']}/tasks", {"title": "Rotate keys"})
    status, page, _ = await logged_in.get("/ui/activity")
    assert status == 200 and 'data-seam="activity"' not in page
    assert "task &#39;Rotate keys&#39; created" in page or "task 'Rotate keys' created" in page
