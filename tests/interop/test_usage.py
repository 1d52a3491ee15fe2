"""An agent's run on the real gateway reaches GET /api/v1/usage as the tokens it used.

Hub -> sidecar (real gateway client) -> real OpenClaw gateway -> a run on the scripted
model, whose every completion reports 100 prompt and 20 completion tokens. The gateway
counts them into the session's transcript; the sidecar reads `sessions.usage` for the
session after the run ends and relays the day's figure; the hub shows it per agent and
per board. On both generations.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hub.demo.scripted_model import ScriptedModel
from sidecar.usage import UsagePolicy, utc_day
from tests.interop.conftest import RunningGateway, Stack, linked_stack, record_timing
from tests.support import api, wait_for

pytestmark = [pytest.mark.interop, pytest.mark.timeout(300)]

GATEWAY_ID = "gw-usage"
RUN_TIMEOUT_S = 90.0  # a first run after boot takes 5-7 s
TOKENS_PER_CALL = 120  # what the scripted model reports for each completion
# Read often; read a changed session again past the 30 s the gateway may cache an answer.
POLICY = UsagePolicy(interval_s=2.0, jitter=0.0, after_run_s=0.5, settle_s=35.0, first_pass_s=0.5)


@pytest.fixture
async def stack(
    gateway: RunningGateway, model: ScriptedModel, tmp_path: Path
) -> AsyncIterator[Stack]:
    async with linked_stack(gateway, model, tmp_path, GATEWAY_ID, usage_policy=POLICY) as linked:
        yield linked


async def test_a_runs_tokens_reach_the_usage_api_per_agent_and_board(
    stack: Stack, model: ScriptedModel
) -> None:
    hub = stack.hub
    status, board = await api(
        hub, "POST", "/api/v1/boards", {"name": "usage board", "gateway_id": GATEWAY_ID}
    )
    assert status == 201, board
    status, agent = await api(
        hub, "POST", "/api/v1/agents", {"name": "usage agent", "board_id": board["id"]}
    )
    assert status == 201, agent
    gw_agent = agent["gateway_agent_id"]
    # The agent's first wake runs on the scripted model.
    await wait_for(
        lambda: bool(model.for_agent(gw_agent)), timeout_s=RUN_TIMEOUT_S, what="a model call"
    )

    async def counted() -> dict[str, Any] | None:
        status, read = await api(hub, "GET", f"/api/v1/usage?agent_id={agent['id']}")
        assert status == 200, read
        calls = len(model.for_agent(gw_agent))
        total = read["total"]["total_tokens"]
        return read if calls and total == calls * TOKENS_PER_CALL else None

    read: dict[str, Any] | None = None

    async def seen() -> bool:
        nonlocal read
        read = await counted()
        return read is not None

    called = time.monotonic()
    await wait_for(seen, timeout_s=60, what="the run's tokens in /api/v1/usage")
    assert read is not None
    record_timing(
        f"{stack.gateway.version}: model called -> its tokens in /api/v1/usage",
        time.monotonic() - called,
    )
    [day] = read["agents"]
    assert day["day"] == utc_day(time.time()) and day["gateway_id"] == GATEWAY_ID
    assert (day["agent_id"], day["board_id"]) == (agent["id"], board["id"])
    assert day["tokens"]["input_tokens"] == 100 * len(model.for_agent(gw_agent))
    assert day["tokens"]["output_tokens"] == 20 * len(model.for_agent(gw_agent))
    status, by_board = await api(hub, "GET", f"/api/v1/usage?board_id={board['id']}")
    assert status == 200
    assert [b["tokens"]["total_tokens"] for b in by_board["boards"]] == [
        day["tokens"]["total_tokens"]
    ]
